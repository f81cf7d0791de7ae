"""allocate_rates: each kernel's entropy pressure from how much the loss feels its quantization error, instead of the
reference's layer-size heuristic d_l (issue 17, lever c).

Quantizing a kernel moves the loss by about 1/2 F_l ||W - W_q||^2, F_l being the layer's mean squared loss gradient
(a diagonal empirical Fisher). The assignment's cost (w - c)^2 + lambda_l I per weight is then loss per bit, equal in
every layer, when lambda_l is proportional to 1 / F_l. Since lambda_l = lambda * lambda_max,l * d_l (docs/method.md
§3), d_l becomes kappa / (F_l lambda_max,l). F_l lambda_max,l does not change when a kernel followed by BatchNorm is
scaled, as the heuristic's N_l does not either.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tf_ecqx._keras import keras
from tf_ecqx.datasets import labelled_batches
from tf_ecqx.ecq.assign import layer_lambda
from tf_ecqx.quantization.kernels import QuantizedKernel, frozen_kernels, layer_size_factors, quantized_kernels
from tf_ecqx.quantization.quantizers import FROZEN_VALUES
from tf_ecqx.quantization.settings import check_count

# The largest size factor a kernel gets: the heuristic's, for the largest layer.
MAX_FACTOR = 1.0


@dataclass(frozen=True)
class LayerRate:
    """One kernel's allocation: its loss sensitivity and the size factor d_l it now has in place of the heuristic's."""

    name: str
    n_weights: int
    sensitivity: float  # F_l: mean squared loss gradient per weight, over the batches seen
    size_factor: float  # d_l now used by the assignment
    heuristic_factor: float  # d_l of the layer-size heuristic it replaced


@contextlib.contextmanager
def _state_kept(model: keras.Model) -> Iterator[None]:
    """Restores the model's non-trainable variables on exit."""
    saved = [v.numpy() for v in model.non_trainable_variables]
    try:
        yield
    finally:
        for variable, value in zip(model.non_trainable_variables, saved):
            variable.assign(value)


def loss_sensitivities(qmodel: keras.Model, data: Any, batches: int, batch_size: int) -> np.ndarray:
    """F_l of every quantized kernel: the mean over `batches` batches of the squared gradient of the compiled loss
    with respect to the quantized kernel W_q, in training mode (before the first fit the activation ranges are not
    calibrated yet). What training mode updates (BatchNorm statistics, activation ranges) is restored afterwards."""
    if getattr(qmodel, "compiled_loss", None) is None:
        raise ValueError(
            "allocate_rates: qmodel is not compiled. Compile it with the loss you will train with first (the "
            "sensitivities are gradients of that loss)."
        )
    kernels = list(quantized_kernels(qmodel))
    totals = np.zeros(len(kernels))
    seen = 0
    with frozen_kernels(qmodel), _state_kept(qmodel):
        frozen = [k.state[FROZEN_VALUES] for k in kernels]
        for batch in labelled_batches(data, batch_size, "allocate_rates").take(batches):
            x, y = batch[:2]  # a sample weight, if any, is not needed for a sensitivity
            with tf.GradientTape() as tape:
                tape.watch(frozen)
                loss = qmodel.compiled_loss(y, qmodel(x, training=True))
            gradients = tape.gradient(loss, frozen)
            squares = [float(tf.reduce_mean(tf.square(g))) if g is not None else 0.0 for g in gradients]
            if not all(math.isfinite(s) for s in squares):
                raise ValueError(
                    "allocate_rates: the loss gradients are NaN or inf on this data. Check np.isfinite(x).all() and "
                    "that the labels fit the model's loss."
                )
            totals += squares
            seen += 1
    if seen == 0:
        raise ValueError("allocate_rates: data is empty; it needs at least one (x, y) batch of training data.")
    return totals / seen


def allocate_rates(qmodel: keras.Model, data: Any, batches: int = 32, batch_size: int = 16) -> list[LayerRate]:
    """Give every ECQ kernel the entropy pressure at which a bit saved costs the same loss in every layer.

    Sets each kernel's size factor d_l to min(kappa / (F_l lambda_max,l), 1), F_l from loss_sensitivities on `batches`
    batches of `data` (training (x, y): a tf.data.Dataset of batches, used as it is, or a pair of arrays, cut into
    batches of `batch_size`). Squared batch gradients stand in for per-sample ones (which BatchNorm in training mode
    cannot give); small batches keep them closer. The cap is the heuristic's largest factor: the loss's sensitivity is
    a local measure, and a layer pushed further was zeroed whole (the MLP's middle layer asked for 16x, and the model
    fell to 25 % accuracy at lambda 0.1). kappa keeps the user's lambda on its scale: the parameter-weighted geometric
    mean of lambda_max,l d_l equals the heuristic's. A kernel whose loss does not depend on it (F_l = 0) or that has
    no lambda_max (all its weights on zero) keeps its heuristic factor. Call after quantize_model and compile, before
    fit; the factors are saved with the model.
    """
    check_count("batches", batches)
    check_count("batch_size", batch_size)
    kernels = list(quantized_kernels(qmodel))
    if not kernels:
        raise ValueError("allocate_rates: qmodel has no ECQ kernel; pass the model returned by tf_ecqx.quantize_model.")
    sensitivities = loss_sensitivities(qmodel, data, batches, batch_size)
    sizes = np.array([int(tf.size(k.kernel)) for k in kernels])
    heuristic = np.array(layer_size_factors(kernels))
    pressures = np.array([_lambda_max(k) for k in kernels])
    allocated = (sensitivities > 0) & (pressures > 0) & np.isfinite(pressures)
    factors = heuristic.copy()
    if allocated.any():
        factors[allocated] = equal_slope_factors(
            sensitivities[allocated], pressures[allocated], heuristic[allocated], sizes[allocated]
        )
    for k, factor in zip(kernels, factors):
        k.state["size_factor"].assign(factor)
    return [
        LayerRate(k.name, int(n), float(f), float(d), float(h))
        for k, n, f, d, h in zip(kernels, sizes, sensitivities, factors, heuristic)
    ]


def equal_slope_factors(
    sensitivities: np.ndarray, pressures: np.ndarray, heuristic: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    """d_l = min(kappa / (F_l lambda_max,l), MAX_FACTOR), kappa found by bisection (the mean below only grows with it)
    so that the size-weighted mean of log(lambda_max,l d_l) is the heuristic's."""
    weights = sizes / sizes.sum()
    target = np.sum(weights * np.log(pressures * heuristic))
    uncapped = -np.log(sensitivities * pressures)  # log d_l at kappa = 1

    def log_factors(log_kappa: float) -> np.ndarray:
        return np.minimum(log_kappa + uncapped, np.log(MAX_FACTOR))

    low = target - np.sum(weights * (np.log(pressures) + uncapped))  # the uncapped solution: the mean is <= target
    high = np.log(MAX_FACTOR) - uncapped.min()  # every layer capped: the mean is >= target (heuristic <= MAX_FACTOR)
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (
            (middle, high) if np.sum(weights * (np.log(pressures) + log_factors(middle))) < target else (low, middle)
        )
    return np.exp(log_factors(high))


def _lambda_max(kernel: QuantizedKernel) -> float:
    """lambda_max,l of the kernel's current weights (docs/method.md §3)."""
    return float(layer_lambda(kernel.kernel, kernel.quantizer.grid(kernel.state), 1.0, 1.0))
