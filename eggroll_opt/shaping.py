"""Fitness shaping: turn one generation's fitness values into the weights of the update.

Every shaping function has one signature, ``shape(utility) -> weights``: ``utility`` is a
float64 NumPy array with one value per member, oriented so that **higher is better** (the
strategy negates fitness when minimizing), in which ``NaN`` marks a member that failed and must
rank worst and ``±inf`` are legitimate extreme values. The result is a finite float64 array of
the same length; the update moves towards members with large weights.

Rank-based shaping (the default) is invariant to any strictly increasing transform of fitness.
Value-based shapings (``zscore``, ``raw``, ``group_zscore``) cannot use infinite values, so they
first replace ``NaN`` and ``-inf`` by the worst finite value of the generation and ``+inf`` by
the best (by ``-1`` and ``+1`` when no value is finite).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ShapingFunction = Callable[[np.ndarray], np.ndarray]

__all__ = ["average_ranks", "centered_rank", "get_shaping", "group_zscore", "raw", "zscore"]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (no NaN), ties sharing their mean rank.

    The same as ``scipy.stats.rankdata(values)`` (its "average" method), without importing
    ``scipy.stats``, which takes seconds: worker processes and short scripts call this early.

    Example:
        >>> average_ranks(np.array([3.0, 1.0, 3.0, -np.inf]))
        array([3.5, 2. , 3.5, 1. ])
    """
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # first of each tie group
    counts = np.diff(np.r_[starts, ordered.size])
    ranks = np.empty(ordered.size)
    ranks[order] = np.repeat(starts + (counts + 1) / 2, counts)
    return ranks


def centered_rank(utility: np.ndarray) -> np.ndarray:
    """Centered ranks in [-0.5, 0.5]: worst member -0.5, best +0.5, ties share their mean rank.

    ``NaN`` members rank below every other value (including ``-inf``).

    Example:
        >>> centered_rank(np.array([3.0, np.nan, 1.0, np.inf]))
        array([ 0.16666667, -0.5       , -0.16666667,  0.5       ])
    """
    utility = np.asarray(utility, dtype=np.float64)
    size = utility.shape[0]
    if size == 1:
        return np.zeros(1)
    failed = np.isnan(utility)
    ranks = np.empty(size)
    ranks[failed] = (failed.sum() + 1) / 2
    ranks[~failed] = average_ranks(utility[~failed]) + failed.sum()
    return (ranks - 1) / (size - 1) - 0.5


def _finite(utility: np.ndarray) -> np.ndarray:
    """Replace NaN/-inf by the worst finite value and +inf by the best (see module docstring)."""
    utility = np.asarray(utility, dtype=np.float64)
    finite = np.isfinite(utility)
    if finite.all():
        return utility
    worst, best = (utility[finite].min(), utility[finite].max()) if finite.any() else (-1.0, 1.0)
    return np.where(utility == np.inf, best, np.where(finite, utility, worst))


def _standardize(groups: np.ndarray) -> np.ndarray:
    """Z-score each row of ``groups`` (finite values), zeros for a row of equal values.

    Each row is first divided by its largest magnitude, a power of two taken from it, so the
    mean and the standard deviation cannot overflow (``[1e308, -1e308]``) or underflow to zero
    (values near 1e-310): the result depends only on the values' ratios, as a z-score should.
    """
    peak = np.abs(groups).max(axis=1, keepdims=True)
    exponent = np.frexp(np.where(peak > 0, peak, 1.0))[1]
    scaled = np.ldexp(groups, -exponent)  # exact: |scaled| < 1
    centered = scaled - scaled.mean(axis=1, keepdims=True)
    std = centered.std(axis=1, keepdims=True)
    return np.where(std > 0, centered / np.where(std > 0, std, 1.0), 0.0)


def zscore(utility: np.ndarray) -> np.ndarray:
    """``(u - mean) / std`` over the generation (zeros when all values are equal).

    Computed on the values divided by their largest magnitude, so any finite values (from
    1e-308 to 1e308 and mixed signs) give finite weights.

    Example:
        >>> zscore(np.array([1.0, 2.0, 3.0]))
        array([-1.22474487,  0.        ,  1.22474487])
        >>> zscore(np.array([1e308, 1e308, 1e308]))
        array([0., 0., 0.])
    """
    utility = _finite(utility)
    return _standardize(utility.reshape(1, -1)).reshape(-1)


def raw(utility: np.ndarray) -> np.ndarray:
    """The utility itself (non-finite values replaced as described in the module docstring)."""
    return _finite(utility)


def group_zscore(group_size: int) -> ShapingFunction:
    """Z-score fitness within consecutive groups of ``group_size`` members.

    With mirrored sampling and an even ``group_size`` each antithetic pair stays in one group.

    Raises:
        ValueError: if ``group_size`` < 2; the returned function raises if the population size
            is not a multiple of ``group_size``.

    Example:
        >>> group_zscore(2)(np.array([1.0, 3.0, 10.0, 0.0]))
        array([-1.,  1.,  1., -1.])
    """
    if isinstance(group_size, bool) or not isinstance(group_size, int | np.integer):
        raise TypeError(f"`group_size` must be an int, got {group_size!r}.")
    if group_size < 2:
        raise ValueError(f"`group_size` must be at least 2, got {group_size}.")

    def shape(utility: np.ndarray) -> np.ndarray:
        utility = _finite(utility)
        if utility.shape[0] % group_size:
            raise ValueError(
                f"`group_size`={group_size} does not divide the population size {utility.shape[0]}."
            )
        return _standardize(utility.reshape(-1, group_size)).reshape(-1)

    shape.__name__ = f"group_zscore({group_size})"
    return shape


_BY_NAME: dict[str, ShapingFunction] = {
    "centered_rank": centered_rank,
    "zscore": zscore,
    "raw": raw,
}


def get_shaping(fitness_shaping: str | ShapingFunction) -> ShapingFunction:
    """Resolve ``fitness_shaping=`` as given to a strategy: a name or a callable.

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything that is neither a string nor callable.
    """
    if isinstance(fitness_shaping, str):
        if fitness_shaping not in _BY_NAME:
            raise ValueError(
                f"`fitness_shaping` must be one of {sorted(_BY_NAME)} or a callable, "
                f"got {fitness_shaping!r}."
            )
        return _BY_NAME[fitness_shaping]
    if not callable(fitness_shaping):
        raise TypeError(
            f"`fitness_shaping` must be a name or a callable, got {type(fitness_shaping).__name__}."
        )
    return fitness_shaping
