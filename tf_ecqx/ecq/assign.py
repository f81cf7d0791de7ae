"""Entropy-constrained assignment of weights to grid levels (docs/method.md §3).

Pure TensorFlow, no Keras, no state: every function maps tensors to tensors and runs inside the compiled train step.
Every shape is static (the grid's levels sit in grid.slots = 2^bits slots, unused slots masked), so XLA compiles the
whole assignment of a kernel into a few fused loops over its weights (quantizers.py). The argmin over levels is exact
but never materialises an (N weights x L levels) cost matrix: the cost of a nonzero level,
(w - c_k)^2 + lambda * I_k = w^2 + (-2 c_k) w + (c_k^2 + lambda * I_k), is a line in w, so the cheapest nonzero level
is read off the lower envelope of the lines (a slots x slots computation) by a search per weight.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from tf_ecqx.ecq.grid import Grid
from tf_ecqx.ecq.order import kth_smallest

# Up to this many slots the winning slot is counted by comparing every weight with every slot's end; above, by
# binary search (fewer comparisons, each a table lookup): measured under XLA on 0.4M weights, 0.7 vs 1.2 ms at 16.
COMPARE_ALL_SLOTS = 16
ZERO_PRIOR = 0.5
SIZE_DECAY_OFFSET = 0.05
RELEVANCE_EPSILON = 1e-12
# Information gaps below this (bits) are float32 rounding of equal probabilities: no lambda flips such a weight.
MIN_INFO_GAP = 1e-5


class Assignment(NamedTuple):
    """Per-weight costs of the zero level and of the cheapest nonzero level, and that level's code."""

    zero_cost: tf.Tensor
    nonzero_cost: tf.Tensor
    nonzero_code: tf.Tensor


def level_codes(grid: Grid) -> tf.Tensor:
    """The integer code of every level slot, ascending from k_min; slots past k_max are no levels (probability 0)."""
    return grid.k_min + tf.range(grid.slots)


def nearest_codes(w: tf.Tensor, grid: Grid) -> tf.Tensor:
    """Preliminary assignment k0(w) = argmin_k (w - k * step)^2, as int32 codes."""
    codes = tf.round(w / grid.step)
    return tf.cast(tf.clip_by_value(codes, tf.cast(grid.k_min, w.dtype), tf.cast(grid.k_max, w.dtype)), tf.int32)


def zero_biased_pmf(codes: tf.Tensor, grid: Grid) -> tf.Tensor:
    """Cluster probabilities per level slot, with P_0 raised to 1/2 when below (others scaled to sum 1/2).

    The bias makes zero the cheapest cluster in information content, which is what drives sparsity. Slots past
    k_max have probability 0.
    """
    flat = tf.reshape(codes - grid.k_min, [-1])
    counts = tf.math.unsorted_segment_sum(tf.ones_like(flat, tf.float32), flat, grid.slots)
    pmf = counts / tf.cast(tf.maximum(tf.size(flat), 1), tf.float32)
    is_zero = tf.equal(level_codes(grid), 0)
    p_zero = tf.reduce_sum(tf.where(is_zero, pmf, 0.0))
    others = 1.0 - p_zero
    scale = tf.where(p_zero < ZERO_PRIOR, tf.math.divide_no_nan(ZERO_PRIOR, others), 1.0)
    return tf.where(is_zero, tf.maximum(p_zero, ZERO_PRIOR), pmf * scale)


def information_content(pmf: tf.Tensor) -> tf.Tensor:
    """I_k = -log2 P_k in bits; an empty cluster gets +inf and is never chosen."""
    return tf.where(pmf > 0, -tf.math.log(tf.where(pmf > 0, pmf, 1.0)) / tf.math.log(2.0), float("inf"))


def size_factor(n_weights: int, n_weights_max: int) -> float:
    """Layer-size decay d_l = (N_l / N_max + 0.05) / 1.05: bigger layers get more entropy pressure."""
    return (n_weights / n_weights_max + SIZE_DECAY_OFFSET) / (1.0 + SIZE_DECAY_OFFSET)


def lambda_max(w: tf.Tensor, info: tf.Tensor, grid: Grid) -> tf.Tensor:
    """The lambda at which the most negative and the most positive weight would just flip to zero.

    lambda_n = (w_min^2 - (w_min - c_a)^2) / (I_a - I_0) with c_a the nearest level of w_min, lambda_p likewise for
    w_max; the result is their maximum. A side whose extreme weight already rounds to zero, or whose level is as
    probable as zero (I_a = I_0 up to float32 rounding: no lambda flips it), contributes 0.
    (The reference code misplaces the squares; this is the formula that follows from the cost.)
    """
    flat_w = tf.reshape(w, [-1])
    extremes = tf.stack([tf.reduce_min(flat_w), tf.reduce_max(flat_w)])
    codes = nearest_codes(extremes, grid)
    gain = tf.square(extremes) - tf.square(extremes - tf.cast(codes, tf.float32) * grid.step)
    info_gap = tf.gather(info, codes - grid.k_min) - tf.gather(info, -grid.k_min)
    usable = tf.not_equal(codes, 0) & tf.math.is_finite(info_gap) & (info_gap > MIN_INFO_GAP)
    return tf.reduce_max(tf.where(usable, tf.math.divide_no_nan(gain, tf.where(usable, info_gap, 1.0)), 0.0))


def _interval_ends(codes: tf.Tensor, slope: tf.Tensor, offset: tf.Tensor, usable: tf.Tensor) -> tf.Tensor:
    """Per slot, the upper end of the w where its line slope * w + offset is the lowest of the usable ones.

    Non-decreasing along the slots, so that the winner of w is the number of ends <= w: a slot that never wins (off
    the lower envelope, or not usable) gets an empty interval, its end equal to the previous slot's. Line k beats a
    line j with c_j < c_k for w >= x_jk and one with c_j > c_k for w <= x_jk, where x_jk is their crossing.
    """
    pair_usable = tf.logical_and(usable[:, None], usable[None, :])
    finite_offset = tf.where(usable, offset, 0.0)
    run = slope[None, :] - slope[:, None]
    crossing = (finite_offset[:, None] - finite_offset[None, :]) / tf.where(tf.equal(run, 0.0), 1.0, run)
    j_below_k = codes[:, None] < codes[None, :]
    lower = tf.reduce_max(tf.where(tf.logical_and(pair_usable, j_below_k), crossing, -float("inf")), axis=0)
    j_above_k = codes[:, None] > codes[None, :]
    upper = tf.reduce_min(tf.where(tf.logical_and(pair_usable, j_above_k), crossing, float("inf")), axis=0)
    ends = tf.where(tf.logical_and(usable, lower < upper), upper, -float("inf"))
    j_at_most_k = j_below_k | tf.eye(codes.shape[0], dtype=tf.bool)
    return tf.reduce_max(tf.where(j_at_most_k, ends[:, None], -float("inf")), axis=0)


def _winning_slot(w: tf.Tensor, ends: tf.Tensor) -> tf.Tensor:
    """Number of the first slots - 1 `ends` <= w for each weight (the last slot's end is +inf or empty), compared
    all at once for few slots, else by a branchless binary search; XLA fuses either into one loop over the weights."""
    slots = ends.shape[0]
    if slots <= COMPARE_ALL_SLOTS:
        return tf.reduce_sum(tf.cast(w[..., None] >= ends[:-1], tf.int32), axis=-1)
    slot = tf.zeros_like(w, tf.int32)
    half = slots // 2
    while half >= 1:
        slot += tf.where(tf.gather(ends, slot + half - 1) <= w, half, 0)
        half //= 2
    return slot


def assignment_costs(w: tf.Tensor, grid: Grid, info: tf.Tensor, lam: tf.Tensor) -> Assignment:
    """Cost of the zero level and of the cheapest nonzero level for every weight (same shape as w).

    C_k(w) = (w - c_k)^2 + lam * I_k. Empty clusters (I = inf) are never chosen; when no nonzero cluster is usable the
    nonzero cost is +inf and its code 0.
    """
    codes = level_codes(grid)
    levels = tf.cast(codes, tf.float32) * grid.step
    finite = tf.math.is_finite(info)
    usable = tf.logical_and(tf.not_equal(codes, 0), finite)
    penalty = tf.where(finite, lam * tf.where(finite, info, 0.0), float("inf"))
    ends = _interval_ends(codes, -2.0 * levels, tf.square(levels) + penalty, usable)  # the common w^2 is left out

    slot = _winning_slot(w, ends)
    nonzero_code = tf.where(tf.reduce_any(usable), tf.gather(codes, slot), 0)
    chosen_penalty = tf.gather(penalty, slot)
    chosen_level = tf.cast(nonzero_code, tf.float32) * grid.step
    nonzero_cost = tf.where(tf.equal(nonzero_code, 0), float("inf"), tf.square(w - chosen_level) + chosen_penalty)
    zero_cost = tf.square(w) + tf.gather(penalty, -grid.k_min)
    return Assignment(zero_cost=zero_cost, nonzero_cost=nonzero_cost, nonzero_code=nonzero_code)


def choose_codes(assignment: Assignment, zero_cost: tf.Tensor | None = None) -> tf.Tensor:
    """Codes of the cheaper option per weight; zero wins ties. `zero_cost` overrides the assignment's (ECQx)."""
    zero = assignment.zero_cost if zero_cost is None else zero_cost
    return tf.where(zero <= assignment.nonzero_cost, tf.zeros_like(assignment.nonzero_code), assignment.nonzero_code)


def ecq_codes(
    w: tf.Tensor,
    grid: Grid,
    lam: float | tf.Tensor,
    layer_size_factor: float | tf.Tensor = 1.0,
) -> tf.Tensor:
    """Entropy-constrained codes of kernel w: lam is the user's lambda (0 = nearest level, larger = sparser)."""
    w = tf.convert_to_tensor(w, tf.float32)
    return choose_codes(ecq_assignment(w, grid, lam, layer_size_factor))


def ecq_assignment(
    w: tf.Tensor,
    grid: Grid,
    lam: float | tf.Tensor,
    layer_size_factor: float | tf.Tensor = 1.0,
) -> Assignment:
    """The full ECQ pipeline up to the costs: preliminary codes, zero-biased PMF, layer lambda, costs."""
    info, layer_lam = _layer_terms(w, grid, lam, layer_size_factor)
    return assignment_costs(w, grid, info, layer_lam)


def _layer_terms(
    w: tf.Tensor, grid: Grid, lam: float | tf.Tensor, layer_size_factor: float | tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Information content per level and the layer's lambda (user lambda * lambda_max * d_l)."""
    preliminary = nearest_codes(w, grid)
    info = information_content(zero_biased_pmf(preliminary, grid))
    return info, tf.cast(lam, tf.float32) * lambda_max(w, info, grid) * layer_size_factor


def layer_lambda(
    w: tf.Tensor, grid: Grid, lam: float | tf.Tensor, layer_size_factor: float | tf.Tensor = 1.0
) -> tf.Tensor:
    """The lambda the assignment of this kernel uses: the user's lambda scaled by lambda_max and the size factor."""
    return _layer_terms(tf.convert_to_tensor(w, tf.float32), grid, lam, layer_size_factor)[1]


def normalized_relevance(relevance: tf.Tensor) -> tf.Tensor:
    """r = |R| / (max|R| + 1e-12), in [0, 1]."""
    magnitude = tf.abs(tf.convert_to_tensor(relevance, tf.float32))
    return magnitude / (tf.reduce_max(magnitude) + RELEVANCE_EPSILON)


def zeroing_thresholds(assignment: Assignment, r: tf.Tensor) -> tf.Tensor:
    """t(w): the weight goes to zero under the corrected cost 2 r^beta C_0 <= C_nz exactly when beta >= t(w).

    For 0 < r < 1, t = ln(C_nz / (2 C_0)) / ln r. r = 1 makes the factor 2 for every beta (t = -inf or +inf). A weight
    with r = 0 has no evidence at all (no contribution on any batch seen, e.g. its unit was never active): it keeps
    ECQ's decision (t = -inf if ECQ zeroes it, else +inf) instead of the cost's "zero for every beta", which would prune
    whole units that were merely inactive on the first batches.
    """
    log_ratio = tf.math.log(assignment.nonzero_cost) - tf.math.log(2.0 * assignment.zero_cost)
    interior = tf.logical_and(r > 0.0, r < 1.0)
    t = log_ratio / tf.math.log(tf.where(interior, r, 0.5))
    doubled = tf.where(log_ratio >= 0.0, -float("inf"), float("inf"))
    unseen = tf.where(assignment.zero_cost <= assignment.nonzero_cost, -float("inf"), float("inf"))
    return tf.where(interior, t, tf.where(r <= 0.0, unseen, doubled))


class RelevanceBeta(NamedTuple):
    """The exponent beta of the zero-cost correction, and whether it meets the sparsity interval (docs/method.md §4)."""

    beta: tf.Tensor
    feasible: tf.Tensor


def relevance_beta(t: tf.Tensor, r: tf.Tensor, fewest: tf.Tensor, most: tf.Tensor) -> RelevanceBeta:
    """beta = clip(min(beta_0, 1), beta_lo, beta_hi) with beta_0 = ln 0.5 / ln(mean r), in one pass.

    The zero count at beta is #{t <= beta} and must lie in [fewest, most]. Too few zeros at min(beta_0, 1): beta_lo,
    the fewest-th smallest t; too many: beta_hi, just below the (most + 1)-th smallest. Infeasible (no beta > 0 in the
    interval) only when many weights share one t.
    """
    n = tf.size(t)
    start = tf.minimum(tf.math.log(0.5) / tf.math.log(tf.reduce_mean(r)), 1.0)
    zeros_at_start = tf.reduce_sum(tf.cast(t <= start, tf.int32))
    too_few = zeros_at_start < fewest
    bound = kth_smallest(t, tf.clip_by_value(tf.where(too_few, fewest - 1, most), 0, n - 1))
    too_many_beta = tf.where(zeros_at_start > most, tf.math.nextafter(bound, -float("inf")), start)
    beta = tf.where(too_few, bound, too_many_beta)
    zeros = tf.reduce_sum(tf.cast(t <= beta, tf.int32))
    feasible = tf.logical_and(tf.logical_and(zeros >= fewest, zeros <= most), beta > 0.0)
    return RelevanceBeta(beta=beta, feasible=feasible)


def _zero_counts(n: tf.Tensor, share: float | tf.Tensor) -> tf.Tensor:
    """floor(n * share): a share of the sparsity as a number of weights."""
    return tf.cast(tf.floor(tf.cast(n, tf.float32) * tf.cast(share, tf.float32)), tf.int32)


def ecqx_codes(
    w: tf.Tensor,
    grid: Grid,
    lam: float | tf.Tensor,
    relevance: tf.Tensor,
    p: float | tf.Tensor = 0.1,
    layer_size_factor: float | tf.Tensor = 1.0,
    q: float | tf.Tensor = 0.0,
) -> tf.Tensor:
    """Relevance-corrected codes (docs/method.md §4): zero cost C_0 * 2 r^beta, sparsity within [s_ECQ - p, s_ECQ + q].

    q = 0 is the reference's interval; q > 0 lets relevance make the layer sparser than ECQ (ours, issue 17).
    Weights with zero relevance keep ECQ's decision (see zeroing_thresholds). Where the relevance cannot rank the
    weights (all r equal, e.g. all zero before the first refresh) or no beta meets the interval, the ECQ codes are
    returned: uninformative relevance must not change the assignment.
    """
    w = tf.convert_to_tensor(w, tf.float32)
    assignment = ecq_assignment(w, grid, lam, layer_size_factor)
    ecq = choose_codes(assignment)
    r = normalized_relevance(relevance)
    t = zeroing_thresholds(assignment, r)
    ecq_zeros = tf.reduce_sum(tf.cast(tf.equal(ecq, 0), tf.int32))
    give_back, add = _zero_counts(tf.size(w), p), _zero_counts(tf.size(w), q)
    choice = relevance_beta(t, r, ecq_zeros - give_back, tf.minimum(ecq_zeros + add, tf.size(w)))
    informative = tf.reduce_max(r) > tf.reduce_min(r)
    corrected = tf.where(t <= choice.beta, tf.zeros_like(ecq), assignment.nonzero_code)
    return tf.where(tf.logical_and(informative, choice.feasible), corrected, ecq)


def sparsity(codes: tf.Tensor) -> tf.Tensor:
    """Fraction of zero codes."""
    return tf.reduce_mean(tf.cast(tf.equal(codes, 0), tf.float32))
