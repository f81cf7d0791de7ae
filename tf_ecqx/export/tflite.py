"""Integer TFLite export of a QAT model for phones (LiteRT, optionally sparse or with packed INT4 filters) and
microcontrollers (TFLM + LUT).

Every export checks itself: the int8 filters must hold exactly the ECQ codes (scale = step) or, where the converter
folded a BatchNorm into the kernel, the same zero pattern with at most 2^b values per output channel; the file is run
in the target runtime and compared with the Keras QAT model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
from tflite_micro import compression

from tf_ecqx._keras import keras
from tf_ecqx.export import flatbuffer
from tf_ecqx.export.inputs import calibration_and_verification, sample_shape
from tf_ecqx.export.runtimes import run_litert, run_tflm
from tf_ecqx.files import atomic_write, check_writable
from tf_ecqx.quantization.kernels import QuantizedKernel, frozen_kernels, quantized_kernels

TARGETS = ("mobile", "micro")
WEIGHT_DTYPES = ("int8", "int4")
INT4_MAX_BITS = 4


class ExportError(RuntimeError):
    """The exported file would not hold what the QAT model trained, or would not run; nothing was written."""


@dataclass(frozen=True)
class KernelCheck:
    """How a quantized kernel arrived in the file: 'exact' codes, or 'folded' (the converter folded a BatchNorm in)."""

    layer: str
    tensor: str
    kind: Literal["exact", "folded"]
    max_values_per_channel: int


@dataclass
class ExportResult:
    """What to_tflite wrote and what it verified."""

    path: Path
    target: str
    bytes: int
    kernels: list[KernelCheck]
    samples: int
    argmax_agreement: float  # fraction of samples whose argmax equals the Keras QAT model's
    max_abs_difference: float  # of dequantized outputs vs the Keras QAT model
    notes: list[str] = field(default_factory=list)
    arena_bytes: int | None = None  # micro only, as the TFLM interpreter reports it


def _check_calibrated(qmodel: keras.Model) -> None:
    """Refuse a QAT model that never ran fit: its input range is still tfmot's initial [0, 0], so every int8 input
    would be zero and the exported model would output a constant (which would even 'agree' with Keras)."""
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeLayer):
            low, high = (w.numpy() for w in layer.weights if w.name.endswith(("_min:0", "_max:0")))
            if low == high:
                raise ValueError(
                    f"qmodel was never trained: the input range of {layer.name!r} is still [{low}, {high}] (tfmot "
                    "calibrates activation ranges during fit). Fine-tune it with model.fit (a few steps suffice) "
                    "before exporting."
                )


def convert_int8(qmodel: keras.Model, calibration: np.ndarray, sparse: bool, float_io: bool = False) -> bytes:
    """Full-integer int8 TFLite of a QAT model (tf_ecqx's, or any tfmot QAT/float model), calibrated on samples."""
    converter = tf.lite.TFLiteConverter.from_keras_model(qmodel)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.representative_dataset = lambda: ([sample[None]] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with frozen_kernels(qmodel):
        return converter.convert()


def _tflite_layout(codes: np.ndarray, layer: keras.layers.Layer) -> np.ndarray:
    """Keras kernel layout -> TFLite filter layout (output channels first; depthwise channels last)."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return codes.reshape(1, *codes.shape[:2], -1)
    if isinstance(layer, keras.layers.Conv1D):
        return np.transpose(codes, (2, 0, 1))[:, None]
    if isinstance(layer, keras.layers.Conv2D):
        return np.transpose(codes, (3, 0, 1, 2))
    return codes.T


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
    channel_axis = 3 if isinstance(layer, keras.layers.DepthwiseConv2D) else 0
    per_channel = np.moveaxis(stored, channel_axis, 0).reshape(stored.shape[channel_axis], -1)
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
        expected = _tflite_layout(kernel.codes().numpy(), kernel.wrapper.layer)
        checks.append(_check_kernel(kernel, _find_filter(kernel, tensors, expected), expected))
    return checks


def _compress_for_micro(data: bytes, qmodel: keras.Model, checks: list[KernelCheck]) -> bytes:
    """TFLM look-up-table compression of each quantized filter, index width = its bit width."""
    model = flatbuffer.load(data)
    by_name = {t.name: t for t in flatbuffer.weight_tensors(model)}
    specs = compression.SpecBuilder()
    for kernel, check in zip(quantized_kernels(qmodel), checks):
        mode = (
            compression.spec.PerTensor()
            if check.kind == "exact"
            else compression.spec.PerChannel(
                axis=3 if isinstance(kernel.wrapper.layer, keras.layers.DepthwiseConv2D) else 0
            )
        )
        specs.add_tensor(0, by_name[check.tensor].index).with_lut(index_bitwidth=kernel.settings.bits, mode=mode)
    return bytes(compression.compress(data, specs.build()))


def _agreement(reference: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    return float(np.mean(reference.argmax(-1) == outputs.argmax(-1))), float(np.max(np.abs(reference - outputs)))


def _litert_int4_blocker(weight: flatbuffer.WeightTensor) -> str | None:
    """Why LiteRT (ai-edge-litert 2.3.0) would not run this packable filter as INT4 exactly like the int8 file.

    Measured on this stack: the builtin kernels compute INT4 CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED exactly
    like int8, but the default XNNPACK delegate takes an INT4 filter only for FULLY_CONNECTED with an even number of
    input channels; it leaves the others to the builtin kernel, whose requantization rounds differently from XNNPACK's
    (outputs change by a few LSB against the int8 file, where XNNPACK runs them).
    """
    if weight.op != "FULLY_CONNECTED":
        return f"{weight.op}: LiteRT's default XNNPACK delegate does not take INT4 filters of this operator"
    if weight.values.shape[-1] % 2:
        return (
            f"FULLY_CONNECTED with an odd number of inputs ({weight.values.shape[-1]}): LiteRT's default XNNPACK "
            "delegate does not take its INT4 filter"
        )
    return None


def _int4_blocker(weight: flatbuffer.WeightTensor, packable: bool) -> str | None:
    """Why a filter stays int8 in an int4 export, or None if it is packed."""
    if not packable:
        if weight.values is None:
            return "stored sparse"
        low, high = int(weight.values.min()), int(weight.values.max())
        if low >= -8 and high <= 7:
            return "not a plain int8 constant filter of an int8 operator"
        if high == 8 and low >= -7:
            return "its codes reach +8 (a 4-bit grid whose positive side dominates is [-7, 8]); INT4 holds [-8, 7]"
        return f"its values span [{low}, {high}]; INT4 holds [-8, 7]"
    blocker = _litert_int4_blocker(weight)
    if blocker:
        return blocker + "; the builtin kernel it would fall back to rounds differently, so outputs would change"
    return None


def _raw_difference(expected: np.ndarray, data: bytes, samples: np.ndarray, builtin_only: bool) -> str | None:
    """How LiteRT's raw outputs of `data` differ from `expected` (None if equal), or why LiteRT refused it."""
    try:
        raw, _ = run_litert(data, samples, builtin_only=builtin_only)
    except (RuntimeError, ValueError) as error:
        return f"LiteRT refused it: {error}"
    if np.array_equal(raw, expected):
        return None
    lsb = int(np.abs(raw.astype(np.int32) - expected).max())
    return f"{np.mean(raw != expected):.1%} of the raw int8 outputs differ, by up to {lsb} LSB"


def _check_int4_runs_like_int8(
    int8_data: bytes, data: bytes, samples: np.ndarray, packed: list[flatbuffer.PackedFilter], layer_of: dict
) -> None:
    """LiteRT with default settings (XNNPACK) and with builtin kernels only must give the int8 file's raw outputs;
    otherwise find the packed filters that alone make a difference and name them in an ExportError."""
    for builtin_only, runtime in ((False, "LiteRT with default settings (XNNPACK)"), (True, "LiteRT builtin kernels")):
        expected, _ = run_litert(int8_data, samples, builtin_only=builtin_only)
        problem = _raw_difference(expected, data, samples, builtin_only)
        if problem is None:
            continue
        culprits = []
        for filter_ in packed:
            single = flatbuffer.load(int8_data)
            flatbuffer.pack_int4_filters(single, [filter_.tensor])
            alone = _raw_difference(expected, flatbuffer.dump(single), samples, builtin_only)
            if alone:
                culprits.append(f"layer {layer_of.get(filter_.tensor, filter_.tensor)!r} ({filter_.op}): {alone}")
        raise ExportError(
            f"The INT4 file does not compute like the int8 file in {runtime} on {len(samples)} samples: {problem}. "
            + (
                f"INT4 filters that do this alone: {'; '.join(culprits)}."
                if culprits
                else "No single INT4 filter does this alone."
            )
            + " Export with weight_dtype='int8'."
        )


def _pack_int4(
    qmodel: keras.Model, int8_data: bytes, samples: np.ndarray, checks: list[KernelCheck], notes: list[str]
) -> tuple[bytes, list[KernelCheck]]:
    """The int8 file with every filter LiteRT runs exactly as INT4 packed two values per byte, checked like the int8
    file (codes, then LiteRT outputs equal to the int8 file's); notes say what was packed and what stayed int8."""
    model = flatbuffer.load(int8_data)
    layer_of = {check.tensor: check.layer for check in checks}
    packable = {weight.name for weight in flatbuffer.int4_candidates(model)}
    kept: dict[str, list[str]] = {}
    to_pack = []
    for weight in flatbuffer.weight_tensors(model):
        blocker = _int4_blocker(weight, weight.name in packable)
        if blocker is None:
            to_pack.append(weight.name)
        else:
            kept.setdefault(blocker, []).append(layer_of.get(weight.name, weight.name))
    packed = flatbuffer.pack_int4_filters(model, to_pack)
    data = flatbuffer.dump(model)
    checks = check_kernels(qmodel, flatbuffer.load(data))
    if packed:
        _check_int4_runs_like_int8(int8_data, data, samples, packed, layer_of)
        listed = ", ".join(
            f"{layer_of.get(f.tensor, f.tensor)} ({f.op}, {f.int8_bytes} -> {f.int4_bytes} bytes)" for f in packed
        )
        saved = len(int8_data) - len(data)
        notes.append(
            f"INT4 filters, two values per byte: {listed}; the file is {saved} bytes ({saved / len(int8_data):.1%}) "
            f"smaller than the int8 file ({len(int8_data)} -> {len(data)} bytes); LiteRT (default settings and "
            f"builtin kernels) gives the int8 file's raw outputs on {len(samples)} samples"
        )
    else:
        notes.append("no filter could be stored as INT4: the file is the int8 file")
    for reason, layers in kept.items():
        notes.append(f"kept int8: {', '.join(layers)} ({reason})")
    return data, checks


def to_tflite(
    qmodel: keras.Model,
    path: str | os.PathLike,
    representative_data: np.ndarray | tf.data.Dataset | Iterable,
    target: Literal["mobile", "micro"] = "mobile",
    sparse: bool | None = None,
    float_io: bool = False,
    verification_data: np.ndarray | tf.data.Dataset | None = None,
    weight_dtype: Literal["int8", "int4"] = "int8",
) -> ExportResult:
    """Write an integer TFLite model of qmodel to `path`, verified in the target runtime.

    mobile: full-integer int8 for LiteRT; `sparse` (default True for int8) stores sparse filters (runs with LiteRT's
    default settings). weight_dtype="int4" (bits <= 4, dense filters) stores the filters LiteRT runs exactly as INT4
    packed two per byte (FULLY_CONNECTED with an even number of inputs; `notes` lists what was packed and why the
    rest stayed int8) and checks that LiteRT, with and without XNNPACK, gives the int8 file's raw outputs.
    micro: dense int8 with TFLM look-up-table compression (index width = bits), verified in the TFLM interpreter.
    Input/output are int8 unless float_io. Verification runs on `verification_data` (default: the representative
    data, read once, so a generator serves both), up to 500 samples. qmodel must have one float input and one output,
    and the data batches of finite numbers of its input's shape; both are checked before anything is converted.
    """
    if target not in TARGETS:
        raise ValueError(f"target={target!r} is not known; use one of {TARGETS}.")
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype={weight_dtype!r} is not known; use one of {WEIGHT_DTYPES}.")
    path = check_writable(path)
    if not any(True for _ in quantized_kernels(qmodel)):
        raise ValueError("qmodel has no ECQx-quantized kernel: pass the model returned by tf_ecqx.quantize_model.")
    shape = sample_shape(qmodel)
    if weight_dtype == "int4":
        if target != "mobile":
            raise ValueError(
                f"weight_dtype='int4' is for target='mobile' (LiteRT), not target={target!r}: the micro export "
                "already stores each filter as LUT indices of its bit width."
            )
        if sparse:
            raise ValueError(
                "weight_dtype='int4' packs dense filters; sparse (DENSIFY) filters would stay int8, so the two do not "
                "combine. Pass sparse=False (or leave sparse unset) with weight_dtype='int4'."
            )
        too_wide = [
            f"{k.layer_name} ({k.settings.bits} bits)"
            for k in quantized_kernels(qmodel)
            if k.settings.bits > INT4_MAX_BITS
        ]
        if too_wide:
            raise ValueError(
                f"weight_dtype='int4' needs kernels of at most {INT4_MAX_BITS} bits (INT4 holds [-8, 7]); "
                f"{', '.join(too_wide)} would not fit. Quantize with bits<={INT4_MAX_BITS} or use weight_dtype='int8'."
            )
    sparse = weight_dtype == "int8" if sparse is None else sparse
    _check_calibrated(qmodel)
    calibration, samples = calibration_and_verification(representative_data, verification_data, shape)

    dense = convert_int8(qmodel, calibration, sparse=False, float_io=float_io)
    checks = check_kernels(qmodel, flatbuffer.load(dense))
    notes: list[str] = []
    arena = None
    reference = qmodel.predict(samples, verbose=0, batch_size=256)
    if target == "micro":
        data = _compress_for_micro(dense, qmodel, checks)
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
    else:
        data = dense
        if weight_dtype == "int4":
            data, checks = _pack_int4(qmodel, dense, samples, checks, notes)
        elif sparse:
            sparse_model = flatbuffer.load(convert_int8(qmodel, calibration, sparse=True, float_io=float_io))
            kept_dense = flatbuffer.densify_unprofitable(sparse_model, flatbuffer.load(dense))
            if kept_dense:
                notes.append(f"stored densely, CSR would be larger (below ~2/3 sparsity): {kept_dense}")
            detached = flatbuffer.detach_densified_int8_weights(sparse_model)
            data = flatbuffer.dump(sparse_model)
            stored = [t.name for t in flatbuffer.weight_tensors(sparse_model) if t.sparse]
            notes.append(f"sparse filters: {stored or 'none'}")
            if detached:
                notes.append(
                    "int8 DENSIFY outputs fed through an identity RESHAPE so that LiteRT's default XNNPACK "
                    "delegate runs the model (it fails to prepare int8 DENSIFY weights)"
                )
            if not np.array_equal(run_litert(data, samples, True)[0], run_litert(dense, samples, True)[0]):
                raise ExportError("The sparse model's outputs differ from the dense model's.")
            if len(data) >= len(dense):
                data = dense
                notes.append("the sparse conversion was not smaller than the dense one; wrote the dense file")
        _, outputs = run_litert(data, samples)
    agreement, difference = _agreement(reference, outputs)
    atomic_write(path, data)
    return ExportResult(path, target, len(data), checks, len(samples), agreement, difference, notes, arena)
