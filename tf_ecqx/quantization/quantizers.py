"""ECQxWeightQuantizer: the tfmot Quantizer that puts a kernel on its entropy-constrained low-bit grid.

Its state lives in non-trainable variables of the wrapping layer (so it saves and restores with the model): the grid
(step, k_min, k_max), fixed after `initialize`, and the layer-size factor d_l; with ECQx also the weight relevances and
a refresh budget that RelevanceCallback sets. The user's lambda is a variable of the quantizer itself, not of the layer
(`lambda_variable`, starting at settings.lambda_): LambdaSchedule assigns it during fit without retracing the train
step, and saved files keep the layout they had before it existed (a loaded model's lambda is settings.lambda_). The
assignment itself is recomputed from the float shadow weights at every call, inside the compiled train step.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import tensorflow as tf
from tensorflow_model_optimization.quantization.keras import quantizers as tfmot_quantizers

from tf_ecqx._keras import keras
from tf_ecqx.ecq import assign
from tf_ecqx.ecq.grid import INT8_NARROW_MAX, Grid, init_grid
from tf_ecqx.quantization.settings import ECQxSettings

# Key of the quantizer state under which `kernels.frozen_kernels` puts each kernel's quantized values while exporting.
FROZEN_VALUES = "frozen_values"


def straight_through(w: tf.Tensor, w_q: tf.Tensor, factor: tf.Tensor, rule: str) -> tf.Tensor:
    """Forward w_q, backward a straight-through gradient to the float shadow weights w.

    reference (EC2T/TTQ): dL/dw = factor * dL/dw_q with factor = reference_gradient_factor(w_q).
    ste: dL/dw = dL/dw_q everywhere.
    """

    @tf.custom_gradient
    def forward(shadow: tf.Tensor) -> tuple[tf.Tensor, Any]:
        def backward(upstream: tf.Tensor) -> tf.Tensor:
            return upstream if rule == "ste" else upstream * factor

        return tf.identity(w_q), backward

    return forward(w)


def reference_gradient_factor(w_q: tf.Tensor) -> tf.Tensor:
    """|c_k*| on nonzero levels and 1 on the zero level, the reference's gradient factor. The magnitude of the
    centroid is used: a signed centroid would flip the gradient of negative weights."""
    return tf.where(tf.equal(w_q, 0.0), 1.0, tf.abs(w_q))


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


# The assignment of a flattened kernel (the codes do not depend on its layout), traced once per kind for all kernels:
# a train step calls one function per kernel instead of holding ~350 ops of its own, which made tracing take a minute
# for models with dozens of kernels. From XLA_MIN_WEIGHTS weights on, XLA compiles it (once per kernel size, 0.5-2 s)
# into a few fused loops over the weights: 4-15x faster than TensorFlow op by op on 0.4-2.4M weights, 2-4x on 37k
# (tools/bench_assignment.py). Smaller kernels gain too little to pay for a compilation per size.
XLA_MIN_WEIGHTS = 16384
_FLAT, _FLOAT, _INT = tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32)


class Assigned(NamedTuple):
    """A flattened kernel's assignment: codes, quantized values, their reference gradient factor (what a forward pass
    needs, from the same pass over the weights) and whether every weight is finite."""

    codes: tf.Tensor
    values: tf.Tensor
    gradient_factor: tf.Tensor
    finite: tf.Tensor


@functools.cache
def compiled_assignment(slots: int, ecqx: bool, xla: bool) -> Any:
    """The assignment of a flattened kernel for grids of `slots` slots -> Assigned; compiled by XLA if `xla`.

    Arguments: w, step, k_min, k_max, lambda, size_factor and, with ECQx, relevance, p, q. XLA's log rounds
    differently from TensorFlow's, so a weight within rounding of a decision boundary may get other codes with and
    without XLA; the quantizer decides by the kernel's size alone, so training, reports, export and the bitstream
    always read one kernel's codes from the same function.
    """
    signature = [_FLAT, _FLOAT, _INT, _INT, _FLOAT, _FLOAT] + ([_FLAT, _FLOAT, _FLOAT] if ecqx else [])

    @tf.function(input_signature=signature, autograph=False, jit_compile=xla)
    def run(w, step, k_min, k_max, lambda_, size_factor, *relevance_terms) -> Assigned:
        grid = Grid(step, k_min, k_max, slots)
        # w * 0 is NaN exactly where w is NaN or inf, and a sum is one cheap reduction (a reduce_all of is_finite
        # was a third of the ECQ assignment's time under XLA). The caller fails on a non-finite kernel; until then
        # its NaNs must not reach the assignment's table lookups (out of range on TensorFlow's CPU kernels).
        finite = tf.math.is_finite(tf.reduce_sum(w * 0.0))
        w = tf.where(tf.math.is_finite(w), w, 0.0)
        if ecqx:
            relevance, p, q = relevance_terms
            codes = assign.ecqx_codes(w, grid, lambda_, relevance, p, size_factor, q)
        else:
            codes = assign.ecq_codes(w, grid, lambda_, size_factor)
        values = tf.cast(codes, tf.float32) * step
        return Assigned(codes, values, reference_gradient_factor(values), finite)

    return run


def _shaped_like(kernel: tf.Tensor, flat: tf.Tensor) -> tf.Tensor:
    return tf.reshape(flat, kernel.shape if kernel.shape.is_fully_defined() else tf.shape(kernel))


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

    def grid(self, weights: dict[str, tf.Variable]) -> Grid:
        """The grid stored in the quantizer variables."""
        return Grid(
            step=tf.convert_to_tensor(weights["step"]),
            k_min=tf.cast(weights["k_min"], tf.int32),
            k_max=tf.cast(weights["k_max"], tf.int32),
            slots=2**self.settings.bits,
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
        return _shaped_like(kernel, self._assign(kernel, weights).codes)

    def quantized_values(self, kernel: tf.Tensor, weights: dict[str, tf.Variable]) -> tf.Tensor:
        """The quantized kernel, codes * step in float32, as the train step's forward pass computes it (without the
        export's int8 pin and the straight-through gradient: for readers such as LRP and the export)."""
        return _shaped_like(kernel, self._assign(kernel, weights).values)

    def _assign(self, kernel: tf.Tensor, weights: dict[str, tf.Variable]) -> Assigned:
        settings, grid = self.settings, self.grid(weights)
        arguments = [tf.reshape(tf.cast(kernel, tf.float32), [-1]), grid.step, grid.k_min, grid.k_max]
        arguments += [self.lambda_variable, weights["size_factor"]]
        if settings.ecqx:
            arguments += [tf.reshape(weights["relevance"], [-1]), settings.p, settings.q]
        xla = (kernel.shape.num_elements() or 0) >= XLA_MIN_WEIGHTS
        return compiled_assignment(grid.slots, settings.ecqx, xla)(*arguments)

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
    def check_finite(finite: tf.Tensor, weights: dict[str, tf.Variable]) -> tf.Operation:
        """Fail if training has made the kernel NaN or inf (the assignment would be meaningless)."""
        layer = weights["step"].name.split("/")[0].removeprefix("quant_")  # tfmot names the wrapper quant_<layer>
        return tf.debugging.Assert(
            finite,
            [
                f"ECQx ({layer}): the float weights became NaN or inf during training. Usual causes: NaN or inf in the "
                "training data (check np.isfinite(x).all()) or a learning rate too high. Fix the data or lower the "
                "learning rate, and start again from the float model or the last saved QAT model."
            ],
        )

    # Plain TensorFlow ops without Python control flow on tensors: AutoGraph's conversion (tfmot calls quantizers inside
    # autograph-converted code) only cost tracing time, ~1 s per kernel.
    @tf.autograph.experimental.do_not_convert
    def __call__(self, inputs: tf.Tensor, training: bool, weights: dict[str, tf.Variable], **kwargs: Any) -> tf.Tensor:
        grid = self.grid(weights)
        if FROZEN_VALUES in weights:
            w_q = weights[FROZEN_VALUES]
        else:
            if training and self.settings.ecqx:
                with tf.control_dependencies([self.spend_relevance(weights)]):
                    inputs = tf.identity(inputs)
            assigned = self._assign(inputs, weights)
            with tf.control_dependencies([self.check_finite(assigned.finite, weights)]):
                values = tf.identity(assigned.values)
            w_q = straight_through(
                inputs,
                tf.cast(_shaped_like(inputs, values), inputs.dtype),
                tf.cast(_shaped_like(inputs, assigned.gradient_factor), inputs.dtype),
                self.settings.gradient,
            )
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
