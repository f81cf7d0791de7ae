"""Bytes of the ECQx bitstream's coders on real kernel codes: zeroth-order entropy, version 1, version 2, NNCodec.

    python tools/bench_coder.py FILE.ecqx [FILE.ecqx ...]

Each file (version 1 or 2, e.g. a copy of demo_output/kernels.ecqx from `make demo`) is decoded and its codes
written again as version 2. Per kernel: the zeroth-order entropy N * H(codes) / 8, the payload bytes of the file as
given (v1 for a version-1 file) and of version 2, and their ratio to the entropy; per file the same for whole files,
every header byte included. An NNCodec column (DeepCABAC on the same integer codes) is not measured: nncodec (never a
dependency of tf_ecqx) could not be installed here to wire it in, and the tool prints why the column is missing.
Decoding time of each version-2 file is printed too. Everything is measured in this run.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import numpy as np

from tf_ecqx.export.container import DEFAULT_MAX_WEIGHTS, decode, encode_layers, read_headers


def entropy_bytes(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    return float((counts * np.log2(counts.sum() / counts)).sum() / 8)


def nncodec_reason() -> str | None:
    """Why NNCodec cannot be measured here, or None."""
    try:
        importlib.import_module("nncodec")
    except ImportError as error:
        return f"nncodec is not importable ({error}); install it in a separate venv to add the column"
    return "nncodec imports, but its integer-code entry point is not wired into this tool yet"


def row(name: str, entropy: float, given: int, version2: int) -> str:
    return f"{name:<28} {entropy:>10.0f} {given:>10} {version2:>10} {given / entropy:>8.3f} {version2 / entropy:>8.3f}"


def bench(path: Path) -> tuple[float, int, int]:
    data = path.read_bytes()
    layers = decode(data, max_weights=DEFAULT_MAX_WEIGHTS)
    written = encode_layers(layers)
    start = time.perf_counter()
    decoded = decode(written)
    seconds = time.perf_counter() - start
    for a, b in zip(layers, decoded, strict=True):
        assert np.array_equal(a.codes, b.codes), f"{a.name}: version 2 does not round-trip"
    given, version2 = read_headers(data, DEFAULT_MAX_WEIGHTS), read_headers(written, DEFAULT_MAX_WEIGHTS)
    weights = sum(layer.codes.size for layer in layers)
    print(f"\n{path} (version {data[4]}): {len(layers)} kernels, {weights} weights")
    print(f"{'kernel':<28} {'entropy B':>10} {'v' + str(data[4]) + ' B':>10} {'v2 B':>10} {'given/H':>8} {'v2/H':>8}")
    for layer, a, b in zip(layers, given, version2, strict=True):
        print(row(layer.name, entropy_bytes(layer.codes), len(a.payload), len(b.payload)))
    total = sum(entropy_bytes(layer.codes) for layer in layers)
    print(row("whole file (headers incl.)", total, len(data), len(written)))
    print(f"version-2 decode: {seconds * 1000:.1f} ms")
    return total, len(data), len(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    if reason := nncodec_reason():
        print(f"NNCodec column skipped: {reason}.")
    totals = np.array([bench(path) for path in args.files])
    if len(args.files) > 1:
        entropy, given, version2 = totals.sum(0)
        print(f"\nall files: entropy {entropy:.0f} B, given {given:.0f} B, v2 {version2:.0f} B", end=" ")
        print(f"= {version2 / entropy:.3f}x the entropy")


if __name__ == "__main__":
    main()
