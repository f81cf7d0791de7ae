"""Rewrites before tfmot's quantization: layout transforms that make layers into ones ECQx quantizes kernel by kernel,
and a fake quantization after the TF-op layers whose int8 kernels give their outputs a range of their own."""

from __future__ import annotations

import collections
import copy
from collections.abc import Collection
from typing import Any

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_configs import (
    Default8BitOutputQuantizeConfig,
)
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations.transforms import (
    LayerNode,
    LayerPattern,
    Transform,
)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_annotate import QuantizeAnnotate
from tensorflow_model_optimization.python.core.quantization.keras.quantize_aware_activation import (
    QuantizeAwareActivation,
)

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS, TF_OP_LAYERS, call_arguments

# The activations tfmot's wrapper quantizes inside a layer (before or after applying them); any other fails in
# quantize_apply with a message that names neither the layer nor a fix.
FUSABLE_ACTIVATIONS = (
    QuantizeAwareActivation._PRE_QUANT_ACTIVATIONS | QuantizeAwareActivation._POST_QUANT_ACTIVATIONS | {"linear"}
)

# TF ops Keras wraps as layers (MobileNetV3's hard-swish: x + 3, x * (1/6)) whose int8 TFLite kernels give their output
# a range of its own; ops that keep their input's scale (reshape, slicing, concat) or have a fixed range are not here.
RANGED_TF_OPS = frozenset(
    {"__operators__.add", "math.add", "math.subtract", "math.multiply", "math.truediv", "nn.relu", "nn.relu6"}
)


def _node(layer: keras.layers.Layer, input_node: LayerNode | None, weights: dict[str, Any] | None = None) -> LayerNode:
    """A LayerNode of a new layer, marked for quantization (tfmot considers only layers with metadata)."""
    config = quantize_utils.serialize_layer(layer, use_legacy_format=True)
    config["name"] = layer.name
    return LayerNode(
        config,
        weights=collections.OrderedDict(weights or {}),
        input_layers=[input_node] if input_node is not None else [],
        metadata={"quantize_config": None},
    )


def _has_own_config(node: LayerNode) -> bool:
    """Whether the user annotated the layer with a quantize config of their own (theirs to handle, then)."""
    return node.metadata.get("quantize_config") is not None


class ActivationSplit(Transform):
    """A kernel layer whose activation tfmot cannot quantize inside it (elu, relu6, hard_sigmoid, selu, ...) -> the
    layer without activation, then an Activation layer `<name>_activation`, which gets an 8-bit output quantizer."""

    def pattern(self) -> LayerPattern:
        return LayerPattern("|".join(kind.__name__ for kind in KERNEL_ATTRS))

    def replacement(self, match_layer: LayerNode) -> LayerNode:
        activation = match_layer.layer["config"].get("activation", "linear")  # a dict for a custom function
        if _has_own_config(match_layer) or (isinstance(activation, str) and activation in FUSABLE_ACTIVATIONS):
            return match_layer
        linear = copy.deepcopy(match_layer.layer)
        linear["config"]["activation"] = "linear"
        layer = LayerNode(linear, weights=match_layer.weights, metadata=match_layer.metadata)
        name = f"{linear['config']['name']}_activation"
        return _node(keras.layers.Activation(keras.activations.deserialize(activation), name=name), layer)


class SeparableConv1DSplit(Transform):
    """SeparableConv1D -> [ZeroPadding1D for causal padding] -> DepthwiseConv1D -> 1x1 Conv1D, the same computation.

    tfmot's own transform makes it a SeparableConv2D between two Lambda layers, which tf_keras refuses to deserialize
    (a Python lambda), and refuses causal padding. Its two kernels become `<name>_depthwise` and `<name>_pointwise`,
    with an 8-bit quantized output between them as TFLite computes them.
    """

    def pattern(self) -> LayerPattern:
        return LayerPattern("SeparableConv1D")

    def replacement(self, match_layer: LayerNode) -> LayerNode:
        if _has_own_config(match_layer):
            return match_layer
        config = match_layer.layer["config"]
        depthwise_kernel, pointwise_kernel, *bias = match_layer.weights.values()
        kernel_size, dilation = config["kernel_size"][0], config["dilation_rate"][0]
        causal = config["padding"] == "causal"
        padding = None
        if causal:
            padding = _node(
                keras.layers.ZeroPadding1D((dilation * (kernel_size - 1), 0), name=f"{config['name']}_causal_padding"),
                None,
            )
        depthwise = keras.layers.DepthwiseConv1D(
            kernel_size,
            strides=config["strides"],
            padding="valid" if causal else config["padding"],
            depth_multiplier=config["depth_multiplier"],
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
            use_bias=False,
            depthwise_initializer=config["depthwise_initializer"],
            depthwise_regularizer=config["depthwise_regularizer"],
            depthwise_constraint=config["depthwise_constraint"],
            trainable=config["trainable"],
            name=f"{config['name']}_depthwise",
        )
        pointwise = keras.layers.Conv1D(
            config["filters"],
            1,
            data_format=config["data_format"],
            activation=config["activation"],
            use_bias=config["use_bias"],
            kernel_initializer=config["pointwise_initializer"],
            bias_initializer=config["bias_initializer"],
            kernel_regularizer=config["pointwise_regularizer"],
            bias_regularizer=config["bias_regularizer"],
            activity_regularizer=config["activity_regularizer"],
            kernel_constraint=config["pointwise_constraint"],
            bias_constraint=config["bias_constraint"],
            trainable=config["trainable"],
            name=f"{config['name']}_pointwise",
        )
        depthwise_node = _node(depthwise, padding, {"depthwise_kernel:0": depthwise_kernel})
        pointwise_weights = {"kernel:0": pointwise_kernel, **({"bias:0": bias[0]} if bias else {})}
        return _node(pointwise, depthwise_node, pointwise_weights)


def quantize_tf_op_outputs(model: keras.Model, excluded: Collection[str] = ()) -> keras.Model:
    """The model with an identity Activation `<op>_output` and an 8-bit output quantizer after each TF-op layer of
    RANGED_TF_OPS not named in `excluded`; the model itself if it has none.

    Such a layer cannot be wrapped (its constants live in the call), but the int8 file quantizes its output: without a
    fake quantization there, QAT trains with a float tensor the device rounds (MobileNetV3Small's micro file was 50 %
    of the output spread off its Keras model, 34 % with it).
    """

    def ranged(layer: keras.layers.Layer) -> bool:
        function = layer.get_config().get("function") if isinstance(layer, TF_OP_LAYERS) else None
        return function in RANGED_TF_OPS and layer.name not in excluded

    if not any(ranged(layer) for layer in model.layers):
        return model
    computed = {str(id(tensor)): tensor for tensor in model.inputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # tf_keras' own execution order
        for node in model._nodes_by_depth[depth]:
            if node.is_input:
                continue
            args, kwargs = call_arguments((node.call_args, node.call_kwargs), computed)
            outputs = node.layer(*args, **kwargs)
            if ranged(node.layer):
                marker = keras.layers.Activation("linear", name=f"{node.layer.name}_output")
                outputs = QuantizeAnnotate(marker, quantize_config=Default8BitOutputQuantizeConfig())(outputs)
            for original, replayed in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs), strict=True):
                computed[str(id(original))] = replayed
    return keras.Model(model.inputs, [computed[str(id(t))] for t in model.outputs], name=model.name)
