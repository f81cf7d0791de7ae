"""Verification of a converted model: every ECQx kernel found in the flatbuffer and holding its codes, and the
agreement of the file's outputs with the Keras QAT model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.layers import FLOAT_ONLY_IN_TFLITE, INPUT_PREPROCESSING, KERNEL_ATTRS
from tf_ecqx.quantization.kernels import QuantizedKernel, quantized_kernels

# The layers the converter folds input preprocessing through into the next filter.
ZERO_PADDING = (keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.ZeroPadding3D)


class ExportError(RuntimeError):
    """The exported file would not hold what the QAT model trained, or would not run; nothing was written."""


@dataclass(frozen=True)
class KernelCheck:
    """How a quantized kernel arrived in the file: 'exact' codes, or 'folded' (the converter folded a BatchNorm in)."""

    layer: str
    tensor: str
    kind: Literal["exact", "folded"]
    max_values_per_channel: int


def tflite_layout(codes: np.ndarray, kernel: QuantizedKernel) -> np.ndarray:
    """Keras kernel layout -> TFLite filter layout: output channels first, depthwise channels last; a 1-D
    convolution's filter is the 2-D filter of height 1 the converter makes of it."""
    kind = type(kernel.wrapper.layer)
    if codes.ndim == 2:  # Dense (in, out)
        return codes.T
    spatial = codes.shape[:-2]
    if kernel.quantizer.depthwise:  # (*spatial, in, multiplier)
        return codes.reshape(1, *(1,) * (2 - len(spatial)), *spatial, -1)
    if kind in (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose):  # (*spatial, out, in)
        codes = np.swapaxes(codes, -1, -2)
    filters = np.moveaxis(codes, -1, 0)  # (out, *spatial, in)
    return filters.reshape(filters.shape[0], *(1,) * (2 - len(spatial)), *filters.shape[1:])


def check_integer_kernels(qmodel: keras.Model) -> None:
    """Refuse, before anything is converted, a kernel an integer TFLite file cannot hold with its codes checked."""
    for kernel in quantized_kernels(qmodel):
        kind, name = type(kernel.wrapper.layer), kernel.layer_name
        if kind in FLOAT_ONLY_IN_TFLITE:
            problem = "TFLite runs it in float only (CONV_3D, CONV_3D_TRANSPOSE: no integer kernel; TFLM has neither)"
            fix = f"Quantized without this layer (exclude=[{name!r}]), target='mobile' runs it in float"
        elif kind not in KERNEL_ATTRS:
            problem = "tf_ecqx does not know its TFLite layout, so it cannot check that the file holds its codes"
            fix = f"Quantize it without this layer (exclude=[{name!r}]), which leaves it in float to the converter"
        else:
            continue
        raise ExportError(
            f"Layer {name!r} ({kind.__name__}): {problem}. Nothing was written. {fix}, or store its codes with "
            "tf_ecqx.export.save (the bitstream takes any kernel)."
        )


def channel_axis(kernel: QuantizedKernel) -> int:
    """The output-channel axis of the kernel's TFLite filter."""
    return 3 if kernel.quantizer.depthwise else 0


def _find_filter(kernel: QuantizedKernel, tensors: list[flatbuffer.WeightTensor], expected: np.ndarray):
    """The converted filter of `kernel`: by layer name in the tensor name, else the one same-shaped filter with the
    kernel's zero pattern (the converter sometimes names folded constants generically). A layer called more than once
    may come as one identical copy per call."""
    same_shape = [t for t in tensors if t.values is not None and t.values.shape == expected.shape]
    for candidates in (
        [t for t in same_shape if f"/{kernel.wrapper.name}/" in t.name],
        [t for t in same_shape if np.array_equal(t.values == 0, expected == 0)],
    ):
        if candidates and all(_same_tensor(candidates[0], t) for t in candidates[1:]):
            return candidates[0]
    raise ExportError(
        f"Cannot identify the filter of layer {kernel.name!r} in the converted model ({len(same_shape)} "
        f"filters of shape {expected.shape}); the converter changed the graph more than tf_ecqx can follow."
    )


def _same_tensor(a: flatbuffer.WeightTensor, b: flatbuffer.WeightTensor) -> bool:
    return np.array_equal(a.values, b.values) and np.array_equal(a.scales, b.scales)


def preprocessing_before(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The Rescaling or Normalization layer that feeds `layer` directly or through zero padding, if any."""
    while layer.inbound_nodes:
        inbound = layer.inbound_nodes[-1].inbound_layers
        if not isinstance(inbound, keras.layers.Layer):  # the model's input, or several layers
            return None
        inner = getattr(inbound, "layer", inbound)  # unwrapped from tfmot's wrapper
        if isinstance(inner, INPUT_PREPROCESSING):
            return inner
        if not isinstance(inner, ZERO_PADDING):
            return None
        layer = inbound
    return None


def _check_kernel(kernel: QuantizedKernel, tensor: flatbuffer.WeightTensor, expected: np.ndarray) -> KernelCheck:
    stored = tensor.values
    axis = channel_axis(kernel)
    per_channel = np.moveaxis(stored, axis, 0).reshape(stored.shape[axis], -1)
    most_values = max(np.unique(row).size for row in per_channel)
    step = float(kernel.state["step"].numpy())
    if np.array_equal(stored, expected) and np.allclose(tensor.scales, step, rtol=1e-5):
        return KernelCheck(kernel.name, tensor.name, "exact", most_values)
    if np.array_equal(stored == 0, expected == 0) and most_values <= 2**kernel.settings.bits:
        return KernelCheck(kernel.name, tensor.name, "folded", most_values)
    found = f"{tensor.scales[:3]} vs step {step:.6g}; {int(np.sum((stored == 0) != (expected == 0)))} zeros moved"
    preprocessing = preprocessing_before(kernel.wrapper)
    if preprocessing is not None:
        raise ExportError(
            f"The int8 filter of layer {kernel.name!r} does not hold its ECQ codes (scale {found}): the TFLite "
            f"converter multiplied the {type(preprocessing).__name__} layer {preprocessing.name!r} before it into "
            "the filter but kept the filter's scale, which rounds the codes away. Apply the preprocessing to the "
            "data instead: preprocess, core = tf_ecqx.split_input_preprocessing(model), then quantize core and train "
            "and export it on preprocess(x)."
        )
    raise ExportError(
        f"The int8 filter {tensor.name!r} of layer {kernel.name!r} does not hold its ECQ codes (scale {found}). "
        "Was the model changed after training, or quantized with a tool other than tf_ecqx?"
    )


def check_kernels(qmodel: keras.Model, model: flatbuffer.schema.ModelT) -> list[KernelCheck]:
    """Match every ECQx kernel of qmodel to its filter in the dense flatbuffer and check the stored codes."""
    tensors = flatbuffer.weight_tensors(model)
    checks = []
    for kernel in quantized_kernels(qmodel):
        expected = tflite_layout(kernel.codes().numpy(), kernel)
        checks.append(_check_kernel(kernel, _find_filter(kernel, tensors, expected), expected))
    return checks


# The largest RMS error of an exported model's outputs against the Keras QAT model, relative to the outputs' spread
# over the verification samples: int8 rounding gives a few percent; a graph the converter mistranslated gives ~100 %.
# A model whose own outputs move far when its inputs move by one int8 step is judged against that: its file may be off
# by SENSITIVITY_MARGIN times as much (measured on MobileNets: files off by 0.7-0.9 times their models' sensitivity).
MAX_RELATIVE_ERROR = 0.2
SENSITIVITY_MARGIN = 1.5
# The least spread counted, in steps of the file's int8 output: a model whose outputs hardly vary (untrained, or
# one class everywhere) has errors of a few steps that are rounding, not mistranslation.
MIN_SPREAD_STEPS = 16


@dataclass(frozen=True)
class Agreement:
    """How the exported model's outputs compare with the Keras QAT model's on the verification samples."""

    argmax: float  # fraction of samples with the same argmax (near-ties may flip)
    max_abs_difference: float
    relative_error: float  # RMS difference / spread of the Keras outputs (at least MIN_SPREAD_STEPS output steps)
    sensitivity: float  # the same measure for the Keras outputs on inputs nudged by one int8 input step


def output_step(outputs: np.ndarray) -> float:
    """The quantization step of the file's (dequantized int8) outputs: the least gap between their values."""
    gaps = np.diff(np.unique(outputs))
    return float(gaps.min()) if gaps.size else 0.0


def nudged_inputs(samples: np.ndarray, input_step: float) -> np.ndarray:
    """The samples with every value moved by one int8 input step up or down (a fixed random pattern)."""
    signs = np.random.default_rng(0).choice(np.float32([-1, 1]), samples.shape)
    return (samples + input_step * signs).astype(np.float32)


def relative_rms(reference: np.ndarray, moved: np.ndarray, spread: float | None = None) -> float:
    """RMS of moved - reference over `spread` (default: the standard deviation of reference); 0 without spread."""
    spread = float(np.std(reference)) if spread is None else spread
    rms = float(np.sqrt(np.mean((moved.astype(np.float64) - reference) ** 2)))
    return rms / spread if spread > 0 else 0.0


def agreement(reference: np.ndarray, outputs: np.ndarray, nudged_reference: np.ndarray | None = None) -> Agreement:
    """The outputs' agreement; an ExportError if their error is beyond int8 rounding.

    Beyond rounding means above MAX_RELATIVE_ERROR and above SENSITIVITY_MARGIN times the sensitivity: how far the
    Keras outputs themselves move on nudged inputs (`nudged_reference`). A barely trained deep model amplifies every
    rounding flip from layer to layer (a MobileNet after 128 steps from random weights: 74 %; its file, 52 %, as
    tfmot's own QAT file of it), so its file is off by about as much however right the translation; a mistranslated
    graph is off by more (measured 150-1500 %) and uncorrelated outputs by about 140 %.
    """
    spread = max(float(np.std(reference)), MIN_SPREAD_STEPS * output_step(outputs))
    relative_error = relative_rms(reference, outputs, spread)
    sensitivity = 0.0 if nudged_reference is None else relative_rms(reference, nudged_reference, spread)
    same_argmax = float(np.mean(reference.argmax(-1) == outputs.argmax(-1)))
    result = Agreement(same_argmax, float(np.abs(outputs - reference).max()), relative_error, sensitivity)
    if relative_error > max(MAX_RELATIVE_ERROR, SENSITIVITY_MARGIN * sensitivity):
        raise ExportError(
            f"The exported model's outputs differ from the Keras QAT model's by {relative_error:.0%} of their spread "
            f"(RMS; int8 rounding gives a few percent, and one int8 step more on every input moves the Keras outputs "
            f"by {sensitivity:.0%}), argmax agreement {result.argmax:.1%}: the TFLite converter mistranslated the "
            "model. Nothing was written; please report it with the model's layer list."
        )
    return result
