"""Facts about tf_keras and tfmot layers that quantization, relevance, export and the bitstream share, stated once.

KERNEL_ATTRS: the layer kinds whose kernels ECQx quantizes, with the attributes that hold them (matched by exact type: a
subclass may compute something else, Conv2DTranspose is a Conv2D). `kernel_name`: what a kernel is called in reports and
the bitstream. FLOAT_ONLY_IN_TFLITE: the kinds an integer TFLite file cannot hold. PER_CHANNEL_KINDS: the kinds whose
kernels are exported per channel. TF_OP_LAYERS: the layers left unwrapped. INPUT_PREPROCESSING: the layers
split_input_preprocessing moves onto the data. `layer_class`: the class a layer counts as. `wrapper_weights`: tfmot's
private per-wrapper state, read nowhere else. `call_arguments`: a layer call replayed on other inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper
from tf_keras.src.layers.core.tf_op_layer import SlicingOpLambda, TFOpLambda

from tf_ecqx._keras import keras

KERNEL_ATTRS: dict[type, tuple[str, ...]] = {
    keras.layers.Dense: ("kernel",),
    keras.layers.Conv1D: ("kernel",),
    keras.layers.Conv2D: ("kernel",),
    keras.layers.Conv3D: ("kernel",),
    keras.layers.Conv1DTranspose: ("kernel",),
    keras.layers.Conv2DTranspose: ("kernel",),
    keras.layers.Conv3DTranspose: ("kernel",),
    keras.layers.DepthwiseConv1D: ("depthwise_kernel",),
    keras.layers.DepthwiseConv2D: ("depthwise_kernel",),
    # tfmot's layout transform splits it into a DepthwiseConv2D and a 1x1 Conv2D (of generated names) first, which the
    # converter quantizes as TFLite runs them: kept whole, its unquantized intermediate made the int8 file disagree.
    keras.layers.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel"),
    # tfmot's layout transform makes it a SeparableConv2D between an expand and a squeeze, then splits that as above.
    keras.layers.SeparableConv1D: ("depthwise_kernel", "pointwise_kernel"),
}
# The kinds TFLite runs in float only (its CONV_3D and CONV_3D_TRANSPOSE have no integer kernel, TFLM has neither):
# they train with ECQx and go into the bitstream, but an integer TFLite file cannot hold their codes.
FLOAT_ONLY_IN_TFLITE = (keras.layers.Conv3D, keras.layers.Conv3DTranspose)
# The kinds whose kernels the int8 export pins per output channel (quantizers.pin_int8_scale says why).
PER_CHANNEL_KINDS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)
# The layers Keras makes of plain TensorFlow ops in a functional model (`x + 3.0`, `x[:, 0]`; MobileNetV3's hard-swish):
# no weights, and their constants live in the call, which tfmot's wrapper cannot pass on. They stay unwrapped; the
# converter quantizes their outputs from the calibration data.
TF_OP_LAYERS = (TFOpLambda, SlicingOpLambda)
# Input preprocessing a model may begin with: the converter multiplies a scale-only one into the next filter without
# rescaling it (export/verification.py), so tf_ecqx.split_input_preprocessing moves it onto the data.
INPUT_PREPROCESSING = (keras.layers.Rescaling, keras.layers.Normalization)
KERNEL_KINDS = ", ".join(kind.__name__ for kind in KERNEL_ATTRS)  # for messages
TFMOT_CLASSES = (QuantizeLayer, QuantizeWrapper)


def layer_class(layer: keras.layers.Layer) -> type:
    """The class `layer` is handled as: tfmot's QuantizeLayer or QuantizeWrapper for any of their subclasses (those
    tf_ecqx loads saved models with, QuantizeWrapperV2), else exactly type(layer)."""
    return next((base for base in TFMOT_CLASSES if isinstance(layer, base)), type(layer))


def kernel_attrs(layer: keras.layers.Layer) -> tuple[str, ...]:
    """The attributes holding the kernels ECQx quantizes in a layer of a kind listed in KERNEL_ATTRS, else ()."""
    return KERNEL_ATTRS.get(type(layer), ())


def kernel_name(layer_name: str, attr: str, attrs: Sequence[str]) -> str:
    """What a kernel is called in reports and the bitstream: its layer's name, or "layer/attribute" in a layer with
    several kernels (SeparableConv's depthwise and pointwise kernels)."""
    return layer_name if len(attrs) == 1 else f"{layer_name}/{attr}"


def wrapper_weights(wrapper: QuantizeWrapper) -> list[tuple[tf.Variable, Any, dict[str, tf.Variable]]]:
    """(float variable, quantizer, quantizer state) of every weight a tfmot wrapper quantizes, in its order.

    tfmot keeps these in the private `_weight_vars` (its own tools read it too); this is the only place tf_ecqx does.
    """
    return list(wrapper._weight_vars)


def call_arguments(arguments: tuple[tuple, dict], computed: dict[str, Any]) -> tuple[tuple, dict]:
    """A layer call's (args, kwargs) with each Keras tensor replaced by computed[its id]; the constants stay.

    Keras nodes name their inputs by str(id(tensor)) (node.flat_input_ids). A TF-op layer's constants (MobileNetV3's
    `x + 3.0`) live only in its call, so replaying the layer needs the call's own arguments.
    """
    return tf.nest.map_structure(lambda value: computed.get(str(id(value)), value), arguments)
