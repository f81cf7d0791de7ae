"""Layout transforms tf_ecqx runs before tfmot's own: layers rewritten into ones ECQx quantizes kernel by kernel."""

from __future__ import annotations

import collections
import copy
from typing import Any

from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations.transforms import (
    LayerNode,
    LayerPattern,
    Transform,
)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_aware_activation import (
    QuantizeAwareActivation,
)

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS

# The activations tfmot's wrapper quantizes inside a layer (before or after applying them); any other fails in
# quantize_apply with a message that names neither the layer nor a fix.
FUSABLE_ACTIVATIONS = (
    QuantizeAwareActivation._PRE_QUANT_ACTIVATIONS | QuantizeAwareActivation._POST_QUANT_ACTIVATIONS | {"linear"}
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
