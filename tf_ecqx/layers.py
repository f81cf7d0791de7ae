"""Facts about tf_keras and tfmot layers that quantization, relevance, export and the bitstream share, stated once.

KERNEL_ATTRS: the layer kinds whose kernels ECQx quantizes, with the attribute that holds the kernel (matched by exact
type: a subclass may compute something else, Conv2DTranspose is a Conv2D). `layer_class`: the class a layer counts
as. `wrapper_weights`: tfmot's private per-wrapper state, read nowhere else.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer
from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapper

from tf_ecqx._keras import keras

KERNEL_ATTRS: dict[type, str] = {
    keras.layers.Dense: "kernel",
    keras.layers.Conv1D: "kernel",
    keras.layers.Conv2D: "kernel",
    keras.layers.Conv2DTranspose: "kernel",
    keras.layers.DepthwiseConv2D: "depthwise_kernel",
}
KERNEL_KINDS = ", ".join(kind.__name__ for kind in KERNEL_ATTRS)  # for messages
TFMOT_CLASSES = (QuantizeLayer, QuantizeWrapper)


def layer_class(layer: keras.layers.Layer) -> type:
    """The class `layer` is handled as: tfmot's QuantizeLayer or QuantizeWrapper for any of their subclasses (those
    tf_ecqx loads saved models with, QuantizeWrapperV2), else exactly type(layer)."""
    return next((base for base in TFMOT_CLASSES if isinstance(layer, base)), type(layer))


def kernel_attr(layer: keras.layers.Layer) -> str | None:
    """The attribute holding the kernel ECQx quantizes in a layer of a kind listed in KERNEL_ATTRS, else None."""
    return KERNEL_ATTRS.get(type(layer))


def wrapper_weights(wrapper: QuantizeWrapper) -> list[tuple[tf.Variable, Any, dict[str, tf.Variable]]]:
    """(float variable, quantizer, quantizer state) of every weight a tfmot wrapper quantizes, in its order.

    tfmot keeps these in the private `_weight_vars` (its own tools read it too); this is the only place tf_ecqx does.
    """
    return list(wrapper._weight_vars)
