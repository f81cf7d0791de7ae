"""Size table of a trained QAT model: every artifact it can be shipped as, in bytes, with ratios to float32."""

from __future__ import annotations

import gzip
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.bitstream import encode
from tf_ecqx.export.conversion import MICRO_BATCH_SIZE, dense_int8
from tf_ecqx.export.inputs import calibration_and_verification, sample_shape
from tf_ecqx.export.micro import single_encoding_sizes
from tf_ecqx.export.tflite import to_tflite
from tf_ecqx.export.verification import check_kernels
from tf_ecqx.files import atomic_write
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.quantization.strip import strip
from tf_ecqx.report import layer_stats

MICRO_ROW = "micro TFLite (TFLM, smallest encoding per filter)"


@dataclass(frozen=True)
class SizeRow:
    artifact: str
    bytes: int
    ratio: float  # float32 TFLite bytes / these bytes


@dataclass(frozen=True)
class MicroRow:
    """Flash (file) and RAM (TFLM arena) bytes of a micro file."""

    encoding: str
    flash: int
    arena: int


def _gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def unquantized_parameter_bytes(qmodel: keras.Model, plain: keras.Model) -> int:
    """float32 bytes of the parameters ECQx leaves in float (biases, BatchNorm), which the bitstream omits."""
    total = sum(int(np.prod(w.shape)) for w in plain.weights)
    return 4 * (total - sum(int(np.prod(k.kernel.shape)) for k in quantized_kernels(qmodel)))


def size_table(
    qmodel: keras.Model, representative_data: np.ndarray | tf.data.Dataset, directory: str | os.PathLike | None = None
) -> list[SizeRow]:
    """Bytes of: float32 / int8 / sparse int8 TFLite (and gzip of each), the micro flatbuffer (to_tflite's smallest
    TFLM encoding per filter), the bitstream, and the zeroth-order entropy of the kernel codes. The TFLite files are
    written to `directory` (a temporary one if None).
    """
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(directory or scratch)
        out.mkdir(parents=True, exist_ok=True)
        plain = strip(qmodel)
        sizes: dict[str, bytes] = {"float32 TFLite": tf.lite.TFLiteConverter.from_keras_model(plain).convert()}
        atomic_write(out / "float32.tflite", sizes["float32 TFLite"])
        for name, target, sparse in (("int8", "mobile", False), ("sparse int8", "mobile", True), ("micro", "micro", 0)):
            path = out / f"{name.replace(' ', '_')}.tflite"
            to_tflite(qmodel, path, representative_data, target=target, sparse=bool(sparse))
            sizes[f"{name} TFLite" if target == "mobile" else MICRO_ROW] = path.read_bytes()
        bitstream = encode(qmodel)
        atomic_write(out / "kernels.ecqx", bitstream)
    rows: dict[str, int] = {}
    for name, data in sizes.items():
        rows[name] = len(data)
        if "micro" not in name:
            rows[f"{name}, gzip -9"] = _gzip_size(data)
    rows["bitstream (quantized kernels)"] = len(bitstream)
    rows["bitstream + float32 biases/BatchNorm"] = len(bitstream) + unquantized_parameter_bytes(qmodel, plain)
    rows["zeroth-order entropy of the kernel codes"] = int(np.ceil(sum(s.entropy_bytes for s in layer_stats(qmodel))))
    reference = rows["float32 TFLite"]
    return [SizeRow(name, size, reference / size) for name, size in rows.items()]


def micro_sizes(qmodel: keras.Model, representative_data: np.ndarray | tf.data.Dataset) -> list[MicroRow]:
    """Flash and arena bytes of the micro file with every filter dense, with each TFLM encoding alone (every filter in
    it where TFLM runs it and it is smaller), with to_tflite's smallest encoding per filter, and with that choice
    under ram_budget = the dense file's arena. Files built and their arenas measured in the TFLM interpreter."""
    calibration, samples = calibration_and_verification(representative_data, None, sample_shape(qmodel))
    dense = dense_int8(qmodel, calibration, batch_size=MICRO_BATCH_SIZE)
    alone = single_encoding_sizes(dense, check_kernels(qmodel, flatbuffer.load(dense)), samples)
    rows = [MicroRow({"none": "dense int8"}.get(name, f"{name.upper()} alone"), *alone[name]) for name in alone]
    with tempfile.TemporaryDirectory() as scratch:
        for name, budget in (("smallest per filter", None), ("smallest per filter, dense arena", alone["none"][1])):
            result = to_tflite(qmodel, Path(scratch) / "m.tflite", samples, target="micro", ram_budget=budget)
            rows.append(MicroRow(name, result.bytes, result.arena_bytes))
    return rows


def format_micro_table(rows: list[MicroRow]) -> str:
    width = max(len(r.encoding) for r in rows)
    lines = [f"{'micro file':<{width}}  {'flash B':>9}  {'arena B':>9}", "-" * (width + 22)]
    lines += [f"{r.encoding:<{width}}  {r.flash:>9}  {r.arena:>9}" for r in rows]
    return "\n".join(lines)


def format_size_table(rows: list[SizeRow]) -> str:
    width = max(len(r.artifact) for r in rows)
    lines = [f"{'artifact':<{width}}  {'bytes':>9}  {'vs float32':>10}", "-" * (width + 23)]
    lines += [f"{r.artifact:<{width}}  {r.bytes:>9}  {r.ratio:>9.1f}x" for r in rows]
    return "\n".join(lines)
