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
from tf_ecqx.export.bitstream import encode
from tf_ecqx.export.tflite import to_tflite
from tf_ecqx.files import atomic_write
from tf_ecqx.quantization.kernels import quantized_kernels
from tf_ecqx.quantization.strip import strip
from tf_ecqx.report import layer_stats


@dataclass(frozen=True)
class SizeRow:
    artifact: str
    bytes: int
    ratio: float  # float32 TFLite bytes / these bytes


def _gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


def _unquantized_parameter_bytes(qmodel: keras.Model, plain: keras.Model) -> int:
    """float32 bytes of the parameters ECQx leaves in float (biases, BatchNorm), which the bitstream omits."""
    total = sum(int(np.prod(w.shape)) for w in plain.weights)
    return 4 * (total - sum(int(np.prod(k.kernel.shape)) for k in quantized_kernels(qmodel)))


def size_table(
    qmodel: keras.Model, representative_data: np.ndarray | tf.data.Dataset, directory: str | os.PathLike | None = None
) -> list[SizeRow]:
    """Bytes of: float32 / int8 / sparse int8 TFLite (and gzip of each), the micro LUT flatbuffer, the bitstream,
    and the entropy bound of the kernel codes. The TFLite files are written to `directory` (a temporary one if None).
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
            sizes[f"{name} TFLite" if target == "mobile" else "micro TFLite (int8 + LUT)"] = path.read_bytes()
        bitstream = encode(qmodel)
        atomic_write(out / "kernels.ecqx", bitstream)
    rows: dict[str, int] = {}
    for name, data in sizes.items():
        rows[name] = len(data)
        if "micro" not in name:
            rows[f"{name}, gzip -9"] = _gzip_size(data)
    rows["bitstream (quantized kernels)"] = len(bitstream)
    rows["bitstream + float32 biases/BatchNorm"] = len(bitstream) + _unquantized_parameter_bytes(qmodel, plain)
    rows["entropy bound of the kernel codes"] = int(np.ceil(sum(s.entropy_bytes for s in layer_stats(qmodel))))
    reference = rows["float32 TFLite"]
    return [SizeRow(name, size, reference / size) for name, size in rows.items()]


def format_size_table(rows: list[SizeRow]) -> str:
    width = max(len(r.artifact) for r in rows)
    lines = [f"{'artifact':<{width}}  {'bytes':>9}  {'vs float32':>10}", "-" * (width + 23)]
    lines += [f"{r.artifact:<{width}}  {r.bytes:>9}  {r.ratio:>9.1f}x" for r in rows]
    return "\n".join(lines)
