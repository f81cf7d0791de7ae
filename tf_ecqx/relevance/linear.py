"""The linear layers LRP decomposes (Dense, convolutions: plain, depthwise, transposed) as `Linear` pieces, read at call
time.

For a tfmot QAT wrapper the kernel is the wrapper's quantizer output (what the QAT forward uses) and the activation is
the plain one inside tfmot's activation wrapper: LRP runs on the float computation with quantized kernels.
BatchNormalization canonization folds BN(z) = s·z + t (inference statistics) into the kernel and bias.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
from tensorflow_model_optimization.python.core.quantization.keras.quantize_aware_activation import (
    NoOpActivation,
    QuantizeAwareActivation,
)
from tf_keras.src.utils import conv_utils

from tf_ecqx._keras import keras
from tf_ecqx.layers import KERNEL_ATTRS, layer_class, wrapper_weights
from tf_ecqx.relevance.graph import Step
from tf_ecqx.relevance.rules import Linear

# The kernel layers LRP decomposes: those layers.KERNEL_ATTRS quantizes with one kernel (a SeparableConv is split into
# its depthwise and pointwise convolutions before it is quantized).
DEPTHWISE_KINDS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
TRANSPOSED_KINDS = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
LINEAR_KINDS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    *DEPTHWISE_KINDS,
    *TRANSPOSED_KINDS,
)


def kind(layer: keras.layers.Layer) -> str:
    """The layer kind a Composite picks the rule by: "dense" or "conv"."""
    return "dense" if layer_class(layer) is keras.layers.Dense else "conv"


def check_linear(layer: keras.layers.Layer) -> None:
    """Refuse the variant LRP does not implement: channels_first convolutions (the rules broadcast a bias over the
    last axis)."""
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise ValueError(
            f"Layer {layer.name!r} ({type(layer).__name__}) is a channels_first convolution, which LRP does not "
            "support: build the model channels_last (the TFLite export needs that too), or train it with ECQ "
            "(ecqx=False)."
        )


def weight(step: Step, attr: str) -> tf.Tensor:
    """The layer weight `attr` as the forward pass uses it: through the wrapper's quantizer if it has one (an ECQx
    kernel's quantized values, without the identity its inference call adds to pin the export's int8 scale)."""
    if step.wrapper is not None:
        for variable, quantizer, quantizer_vars in wrapper_weights(step.wrapper):  # tfmot keeps (var, quantizer, state)
            if variable.name.split("/")[-1].split(":")[0] == attr:
                ecqx_values = getattr(quantizer, "quantized_values", None)  # ECQx's quantizer, not imported here
                if ecqx_values is not None:
                    return ecqx_values(variable, quantizer_vars)
                return quantizer(variable, False, quantizer_vars)
    return tf.convert_to_tensor(getattr(step.layer, attr))


def activation(layer: keras.layers.Layer) -> Callable[[tf.Tensor], tf.Tensor]:
    """The layer's activation without tfmot's fake quantization."""
    fn = layer.activation
    if isinstance(fn, QuantizeAwareActivation):
        fn = fn.activation
    if fn is None or isinstance(fn, NoOpActivation):
        return tf.identity
    return fn


def _depthwise_conv1d(layer: keras.layers.Layer, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """DepthwiseConv1D's computation: a depthwise 2-D convolution over a height-1 image."""
    z = tf.nn.depthwise_conv2d(
        tf.expand_dims(x, 1),
        tf.expand_dims(kernel, 0),
        strides=(1, 1, *layer.strides, 1),
        padding=layer.padding.upper(),
        dilations=(1, *layer.dilation_rate),
    )
    return tf.squeeze(z, [1])


def _transposed_conv(layer: keras.layers.Layer, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Conv1D/2D/3DTranspose's computation, for inputs of any spatial size (a fully convolutional model's)."""
    sizes = tf.shape(x)
    output_padding = layer.output_padding or (None,) * len(layer.strides)
    spatial = [
        conv_utils.deconv_output_length(
            x.shape[axis + 1] or sizes[axis + 1],
            layer.kernel_size[axis],
            padding=layer.padding,
            output_padding=output_padding[axis],
            stride=layer.strides[axis],
            dilation=layer.dilation_rate[axis],
        )
        for axis in range(len(layer.strides))
    ]
    return tf.nn.conv_transpose(
        x,
        kernel,
        tf.stack([sizes[0], *spatial, layer.filters]),
        strides=layer.strides,
        padding=layer.padding.upper(),
        dilations=layer.dilation_rate,
    )


def _conv(layer: keras.layers.Layer) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    cls = layer_class(layer)
    if cls is keras.layers.Dense:
        return lambda x, k: tf.tensordot(x, k, [[x.shape.rank - 1], [0]]) if x.shape.rank > 2 else tf.matmul(x, k)
    if cls is keras.layers.DepthwiseConv1D:
        return lambda x, k: _depthwise_conv1d(layer, x, k)
    if cls is keras.layers.DepthwiseConv2D:
        return lambda x, k: keras.backend.depthwise_conv2d(
            x,
            k,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
    if cls in TRANSPOSED_KINDS:
        return lambda x, k: _transposed_conv(layer, x, k)
    if layer.padding == "causal":
        return lambda x, k: layer.convolution_op(tf.pad(x, layer._compute_causal_padding(x)), k)
    return layer.convolution_op


def linear(step: Step) -> Linear:
    """z = conv(x, kernel) + bias of a linear step (channels last, so the bias broadcasts)."""
    layer = step.layer
    bias = weight(step, "bias") if layer.use_bias else None
    (kernel,) = KERNEL_ATTRS[layer_class(layer)]  # LINEAR_KINDS have one kernel each
    return Linear(_conv(layer), weight(step, kernel), bias)


def fold_batch_norm(op: Linear, linear_step: Step, bn_step: Step, rank: int) -> Linear:
    """The linear op followed by the (inference-mode) BatchNormalization of bn_step, as one linear op."""
    bn, layer = bn_step.layer, linear_step.layer
    axes = [a % rank for a in (bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis])]
    if axes != [rank - 1]:
        raise ValueError(
            f"BatchNormalization {bn.name!r} normalises axes {axes}, not the channel axis {rank - 1} of "
            f"{layer.name!r}: it cannot be canonized; use bn='pass'."
        )
    variance = weight(bn_step, "moving_variance")
    scale = tf.math.rsqrt(variance + bn.epsilon)
    if bn.scale:
        scale *= weight(bn_step, "gamma")
    shift = -weight(bn_step, "moving_mean") * scale
    if bn.center:
        shift += weight(bn_step, "beta")
    # a depthwise kernel (..., in, multiplier) has output channel in * multiplier + m; a transposed one: (..., out, in)
    if layer_class(layer) in DEPTHWISE_KINDS:
        kernel_scale = tf.reshape(scale, op.kernel.shape[-2:])
    elif layer_class(layer) in TRANSPOSED_KINDS:
        kernel_scale = tf.reshape(scale, (-1, 1))
    else:
        kernel_scale = scale
    bias = shift if op.bias is None else op.bias * scale + shift
    return Linear(op.conv, op.kernel * kernel_scale, bias)
