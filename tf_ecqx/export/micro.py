"""The micro (TFLM) encodings of the int8 filters, and the verification of the encoded model in the TFLM interpreter.

Today: TFLM look-up-table compression, index width = the kernel's bit width; each encoder maps the dense int8
flatbuffer and its kernel checks to an encoded flatbuffer that the stock TFLM interpreter decodes.
"""

from __future__ import annotations

import numpy as np
from tflite_micro import compression

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.runtimes import run_litert, run_tflm
from tf_ecqx.export.verification import ExportError, KernelCheck, channel_axis
from tf_ecqx.quantization.kernels import quantized_kernels


def lut_compress(data: bytes, qmodel: keras.Model, checks: list[KernelCheck]) -> bytes:
    """TFLM look-up-table compression of each quantized filter, index width = its bit width."""
    model = flatbuffer.load(data)
    by_name = {t.name: t for t in flatbuffer.weight_tensors(model)}
    specs = compression.SpecBuilder()
    for kernel, check in zip(quantized_kernels(qmodel), checks):
        tensor = by_name[check.tensor]
        # A per-tensor table for a per-channel quantized filter decodes garbage in TFLM (only channel 0 is right).
        per_tensor = len(tensor.scales) == 1
        mode = compression.spec.PerTensor() if per_tensor else compression.spec.PerChannel(axis=channel_axis(kernel))
        specs.add_tensor(0, tensor.index).with_lut(index_bitwidth=kernel.settings.bits, mode=mode)
    return bytes(compression.compress(data, specs.build()))


def micro_model(
    dense: bytes, qmodel: keras.Model, checks: list[KernelCheck], samples: np.ndarray, notes: list[str]
) -> tuple[bytes, np.ndarray, int | None]:
    """The LUT-compressed model, its dequantized TFLM outputs on samples and its arena bytes; checked to give the
    dense model's TFLM outputs bit for bit (notes say how TFLM and LiteRT's builtin kernels compare)."""
    data = lut_compress(dense, qmodel, checks)
    compressed_raw, outputs, arena = run_tflm(data, samples)
    dense_raw, _, _ = run_tflm(dense, samples)
    if not np.array_equal(compressed_raw, dense_raw):
        raise ExportError("The LUT-compressed model's TFLM outputs differ from the uncompressed model's.")
    litert_raw, _ = run_litert(dense, samples, builtin_only=True)
    lsb = np.abs(litert_raw.astype(np.int32) - dense_raw).max()
    notes.append(
        f"TFLM: LUT-compressed outputs equal the uncompressed model's on {len(samples)} samples; "
        f"vs LiteRT builtin kernels {np.mean(litert_raw == dense_raw):.1%} of outputs equal, "
        f"max difference {lsb} LSB (the runtimes round requantization differently)"
    )
    return data, outputs, arena
