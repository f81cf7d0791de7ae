"""Full-integer int8 conversion of a QAT model. The dense conversion is made once per model state and batch size and
shared by every export of it (to_tflite's targets, size_table, the CLI): the TFLite converter is the slow part of an
export."""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import tensorflow as tf
from tensorflow.lite.python.convert_phase import ConverterError
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

from tf_ecqx._keras import keras
from tf_ecqx.export.verification import ExportError, check_integer_kernels
from tf_ecqx.quantization.kernels import frozen_kernels

# model -> {fingerprint of its weights, the calibration, float_io and batch size: the dense int8 flatbuffer}
_DENSE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# The micro file's batch size. A file traced at any batch size (None) computes the shapes of its Flatten/Reshape ops
# at run time, which TFLM cannot prepare; LiteRT can, and only then can its users resize the input to their batch.
MICRO_BATCH_SIZE = 1


def _input_ranges(qmodel: keras.Model) -> list[tuple[str, float, float]]:
    """(name, low, high) of every input range tfmot calibrates (its QuantizeLayers)."""
    ranges = []
    for layer in qmodel.layers:
        if isinstance(layer, QuantizeLayer):
            low, high = (float(w.numpy()) for w in layer.weights if w.name.endswith(("_min:0", "_max:0")))
            ranges.append((layer.name, low, high))
    return ranges


def check_calibrated(qmodel: keras.Model) -> None:
    """Refuse a QAT model that never ran fit: its input range is still tfmot's initial [0, 0], so every int8 input
    would be zero and the exported model would output a constant (which would even 'agree' with Keras)."""
    for name, low, high in _input_ranges(qmodel):
        if low == high:
            raise ValueError(
                f"qmodel was never trained: the input range of {name!r} is still [{low}, {high}] (tfmot "
                "calibrates activation ranges during fit). Fine-tune it with model.fit (a few steps suffice) "
                "before exporting."
            )


def input_step(qmodel: keras.Model) -> float:
    """The step of the int8 input the file computes with: the largest calibrated input range / 255 (0 if none)."""
    return max((high - low for _, low, high in _input_ranges(qmodel)), default=0.0) / 255


def convert_int8(
    qmodel: keras.Model, calibration: np.ndarray, sparse: bool, float_io: bool = False, batch_size: int | None = None
) -> bytes:
    """Full-integer int8 TFLite of a QAT model (tf_ecqx's, or any tfmot QAT/float model), calibrated on samples, for
    inputs of `batch_size` samples (None: any number, set by resizing the input).

    The converter gets the model's inference function and its variables, not the Keras model: from a Keras model it
    first saves every layer's traced functions, which took most of an export's time (a minute for MobileNet).
    """
    with frozen_kernels(qmodel):
        spec = tf.TensorSpec([batch_size, *calibration.shape[1:]], tf.float32)  # fixes an open input size
        function = tf.function(lambda x: qmodel(x, training=False)).get_concrete_function(spec)
    holder = tf.Module()  # what the converter saves: the variables only, not the Keras layers
    holder.weights = list(qmodel.weights)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], holder)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if sparse:
        converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.representative_dataset = lambda: ([sample[None]] for sample in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except (ConverterError, RuntimeError) as error:  # its quantizer raises bare RuntimeErrors
        raise ExportError(
            f"The TFLite converter could not convert qmodel: {converter_complaint(error)} Nothing was written. Usual "
            "causes: an op TFLite cannot run in int8 (ELU, for one: replace that activation) or a quantization the "
            "converter cannot follow (quantize_model(..., exclude=[...]) the layer the op comes from keeps it in "
            "float). Please report the message to tf_ecqx."
        ) from None


def converter_complaint(error: Exception) -> str:
    """The first 'error:' of a converter message, without the call-site location it starts with."""
    lines = [line.split("error:", 1)[1].strip() for line in str(error).splitlines() if "error:" in line]
    lines += str(error).strip().splitlines() or ["it gave no reason"]
    return lines[0].rstrip(".") + "."


def _fingerprint(qmodel: keras.Model, calibration: np.ndarray, float_io: bool) -> str:
    """A digest of what the conversion depends on: every weight of the model, the calibration samples, float_io."""
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes())
    digest.update(bytes([float_io]))
    for weight in qmodel.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def dense_int8(
    qmodel: keras.Model, calibration: np.ndarray, float_io: bool = False, batch_size: int | None = None
) -> bytes:
    """convert_int8(qmodel, calibration, sparse=False, float_io, batch_size), reused while the model's weights stay
    the same."""
    check_integer_kernels(qmodel)
    key = (_fingerprint(qmodel, calibration, float_io), batch_size)
    cached = _DENSE.setdefault(qmodel, {})
    if key not in cached:
        for stale in [k for k in cached if k[0] != key[0]]:
            del cached[stale]
        cached[key] = convert_int8(qmodel, calibration, sparse=False, float_io=float_io, batch_size=batch_size)
    return cached[key]
