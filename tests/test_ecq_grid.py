import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tf_ecqx.ecq.bits import check_bits
from tf_ecqx.ecq.grid import init_grid, negative_side_dominates, percentile


def test_percentile_matches_numpy_linear_interpolation(rng):
    for size in (1, 2, 1001, 40_000):  # the top-k selection must hold both order statistics at every size
        values = rng.normal(size=size).astype(np.float32)
        for q in (0.0, 50.0, 99.9, 100.0):
            assert float(percentile(values, q)) == pytest.approx(np.percentile(values, q), rel=1e-6)


def test_signed_grid_gives_the_extra_level_to_the_dominant_negative_side():
    w = np.array([-3.0, -2.0, -1.5, 0.5], np.float32)  # negatives win all five votes
    grid = init_grid(w, 2)
    assert bool(negative_side_dominates(w))
    assert (int(grid.k_min), int(grid.k_max)) == (-2, 1)
    assert float(grid.step) == pytest.approx(np.percentile(np.abs(w), 99.9) / 1)


def test_signed_grid_gives_the_extra_level_to_the_dominant_positive_side():
    w = np.array([3.0, 2.0, 1.5, -0.5], np.float32)
    grid = init_grid(w, 4)
    assert (int(grid.k_min), int(grid.k_max)) == (-7, 8)
    assert float(grid.step) == pytest.approx(np.percentile(np.abs(w), 99.9) / 7)


def test_unsigned_grid_when_no_weight_is_negative():
    w = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    grid = init_grid(w, 2)
    assert (int(grid.k_min), int(grid.k_max)) == (0, 3)
    assert float(grid.step) == pytest.approx(np.percentile(w, 99.9) / 3)


def test_eight_bit_levels_are_clamped_to_the_int8_narrow_range(rng):
    grid = init_grid(rng.normal(size=500).astype(np.float32), 8)
    assert int(grid.k_min) >= -127 and int(grid.k_max) <= 127
    assert int(grid.k_max) - int(grid.k_min) + 1 == 255
    unsigned = init_grid(np.abs(rng.normal(size=500)).astype(np.float32), 8)
    assert (int(unsigned.k_min), int(unsigned.k_max)) == (0, 127)


def test_all_zero_kernel_gets_a_usable_step():
    grid = init_grid(np.zeros((3, 3), np.float32), 4)
    assert float(grid.step) > 0


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0, "4", True])
def test_bits_outside_two_to_eight_are_refused(bits):
    with pytest.raises(ValueError, match="bits=.*2 to 8"):
        check_bits(bits)


@settings(max_examples=40, deadline=None)
@given(
    w=arrays(np.float32, st.integers(2, 300), elements=st.floats(-4, 4, width=32)),
    bits=st.integers(2, 8),
)
def test_grid_has_at_most_two_to_the_bits_levels_and_fits_int8(w, bits):
    grid = init_grid(w, bits)
    n_levels = int(grid.k_max) - int(grid.k_min) + 1
    assert n_levels <= 2**bits
    assert -127 <= int(grid.k_min) <= 0 <= int(grid.k_max) <= 127
    assert float(grid.step) > 0
