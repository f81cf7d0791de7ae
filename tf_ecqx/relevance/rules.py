"""LRP rules for linear layers (Dense and the convolutions): small hashable objects, zennit/iNNvestigate style.

A rule maps the relevance R at a linear layer's output (the pre-activation z; activations pass relevance unchanged) to
its input with the gradient trick on a rule-modified forward z'

    R_in = a ⊙ ∂/∂a [ Σ z'(a) ⊙ stop_gradient(R / stab(z')) ].

The definitions are those of iNNvestigate 2.1.2 (`relevance_rule.py`), stabilisers included: ε·sign(z) with sign(0) = +1
for the ε rule, and "add 1e-7 where the denominator is exactly 0" (`safe_divide`) for all other rules.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import tensorflow as tf

SAFE_DIVIDE_EPSILON = 1e-7  # keras.backend.epsilon(): iNNvestigate's safe_divide factor


class Linear(NamedTuple):
    """A linear layer's pre-activation z = conv(x, kernel) + bias, in the pieces the rules modify.

    conv is linear in both arguments (matmul, convolution, depthwise convolution); bias is None or broadcasts to z.
    """

    conv: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
    kernel: tf.Tensor
    bias: tf.Tensor | None

    def z(self, x: tf.Tensor) -> tf.Tensor:
        z = self.conv(x, self.kernel)
        return z if self.bias is None else z + self.bias


def safe_divide(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """a / b, with 1e-7 added where b == 0 (iNNvestigate's `safe_divide`)."""
    return a / (b + SAFE_DIVIDE_EPSILON * tf.cast(tf.equal(b, 0.0), b.dtype))


def stabilize(z: tf.Tensor, epsilon: float) -> tf.Tensor:
    """z + ε·sign(z) with sign(0) = +1, so the result is never 0."""
    return z + epsilon * tf.where(z >= 0.0, 1.0, -1.0)


def vjp(fn: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor, upstream: tf.Tensor) -> tf.Tensor:
    """∂/∂x [Σ fn(x) ⊙ upstream]: the vector-Jacobian product that carries relevance back through a linear map."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return tape.gradient(y, x, output_gradients=upstream)


class Rule(abc.ABC):
    """Relevance at a linear layer's input from the relevance r at its output; a is the layer input."""

    @abc.abstractmethod
    def __call__(self, layer: Linear, a: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        """Relevance shaped like a."""


@dataclass(frozen=True)
class Epsilon(Rule):
    """ε rule: R_in = a ⊙ Wᵀ (R / (z + ε·sign z)), z with the bias (iNNvestigate's `EpsilonRule`, bias=True)."""

    epsilon: float = 1e-6
    bias: bool = True

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ValueError(f"Epsilon(epsilon={self.epsilon!r}): epsilon must be > 0.")

    def __call__(self, layer: Linear, a: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        bias = layer.bias if self.bias else None
        with tf.GradientTape() as tape:
            tape.watch(a)
            z = Linear(layer.conv, layer.kernel, bias).z(a)
        return a * tape.gradient(z, a, output_gradients=r / stabilize(z, self.epsilon))


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """αβ rule (iNNvestigate's `AlphaBetaRule`): R_in = α·R_activating − β·R_inhibiting, α − β = 1, α ≥ 1, β ≥ 0.

    Activating contributions are a⁺W⁺ and a⁻W⁻, inhibiting ones a⁺W⁻ and a⁻W⁺; each group shares R in proportion to its
    own sum. With bias=True iNNvestigate adds b⁺ + b⁻ = b, i.e. the whole bias, to both denominators (zennit's AlphaBeta
    would add b⁺ to the first and b⁻ to the second); bias=False leaves it out.
    """

    alpha: float = 2.0
    beta: float = 1.0
    bias: bool = True

    def __post_init__(self) -> None:
        if self.alpha < 1 or self.beta < 0 or self.alpha - self.beta != 1:
            raise ValueError(
                f"AlphaBeta(alpha={self.alpha!r}, beta={self.beta!r}): need alpha - beta = 1, alpha >= 1, beta >= 0."
            )

    def __call__(self, layer: Linear, a: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        a_pos, a_neg = tf.maximum(a, 0.0), tf.minimum(a, 0.0)
        w_pos, w_neg = tf.maximum(layer.kernel, 0.0), tf.minimum(layer.kernel, 0.0)
        bias = layer.bias if self.bias else None
        relevance = self._share(layer.conv, [(a_pos, w_pos), (a_neg, w_neg)], bias, r)
        if self.beta:
            inhibiting = self._share(layer.conv, [(a_pos, w_neg), (a_neg, w_pos)], bias, r)
            relevance = self.alpha * relevance - self.beta * inhibiting
        return relevance

    @staticmethod
    def _share(
        conv: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
        pairs: list[tuple[tf.Tensor, tf.Tensor]],
        bias: tf.Tensor | None,
        r: tf.Tensor,
    ) -> tf.Tensor:
        """Σ_pairs x ⊙ Wᵀ s with s = R / (Σ_pairs conv(x, W) + bias): R split in proportion to these contributions."""
        z = tf.add_n([conv(x, w) for x, w in pairs])
        s = safe_divide(r, z if bias is None else z + bias)
        return tf.add_n([x * vjp(lambda v, w=w: conv(v, w), x, s) for x, w in pairs])


class ZPlus(AlphaBeta):
    """z⁺ rule = αβ with α=1, β=0 and no bias (iNNvestigate's `ZPlusRule`); for inputs a ≥ 0 the classic z⁺."""

    def __init__(self) -> None:
        super().__init__(alpha=1.0, beta=0.0, bias=False)


@dataclass(frozen=True)
class _OnesInput(Rule):
    """Rules that ignore the input: z' = conv(1, f(W)) without bias, R_in = f(W)ᵀ (R / z') (iNNvestigate's WSquare)."""

    @abc.abstractmethod
    def modified_kernel(self, kernel: tf.Tensor) -> tf.Tensor:
        """f(W)."""

    def __call__(self, layer: Linear, a: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        kernel = self.modified_kernel(layer.kernel)
        z = layer.conv(tf.ones_like(a), kernel)
        return vjp(lambda x: layer.conv(x, kernel), a, safe_divide(r, z))


@dataclass(frozen=True)
class WSquare(_OnesInput):
    """w² rule: R shared in proportion to the squared weights, independent of the input."""

    def modified_kernel(self, kernel: tf.Tensor) -> tf.Tensor:
        return tf.square(kernel)


@dataclass(frozen=True)
class Flat(_OnesInput):
    """Flat rule: R shared uniformly over each output's receptive field (all weights 1), independent of the input."""

    def modified_kernel(self, kernel: tf.Tensor) -> tf.Tensor:
        return tf.ones_like(kernel)


@dataclass(frozen=True)
class Pass(Rule):
    """Pass-through: R_in = R, for layers whose output has the input's shape (BatchNorm, activations)."""

    def __call__(self, layer: Linear | None, a: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
        return r
