"""Bytes of the ECQx bitstream's coders on real kernel codes: zeroth-order entropy, version 1, version 2, NNCodec.

    python tools/bench_coder.py FILE.ecqx [FILE.ecqx ...]
    pip install --no-deps nncodec==2.1.3    # optional, for the NNCodec line (builds its C++ DeepCABAC extension)

Each file (version 1 or 2, e.g. a copy of demo_output/kernels.ecqx from `make demo`) is decoded and its codes
written again as version 2. Per kernel: the zeroth-order entropy N * H(codes) / 8, the payload bytes of the file as
given (v1 for a version-1 file) and of version 2, and their ratio to the entropy; per file the same for whole files,
every header byte included. NNCodec (the paper's coder, never a dependency of tf_ecqx): its whole NNR bitstream of
the same integer codes (output axis first, as in PyTorch), the smallest over its row skipping and parameter-optimised
context initialisation, each decoded and checked bit-exact. Decoding time of each version-2 file is printed too.
Everything is measured in this run.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from tf_ecqx.export.container import DEFAULT_MAX_WEIGHTS, decode, encode_layers, read_headers


def entropy_bytes(codes: np.ndarray) -> float:
    _, counts = np.unique(codes, return_counts=True)
    return float((counts * np.log2(counts.sum() / counts)).sum() / 8)


def nncodec_compression() -> Any:
    """NNCodec's compression module, or the reason it cannot be imported (a str).

    nncodec.nnc imports its PyTorch and TensorFlow model adapters at import time; compressing a dict of integer
    arrays never calls them, so stand-ins that recognise no model take their place and PyTorch (gigabytes of CUDA
    wheels from PyPI) is not needed."""
    adapters = types.ModuleType("nncodec.framework")
    for name in ("tensorflow_model", "pytorch_model", "use_case_init"):
        stand_in = types.ModuleType(name)
        stand_in.is_tef_model = stand_in.is_pyt_model = lambda model: False
        stand_in.use_cases = {}
        setattr(adapters, name, stand_in)
    sys.modules.setdefault("nncodec.framework", adapters)
    try:
        return importlib.import_module("nncodec.nnc")
    except ImportError as error:
        return f"nncodec is not importable ({error}); `pip install --no-deps nncodec==2.1.3` adds it"


def nncodec_bytes(nnc: Any, layers: list[Any]) -> tuple[int, str]:
    """The smallest NNCodec bitstream of the layers' codes and the options that gave it, each option decoded and
    checked against the codes."""
    tensors = {layer.name: np.ascontiguousarray(np.moveaxis(layer.codes.astype(np.int32), -1, 0)) for layer in layers}
    sizes = {}
    for row_skipping, param_opt in itertools.product((False, True), repeat=2):
        with tempfile.TemporaryDirectory() as folder:
            stream = nnc.compress(
                tensors,
                bitstream_path=f"{folder}/codes.nnc",
                row_skipping=row_skipping,
                param_opt=param_opt,
                return_bitstream=True,
            )
        decoded = nnc.decompress(stream)
        for name, codes in tensors.items():
            if not np.array_equal(np.asarray(decoded[name]), codes):
                raise RuntimeError(f"NNCodec ({row_skipping=}, {param_opt=}) does not decode {name} bit-exact")
        sizes[f"row_skipping={row_skipping}, param_opt={param_opt}"] = len(stream)
    best = min(sizes, key=sizes.get)
    return sizes[best], best


def row(name: str, entropy: float, given: int, version2: int) -> str:
    return f"{name:<28} {entropy:>10.0f} {given:>10} {version2:>10} {given / entropy:>8.3f} {version2 / entropy:>8.3f}"


def bench(path: Path, nnc: Any) -> tuple[float, int, int]:
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
    if not isinstance(nnc, str):
        size, options = nncodec_bytes(nnc, layers)
        print(f"NNCodec whole bitstream: {size} B = {size / total:.3f}x the entropy ({options});", end=" ")
        print(f"v2 / NNCodec = {len(written) / size:.3f}")
    return total, len(data), len(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    nnc = nncodec_compression()
    if isinstance(nnc, str):
        print(f"NNCodec line skipped: {nnc}.")
    totals = np.array([bench(path, nnc) for path in args.files])
    if len(args.files) > 1:
        entropy, given, version2 = totals.sum(0)
        print(f"\nall files: entropy {entropy:.0f} B, given {given:.0f} B, v2 {version2:.0f} B", end=" ")
        print(f"= {version2 / entropy:.3f}x the entropy")


if __name__ == "__main__":
    main()
