"""Fitness shaping: ranks, z-scores, groups, and the handling of NaN and infinities."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import rankdata

from eggroll_opt import shaping

finite_utilities = arrays(
    np.float64, st.integers(2, 40), elements=st.floats(-1e6, 1e6, allow_nan=False)
)


@given(arrays(np.int64, st.integers(2, 40), elements=st.integers(-(10**6), 10**6)))
def test_centered_rank_is_invariant_to_monotone_transforms(integers):
    utility = integers.astype(np.float64)  # integers keep the transform strictly increasing
    transformed = np.sign(utility) * np.log1p(np.abs(utility)) * 3 + 7
    np.testing.assert_allclose(shaping.centered_rank(transformed), shaping.centered_rank(utility))


@given(finite_utilities)
def test_centered_rank_range_order_and_sum(utility):
    z = shaping.centered_rank(utility)
    assert z.min() >= -0.5 and z.max() <= 0.5
    assert abs(z.sum()) < 1e-9
    order = np.argsort(utility, kind="stable")
    assert np.all(np.diff(z[order]) >= -1e-12)


@given(
    arrays(
        np.float64,
        st.integers(1, 60),
        elements=st.sampled_from([-np.inf, -2.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf]),
    )
    | finite_utilities
)
def test_average_ranks_equal_scipy_rankdata(values):
    np.testing.assert_array_equal(shaping.average_ranks(values), rankdata(values))


def test_centered_rank_ties_share_their_rank():
    np.testing.assert_allclose(shaping.centered_rank(np.ones(6)), np.zeros(6))


def test_nan_ranks_below_minus_inf_and_inf_at_the_top():
    z = shaping.centered_rank(np.array([0.0, np.nan, -np.inf, np.inf, 1.0]))
    assert z[1] == -0.5
    assert z[1] < z[2] < z[0] < z[4] < z[3] == 0.5


def test_value_shapings_replace_non_finite_by_extremes():
    u = np.array([1.0, np.nan, -np.inf, np.inf, 3.0])
    np.testing.assert_allclose(shaping.raw(u), [1.0, 1.0, 1.0, 3.0, 3.0])
    z = shaping.zscore(u)
    assert np.isfinite(z).all() and z[3] == z.max() and z[1] == z.min()
    np.testing.assert_allclose(shaping.raw(np.array([np.nan, np.inf])), [-1.0, 1.0])


def test_zscore_standardises_and_handles_constants():
    z = shaping.zscore(np.array([1.0, 2.0, 4.0, 9.0]))
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_array_equal(shaping.zscore(np.full(4, 2.0)), np.zeros(4))


def test_group_zscore_normalises_each_group():
    z = shaping.group_zscore(3)(np.array([1.0, 2.0, 3.0, 10.0, 10.0, 10.0]))
    np.testing.assert_allclose(z[:3], [-1.2247449, 0.0, 1.2247449], atol=1e-6)
    np.testing.assert_array_equal(z[3:], 0.0)
    with pytest.raises(ValueError, match="`group_size`=4 does not divide"):
        shaping.group_zscore(4)(np.zeros(6))
    with pytest.raises(ValueError, match="`group_size` must be at least 2"):
        shaping.group_zscore(1)
    with pytest.raises(TypeError, match="`group_size` must be an int"):
        shaping.group_zscore(2.0)  # type: ignore[arg-type]


def test_get_shaping_names_and_errors():
    assert shaping.get_shaping("zscore") is shaping.zscore
    assert shaping.get_shaping(np.tanh) is np.tanh
    with pytest.raises(ValueError, match="`fitness_shaping` must be one of"):
        shaping.get_shaping("ranks")
    with pytest.raises(TypeError, match="`fitness_shaping` must be a name or a callable"):
        shaping.get_shaping(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [shaping.zscore, shaping.group_zscore(2)])
def test_value_shapings_of_equal_huge_values_are_zero(shape):
    np.testing.assert_array_equal(shape(np.full(4, 1e308)), np.zeros(4))
    np.testing.assert_array_equal(shape(np.full(4, -1.7e308)), np.zeros(4))


def test_zscore_survives_values_whose_sum_or_square_overflows():
    weights = shaping.zscore(np.array([1e308, -1e308, 0.0, 1.0]))
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights, [np.sqrt(2), -np.sqrt(2), 0, 0], atol=1e-12)
    # Sub-normal spreads do not underflow to an all-zero update either.
    tiny = shaping.zscore(np.array([1e-310, 2e-310, 3e-310]))
    np.testing.assert_allclose(tiny, shaping.zscore(np.array([1.0, 2.0, 3.0])))
    pairs = shaping.group_zscore(2)(np.array([1e308, -1e308, 1.5e308, 1.6e308]))
    np.testing.assert_allclose(pairs, [1, -1, -1, 1])


@given(
    arrays(np.float64, st.integers(2, 30), elements=st.floats(-1e3, 1e3)),
    st.integers(-1000, 1000),
)
def test_zscore_is_invariant_to_power_of_two_scaling(values, exponent):
    scaled = np.ldexp(values, exponent)
    nonzero = np.abs(scaled[values != 0])
    if not np.isfinite(scaled).all() or (nonzero < np.finfo(np.float64).tiny).any():
        return  # overflowed or lost digits as sub-normals: not the same values any more
    np.testing.assert_allclose(shaping.zscore(scaled), shaping.zscore(values), atol=1e-9)
