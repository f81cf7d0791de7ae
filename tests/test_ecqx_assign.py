"""The relevance-corrected assignment of ECQx (docs/method.md §4) and the exact order statistic behind its beta."""

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tf_ecqx.ecq import assign
from tf_ecqx.ecq.grid import init_grid
from tf_ecqx.ecq.order import float_from_key, kth_smallest, sortable_key

kernels = arrays(np.float32, st.integers(2, 400), elements=st.floats(-3, 3, width=32, allow_subnormal=False))
relevance_values = st.floats(0, 1e3, width=32, allow_subnormal=False)


def ecq_and_ecqx(
    w: np.ndarray, relevance: np.ndarray, bits: int, lam: float, p: float, q: float = 0.0
) -> tuple[np.ndarray, ...]:
    grid = init_grid(w, bits)
    ecq = assign.ecq_codes(w, grid, lam).numpy()
    ecqx = assign.ecqx_codes(w, grid, lam, relevance, p, q=q).numpy()
    return ecq, ecqx


@settings(max_examples=60, deadline=None)
@given(
    w=kernels,
    value=st.floats(0, 1e3, width=32, allow_subnormal=False),
    bits=st.integers(2, 8),
    lam=st.floats(0, 2),
    p=st.floats(0, 1),
)
def test_constant_relevance_gives_the_ecq_assignment(w, value, bits, lam, p):
    ecq, ecqx = ecq_and_ecqx(w, np.full_like(w, value), bits, lam, p)
    np.testing.assert_array_equal(ecqx, ecq)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    w=kernels,
    bits=st.integers(2, 8),
    lam=st.floats(0, 2),
    p=st.floats(0, 1),
    q=st.one_of(st.just(0.0), st.floats(0, 1)),
)
def test_sparsity_lies_in_the_interval_around_ecq(data, w, bits, lam, p, q):
    relevance = data.draw(arrays(np.float32, w.shape, elements=relevance_values))
    ecq, ecqx = ecq_and_ecqx(w, relevance, bits, lam, p, q)
    n_ecq, n_ecqx = np.sum(ecq == 0), np.sum(ecqx == 0)
    share = lambda x: np.floor(np.float32(w.size) * np.float32(x))  # noqa: E731
    assert n_ecq - share(p) <= n_ecqx <= n_ecq + share(q)
    changed = ecqx != ecq
    assert np.all((ecqx[changed] == 0) | (ecq[changed] == 0)), "ECQx only moves weights to or from the zero level"


@settings(max_examples=100, deadline=None)
@given(data=st.data(), bits=st.integers(2, 8), lam=st.floats(0, 2), p=st.floats(0, 1))
def test_a_more_relevant_weight_is_never_zeroed_while_an_equal_cost_less_relevant_one_is_kept(data, bits, lam, p):
    values = data.draw(arrays(np.float32, st.integers(1, 150), elements=st.floats(-3, 3, width=32)))
    w = np.concatenate([values, values])  # weight i and i + n have equal costs
    # among weights with evidence: zero relevance means "never seen contributing" and keeps ECQ's decision
    positive = st.floats(2.0**-20, 1e3, width=32, allow_subnormal=False)
    relevance = data.draw(arrays(np.float32, w.shape, elements=positive))
    _, ecqx = ecq_and_ecqx(w, relevance, bits, lam, p)
    first, second = np.split(ecqx == 0, 2)
    r_first, r_second = np.split(relevance, 2)
    assert not np.any(first & ~second & (r_first > r_second))
    assert not np.any(second & ~first & (r_second > r_first))


def reference_interval_codes(w: np.ndarray, relevance: np.ndarray, bits: int, lam: float, p: float) -> np.ndarray:
    """ECQx before the slack q existed (sparsity in [s_ECQ - p, s_ECQ]), from the same building blocks."""
    grid = init_grid(w, bits)
    costs = assign.ecq_assignment(tf.constant(w), grid, lam)
    ecq = assign.choose_codes(costs)
    r = assign.normalized_relevance(relevance)
    t = assign.zeroing_thresholds(costs, r)
    ecq_zeros = tf.reduce_sum(tf.cast(tf.equal(ecq, 0), tf.int32))
    give_back = int(np.floor(np.float32(w.size) * np.float32(p)))
    choice = assign.relevance_beta(t, r, ecq_zeros - give_back, ecq_zeros)
    corrected = tf.where(t <= choice.beta, tf.zeros_like(ecq), costs.nonzero_code)
    informative = tf.reduce_max(r) > tf.reduce_min(r)
    return tf.where(tf.logical_and(informative, choice.feasible), corrected, ecq).numpy()


@settings(max_examples=60, deadline=None)
@given(data=st.data(), w=kernels, bits=st.integers(2, 8), lam=st.floats(0, 2), p=st.floats(0, 1))
def test_no_slack_gives_the_reference_interval_codes(data, w, bits, lam, p):
    relevance = data.draw(arrays(np.float32, w.shape, elements=relevance_values))
    _, ecqx = ecq_and_ecqx(w, relevance, bits, lam, p, q=0.0)
    np.testing.assert_array_equal(ecqx, reference_interval_codes(w, relevance, bits, lam, p))


def test_slack_lets_relevance_prune_more_than_ecq(rng):
    """beta_0 asks for more zeros than ECQ (BENCHMARKS.md): with q > 0 the layer ends sparser, by at most q."""
    w = rng.normal(0, 1, 5000).astype(np.float32)
    relevance = rng.random(5000).astype(np.float32) ** 3
    ecq, reference = ecq_and_ecqx(w, relevance, 4, 0.3, 0.1)
    _, slack = ecq_and_ecqx(w, relevance, 4, 0.3, 0.1, q=0.05)
    n_ecq, n_reference, n_slack = (int(np.sum(c == 0)) for c in (ecq, reference, slack))
    assert n_reference == n_ecq  # the reference interval: beta ends at its top
    assert n_ecq < n_slack <= n_ecq + 250
    pruned = (ecq != 0) & (slack == 0)
    assert relevance[pruned].mean() < relevance[(slack != 0)].mean()


def test_relevance_moves_zeros_from_relevant_to_irrelevant_weights(rng):
    w = rng.normal(0, 1, 5000).astype(np.float32)
    relevance = rng.random(5000).astype(np.float32) ** 3
    ecq, ecqx = ecq_and_ecqx(w, relevance, 4, 0.3, 0.1)
    kept = (ecq == 0) & (ecqx != 0)
    pruned = (ecq != 0) & (ecqx == 0)
    assert kept.sum() > 50 and pruned.sum() > 50
    assert relevance[kept].mean() > 5 * relevance[pruned].mean()


def test_zero_relevance_weights_keep_the_ecq_decision(rng):
    """No evidence (zero relevance) is not evidence of irrelevance: such weights keep ECQ's decision while relevance
    moves zeros among the others (a first-layer weight of an always-black pixel, a unit inactive on the batch)."""
    w = rng.normal(0, 1, 4000).astype(np.float32)
    relevance = rng.random(4000).astype(np.float32) ** 3
    relevance[:1200] = 0.0
    ecq, ecqx = ecq_and_ecqx(w, relevance, 4, 0.1, 0.1)
    np.testing.assert_array_equal(ecqx[:1200] == 0, ecq[:1200] == 0)
    assert np.sum((ecqx[1200:] == 0) != (ecq[1200:] == 0)) > 50


def test_corrected_zero_cost_decides_at_the_chosen_beta(rng):
    """The one-pass decision t(w) <= beta equals the method's rule 2 r^beta C_0 <= C_nz away from exact ties."""
    w = tf.constant(rng.normal(0, 1, 3000).astype(np.float32))
    grid = init_grid(w, 3)
    r = assign.normalized_relevance(rng.random(3000).astype(np.float32) ** 2)
    costs = assign.ecq_assignment(w, grid, 0.4)
    t = assign.zeroing_thresholds(costs, r)
    ecq_zeros = tf.reduce_sum(tf.cast(tf.equal(assign.choose_codes(costs), 0), tf.int32))
    choice = assign.relevance_beta(t, r, ecq_zeros - 300, ecq_zeros)
    assert bool(choice.feasible) and 0 < float(choice.beta) <= 1
    corrected = 2.0 * np.power(r.numpy().astype(np.float64), float(choice.beta)) * costs.zero_cost.numpy()
    method_zero = corrected <= costs.nonzero_cost.numpy()
    clear = np.abs(t.numpy() - float(choice.beta)) > 1e-4 * float(choice.beta)
    np.testing.assert_array_equal((t.numpy() <= float(choice.beta))[clear], method_zero[clear])


def test_ecqx_assignment_runs_inside_a_compiled_function(rng):
    w = rng.normal(0, 1, (64, 32)).astype(np.float32)
    relevance = rng.random((64, 32)).astype(np.float32)
    grid = init_grid(w, 4)
    compiled = tf.function(lambda a, b: assign.ecqx_codes(a, grid, 0.2, b, 0.1))
    np.testing.assert_array_equal(compiled(w, relevance), assign.ecqx_codes(w, grid, 0.2, relevance, 0.1))


floats_with_specials = arrays(
    np.float32,
    st.integers(1, 500),
    elements=st.one_of(
        st.floats(width=32, allow_nan=False),
        st.sampled_from([0.0, -0.0, np.inf, -np.inf, 1.5]),
    ),
)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), x=floats_with_specials)
def test_kth_smallest_equals_sorting(data, x):
    rank = data.draw(st.integers(0, x.size - 1))
    got = kth_smallest(tf.constant(x), rank).numpy()
    want = np.sort(x)[rank]
    assert got == want and np.signbit(got) == np.signbit(want) or (got == 0 and want == 0)


def test_sortable_key_round_trips_and_orders(rng):
    x = np.concatenate([rng.normal(0, 1e20, 100), [np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45]]).astype(np.float32)
    keys = sortable_key(x).numpy()
    np.testing.assert_array_equal(float_from_key(keys).numpy().view(np.int32), x.view(np.int32))
    order = np.argsort(keys.view(np.uint32), kind="stable")
    assert np.all(np.diff(x[order]) >= 0)
