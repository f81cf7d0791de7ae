"""ECQxWeightQuantizer: the tfmot Quantizer that puts a kernel on its entropy-constrained low-bit grid.

Its state lives in non-trainable variables of the wrapping layer (so it saves and restores with the model): the grid
(step, k_min, k_max), fixed after `initialize`, and the layer-size factor d_l. The assignment itself is recomputed from
the float shadow weights at every call, inside the compiled train step.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf
from tensorflow_model_optimization.quantization.keras import quantizers as tfmot_quantizers

from tf_ecqx._keras import keras
from tf_ecqx.ecq import assign
from tf_ecqx.ecq.grid import INT8_NARROW_MAX, Grid, check_bits, init_grid

GRADIENT_RULES = ("reference", "ste")


def check_lambda(lambda_: float) -> float:
    """Return lambda_ as float if it is finite and >= 0, else raise a ValueError that says what is allowed."""
    if isinstance(lambda_, bool) or not isinstance(lambda_, (int, float)) or not math.isfinite(lambda_) or lambda_ < 0:
        raise ValueError(
            f"lambda_={lambda_!r} is not allowed: the entropy weight must be a finite number >= 0 "
            "(0 = nearest-level rounding, about 0.05-0.3 for sparse models, 1 = almost all zero)."
        )
    return float(lambda_)


def check_gradient(gradient: str) -> str:
    """Return gradient if it names a known straight-through rule."""
    if gradient not in GRADIENT_RULES:
        raise ValueError(f"gradient={gradient!r} is not known; use one of {GRADIENT_RULES}.")
    return gradient


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


class ECQxWeightQuantizer(tfmot_quantizers.Quantizer):
    """Entropy-constrained quantization of one kernel to `bits` bits (ECQX_METHOD.md §2, §3, §5)."""

    def __init__(self, bits: int = 4, lambda_: float = 0.05, gradient: str = "reference"):
        self.bits = check_bits(bits)
        self.lambda_ = check_lambda(lambda_)
        self.gradient = check_gradient(gradient)

    def build(self, tensor_shape: tf.TensorShape, name: str, layer: keras.layers.Layer) -> dict[str, tf.Variable]:
        def state(suffix: str, initial: float) -> tf.Variable:
            return layer.add_weight(
                f"{name}_ecq_{suffix}",
                shape=(),
                initializer=keras.initializers.Constant(initial),
                trainable=False,
            )

        return {
            "step": state("step", 1.0),
            "k_min": state("k_min", 0.0),
            "k_max": state("k_max", 0.0),
            "size_factor": state("size_factor", 1.0),
        }

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
        grid = init_grid(kernel, self.bits)
        weights["step"].assign(grid.step)
        weights["k_min"].assign(tf.cast(grid.k_min, tf.float32))
        weights["k_max"].assign(tf.cast(grid.k_max, tf.float32))
        weights["size_factor"].assign(size_factor)

    def codes(self, kernel: tf.Tensor, weights: dict[str, tf.Variable]) -> tf.Tensor:
        """Integer codes k* of the kernel under the current assignment."""
        return assign.ecq_codes(kernel, self.grid(weights), self.lambda_, weights["size_factor"])

    def __call__(self, inputs: tf.Tensor, training: bool, weights: dict[str, tf.Variable], **kwargs: Any) -> tf.Tensor:
        grid = self.grid(weights)
        w_q = tf.cast(self.codes(inputs, weights), inputs.dtype) * grid.step
        w_q = straight_through(inputs, w_q, self.gradient)
        # Pins the int8 TFLite export to scale = step, so the stored int8 values are exactly the codes.
        limit = INT8_NARROW_MAX * grid.step
        return tf.quantization.fake_quant_with_min_max_vars(w_q, -limit, limit, num_bits=8, narrow_range=True)

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "lambda_": self.lambda_, "gradient": self.gradient}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ECQxWeightQuantizer:
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ECQxWeightQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other: object) -> bool:
        return not self == other
