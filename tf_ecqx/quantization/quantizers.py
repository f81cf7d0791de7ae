"""ECQxWeightQuantizer: the tfmot Quantizer that puts a kernel on its entropy-constrained low-bit grid.

Its state lives in non-trainable variables of the wrapping layer (so it saves and restores with the model): the grid
(step, k_min, k_max), fixed after `initialize`, and the layer-size factor d_l; with ECQx also the weight relevances and
a refresh budget that RelevanceCallback sets. The user's lambda is a variable of the quantizer itself, not of the layer
(`lambda_variable`, starting at settings.lambda_): LambdaSchedule assigns it during fit without retracing the train
step, and saved files keep the layout they had before it existed (a loaded model's lambda is settings.lambda_). The
assignment itself is recomputed from the float shadow weights at every call, inside the compiled train step.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow_model_optimization.quantization.keras import quantizers as tfmot_quantizers

from tf_ecqx._keras import keras
from tf_ecqx.ecq import assign
from tf_ecqx.ecq.grid import INT8_NARROW_MAX, Grid, init_grid
from tf_ecqx.quantization.settings import ECQxSettings

# Key of the quantizer state under which `kernels.frozen_kernels` puts each kernel's quantized values while exporting.
FROZEN_VALUES = "frozen_values"


def straight_through(w: tf.Tensor, w_q: tf.Tensor, rule: str) -> tf.Tensor:
    """Forward w_q, backward a straight-through gradient to the float shadow weights w.

    reference (EC2T/TTQ): dL/dw = |c_k*| * dL/dw_q on nonzero levels and dL/dw_q on the zero level.
        The magnitude of the centroid is used: a signed centroid would flip the gradient of negative weights.
    ste: dL/dw = dL/dw_q everywhere.
    """

    @tf.custom_gradient
    def forward(shadow: tf.Tensor) -> tuple[tf.Tensor, Any]:
        def backward(upstream: tf.Tensor) -> tf.Tensor:
            if rule == "ste":
                return upstream
            return upstream * tf.where(tf.equal(w_q, 0.0), 1.0, tf.abs(w_q))

        return tf.identity(w_q), backward

    return forward(w)


def pin_int8_scale(w_q: tf.Tensor, step: tf.Tensor, per_channel: bool, depthwise: bool) -> tf.Tensor:
    """w_q under an int8 fake quantization of scale = step (an identity on grid values), which pins the TFLite export
    to that scale, so the stored int8 values are exactly the codes.

    A 2-D convolution's kernel (per_channel, rank 4) gets it per output channel, all with the same scale: the converter
    folds a following BatchNormalization correctly only into a per-channel quantized filter (with a per-tensor range
    it quantizes the folded bias with the wrong input scale and the exported model is garbage). A depthwise kernel's
    output channels are its last two axes (in, multiplier). 1-D and transposed kernels stay per tensor: the converter
    cannot reshape a per-channel 1-D kernel into its 2-D filter, and folds into the others correctly.
    """
    limit = INT8_NARROW_MAX * step
    if not per_channel or w_q.shape.rank != 4:
        return tf.quantization.fake_quant_with_min_max_vars(w_q, -limit, limit, num_bits=8, narrow_range=True)
    channels = w_q.shape[-2] * w_q.shape[-1] if depthwise else w_q.shape[-1]
    per_channel_view = tf.reshape(w_q, [*w_q.shape[:-2], 1, channels]) if depthwise else w_q
    pinned = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        per_channel_view, tf.fill([channels], -limit), tf.fill([channels], limit), num_bits=8, narrow_range=True
    )
    return tf.reshape(pinned, tf.shape(w_q))


# The assignment of a flattened kernel (the codes do not depend on its layout), traced once for all kernels: a train
# step calls one function per kernel instead of holding ~350 ops of its own, which made tracing take a minute for
# models with dozens of kernels.
_FLAT, _FLOAT, _INT = tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)


@tf.function(input_signature=[_FLAT, _FLOAT, _INT, _INT, _FLOAT, _FLOAT], autograph=False)
def _flat_ecq_codes(w, step, k_min, k_max, lambda_, size_factor) -> tf.Tensor:
    return assign.ecq_codes(w, Grid(step, k_min, k_max), lambda_, size_factor)


@tf.function(input_signature=[_FLAT, _FLOAT, _INT, _INT, _FLOAT, _FLAT, _FLOAT, _FLOAT, _FLOAT], autograph=False)
def _flat_ecqx_codes(w, step, k_min, k_max, lambda_, relevance, p, q, size_factor) -> tf.Tensor:
    return assign.ecqx_codes(w, Grid(step, k_min, k_max), lambda_, relevance, p, size_factor, q)


class ECQxWeightQuantizer(tfmot_quantizers.Quantizer):
    """Entropy-constrained quantization of one kernel as `settings` say (docs/method.md §2, §3, §5; ECQx: §4).

    depthwise: the kernel is a depthwise one (*spatial, in, multiplier). per_channel: the export pins it per output
    channel (2-D convolutions, see pin_int8_scale).
    """

    def __init__(self, settings: ECQxSettings | None = None, depthwise: bool = False, per_channel: bool = False):
        if settings is not None and not isinstance(settings, ECQxSettings):
            raise TypeError(f"ECQxWeightQuantizer takes an ECQxSettings, got {type(settings).__name__}.")
        self.settings = settings or ECQxSettings()
        self.depthwise = bool(depthwise)
        self.per_channel = bool(per_channel)
        # The user's lambda as the train step reads it (LambdaSchedule assigns it). An attribute of the quantizer, not
        # a layer weight nor an entry of build's dict (Keras tracks variables nested in a layer's attributes as its
        # weights): saved files keep their layout, and files saved before it existed still load.
        self.lambda_variable: tf.Variable | None = None

    def build(self, tensor_shape: tf.TensorShape, name: str, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        def state(suffix: str, initial: float) -> tf.Variable:
            return layer.add_weight(
                f"{name}_ecq_{suffix}",
                shape=(),
                initializer=keras.initializers.Constant(initial),
                trainable=False,
            )

        variables = {
            "step": state("step", 1.0),
            "k_min": state("k_min", 0.0),
            "k_max": state("k_max", 0.0),
            "size_factor": state("size_factor", 1.0),
        }
        if self.lambda_variable is None:  # a quantizer shared by several kernels gives them one lambda
            with tf.init_scope():  # out of any graph being traced, in the current distribution strategy's scope
                self.lambda_variable = tf.Variable(
                    self.settings.lambda_, dtype=tf.float32, trainable=False, name=f"{name}_ecq_lambda"
                )
        if self.settings.ecqx:
            variables["relevance"] = layer.add_weight(
                f"{name}_ecqx_relevance", shape=tensor_shape, initializer="zeros", trainable=False
            )
            variables["relevance_budget"] = state("relevance_budget", 0.0)
        return variables

    @staticmethod
    def grid(weights: dict[str, tf.Variable]) -> Grid:
        """The grid stored in the quantizer variables."""
        return Grid(
            step=tf.convert_to_tensor(weights["step"]),
            k_min=tf.cast(weights["k_min"], tf.int32),
            k_max=tf.cast(weights["k_max"], tf.int32),
        )

    def initialize(self, kernel: tf.Tensor, weights: dict[str, tf.Variable], size_factor: float) -> None:
        """Fix the grid from the pretrained kernel and set the layer-size factor d_l (once, before training)."""
        grid = init_grid(kernel, self.settings.bits)
        weights["step"].assign(grid.step)
        weights["k_min"].assign(tf.cast(grid.k_min, tf.float32))
        weights["k_max"].assign(tf.cast(grid.k_max, tf.float32))
        weights["size_factor"].assign(size_factor)

    def codes(self, kernel: tf.Tensor, weights: dict[str, tf.Variable]) -> tf.Tensor:
        """Integer codes k* of the kernel under the current assignment (relevance-corrected with ECQx)."""
        settings, grid = self.settings, self.grid(weights)
        flat = tf.reshape(tf.cast(kernel, tf.float32), [-1])
        terms = (grid.step, grid.k_min, grid.k_max, self.lambda_variable)
        if not settings.ecqx:
            codes = _flat_ecq_codes(flat, *terms, weights["size_factor"])
        else:
            relevance = tf.reshape(weights["relevance"], [-1])
            codes = _flat_ecqx_codes(flat, *terms, relevance, settings.p, settings.q, weights["size_factor"])
        return tf.reshape(codes, kernel.shape if kernel.shape.is_fully_defined() else tf.shape(kernel))

    @staticmethod
    def spend_relevance(weights: dict[str, tf.Variable]) -> tf.Operation:
        """Use up one training step of the relevance budget; fails when RelevanceCallback did not refresh it."""
        budget = weights["relevance_budget"]
        check = tf.debugging.assert_positive(
            budget,
            message=(
                f"ECQx ({budget.name}): no fresh weight relevances. Train with "
                "callbacks=[tf_ecqx.RelevanceCallback(train_data)] so that they are refreshed every few steps."
            ),
        )
        with tf.control_dependencies([check]):
            return budget.assign_sub(1.0)

    @staticmethod
    def check_finite(kernel: tf.Tensor, weights: dict[str, tf.Variable]) -> tf.Tensor:
        """The kernel, after checking that training has not made it NaN or inf (the assignment would fail obscurely)."""
        layer = weights["step"].name.split("/")[0].removeprefix("quant_")  # tfmot names the wrapper quant_<layer>
        return tf.debugging.assert_all_finite(
            kernel,
            f"ECQx ({layer}): the float weights became NaN or inf during training. Usual causes: NaN or inf in the "
            "training data (check np.isfinite(x).all()) or a learning rate too high. Fix the data or lower the "
            "learning rate, and start again from the float model or the last saved QAT model.",
        )

    # Plain TensorFlow ops without Python control flow on tensors: AutoGraph's conversion (tfmot calls quantizers inside
    # autograph-converted code) only cost tracing time, ~1 s per kernel.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, inputs: tf.Tensor, training: bool, weights: dict[str, tf.Variable], **kwargs: Any) -> tf.Tensor:
        grid = self.grid(weights)
        if FROZEN_VALUES in weights:
            w_q = weights[FROZEN_VALUES]
        else:
            inputs = self.check_finite(inputs, weights)
            if training and self.settings.ecqx:
                with tf.control_dependencies([self.spend_relevance(weights)]):
                    inputs = tf.identity(inputs)
            w_q = tf.cast(self.codes(inputs, weights), inputs.dtype) * grid.step
            w_q = straight_through(inputs, w_q, self.settings.gradient)
        if training:  # the pin is an identity on grid values that only the exported (inference) graph needs; its
            return w_q  # per-channel gradient was half of a ResNet50 ECQ step's op time
        return pin_int8_scale(w_q, grid.step, self.per_channel, self.depthwise)

    def get_config(self) -> dict[str, Any]:
        return {"settings": self.settings.get_config(), "depthwise": self.depthwise, "per_channel": self.per_channel}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ECQxWeightQuantizer:
        """The quantizer of a config; tf_ecqx 0.1.0 stored the settings' fields flat, and before per_channel was stored
        the depthwise kernels were the ones pinned per channel."""
        depthwise = config.get("depthwise", False)
        settings = ECQxSettings.from_config(config.get("settings", config))
        return cls(settings, depthwise, config.get("per_channel", depthwise))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ECQxWeightQuantizer)
            and self.settings == other.settings
            and self.depthwise == other.depthwise
            and self.per_channel == other.per_channel
        )

    def __ne__(self, other: object) -> bool:
        return not self == other
