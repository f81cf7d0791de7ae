"""Verification of a converted model: every ECQx kernel found in the flatbuffer and holding its codes, and the
agreement of the file's outputs with the Keras QAT model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.quantization.kernels import QuantizedKernel, quantized_kernels


class ExportError(RuntimeError):
    """The exported file would not hold what the QAT model trained, or would not run; nothing was written."""


@dataclass(frozen=True)
class KernelCheck:
    """How a quantized kernel arrived in the file: 'exact' codes, or 'folded' (the converter folded a BatchNorm in)."""

    layer: str
    tensor: str
    kind: Literal["exact", "folded"]
    max_values_per_channel: int


def tflite_layout(codes: np.ndarray, layer: keras.layers.Layer) -> np.ndarray:
    """Keras kernel layout -> TFLite filter layout (output channels first; depthwise channels last)."""
    kind = type(layer)
    if kind is keras.layers.DepthwiseConv2D:
        return codes.reshape(1, *codes.shape[:2], -1)
    if kind is keras.layers.Conv1D:
        return np.transpose(codes, (2, 0, 1))[:, None]
    if kind is keras.layers.Conv2D:
        return np.transpose(codes, (3, 0, 1, 2))
    if kind is keras.layers.Conv2DTranspose:  # Keras (h, w, out, in), TFLite (out, h, w, in)
        return np.transpose(codes, (2, 0, 1, 3))
    if kind is keras.layers.Dense:
        return codes.T
    raise ExportError(f"Layer {layer.name!r} ({kind.__name__}): tf_ecqx does not know its TFLite filter layout.")


def channel_axis(layer: keras.layers.Layer) -> int:
    """The output-channel axis of the layer's TFLite filter."""
    return 3 if type(layer) is keras.layers.DepthwiseConv2D else 0


def _find_filter(kernel: QuantizedKernel, tensors: list[flatbuffer.WeightTensor], expected: np.ndarray):
    """The converted filter of `kernel`: by layer name in the tensor name, else the one same-shaped filter with the
    kernel's zero pattern (the converter sometimes names folded constants generically)."""
    same_shape = [t for t in tensors if t.values is not None and t.values.shape == expected.shape]
    for candidates in (
        [t for t in same_shape if f"/{kernel.wrapper.name}/" in t.name],
        [t for t in same_shape if np.array_equal(t.values == 0, expected == 0)],
    ):
        if len(candidates) == 1:
            return candidates[0]
    raise ExportError(
        f"Cannot identify the filter of layer {kernel.layer_name!r} in the converted model ({len(same_shape)} "
        f"filters of shape {expected.shape}); the converter changed the graph more than tf_ecqx can follow."
    )


def _check_kernel(kernel: QuantizedKernel, tensor: flatbuffer.WeightTensor, expected: np.ndarray) -> KernelCheck:
    layer = kernel.wrapper.layer
    stored = tensor.values
    axis = channel_axis(layer)
    per_channel = np.moveaxis(stored, axis, 0).reshape(stored.shape[axis], -1)
    most_values = max(np.unique(row).size for row in per_channel)
    step = float(kernel.state["step"].numpy())
    if np.array_equal(stored, expected) and np.allclose(tensor.scales, step, rtol=1e-5):
        return KernelCheck(kernel.layer_name, tensor.name, "exact", most_values)
    if np.array_equal(stored == 0, expected == 0) and most_values <= 2**kernel.settings.bits:
        return KernelCheck(kernel.layer_name, tensor.name, "folded", most_values)
    raise ExportError(
        f"The int8 filter {tensor.name!r} of layer {kernel.layer_name!r} does not hold its ECQ codes (scale "
        f"{tensor.scales[:3]} vs step {step:.6g}; {int(np.sum((stored == 0) != (expected == 0)))} zeros moved). "
        "Was the model changed after training, or quantized with a tool other than tf_ecqx?"
    )


def check_kernels(qmodel: keras.Model, model: flatbuffer.schema.ModelT) -> list[KernelCheck]:
    """Match every ECQx kernel of qmodel to its filter in the dense flatbuffer and check the stored codes."""
    tensors = flatbuffer.weight_tensors(model)
    checks = []
    for kernel in quantized_kernels(qmodel):
        expected = tflite_layout(kernel.codes().numpy(), kernel.wrapper.layer)
        checks.append(_check_kernel(kernel, _find_filter(kernel, tensors, expected), expected))
    return checks


def agreement(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """Fraction of samples with the same argmax, and the largest absolute difference of the outputs."""
    return float(np.mean(reference.argmax(-1) == outputs.argmax(-1))), float(np.max(np.abs(reference - outputs)))
