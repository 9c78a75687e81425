"""Step-size adaptation: σ as learned state, per leaf, with row × column scales for matrices.

A step-size adaptation is an ``init``/``update`` pair, like an optimizer (:mod:`.optim`):

* ``init(leaves, sigma, rank) -> state`` gives every searched leaf its starting σ;
* ``update(state, noise, weights, rank) -> state`` learns from one generation: ``noise`` holds
  the *unit* noise of every searched leaf (``(A, B)`` for a low-rank leaf, ``eps`` for a full
  one, draws on the leading axis) and ``weights`` the selection weight of every draw (the
  shaped utilities of its members, normalised to ``Σ|u| = 1`` and summed over a mirrored pair).
  It returns a new state and never modifies the one it was given.

The state is a dict of host float64 arrays: ``"log_sigma"`` (one 0-d array per leaf),
``"log_sigma0"`` (the starting values, for the bounds and for restarts), and optionally
``"log_rows"``/``"log_columns"`` (per low-rank leaf, shapes (m,) and (n,)) and
``"log_entries"`` (per full leaf, the leaf's shape). Member ``i``'s perturbation is then

* low-rank: ``s_i σ / √r · diag(ρ) A_k B_kᵀ diag(γ)`` with ``ρ = exp(log_rows)``,
  ``γ = exp(log_columns)`` — still rank ``r``, so populations keep their factors;
* full: ``s_i σ · D ∘ ε_k`` with ``D = exp(log_entries)``.

The rules (derivations in ``docs/conventions.md``): with whitened noise ``Ê`` (before σ and the
scales), the natural-gradient step of ``log σ`` is driven by ``t = ‖Ê‖²/d - 1``, of a row scale
by that row's mean square minus 1, of an entry scale by ``ε² - 1``. Each statistic is divided
by its standard deviation under the noise model (for rank-``r`` noise ``Var(‖Ê‖²/d)`` is
``2/(rm) + 2/(rn) + 2(r+1)/(rd)``, not the dense ``2/d``), so one rate works for every shape:

    log σ ← log σ + c_σ · Σ_k w_k t_k / sd(t)

Every statistic of a low-rank leaf comes from the ``r × r`` Gram matrices ``AᵀA`` and ``BᵀB``
of each draw: ``O(K·r²·(m+n))`` work, never a dense ``m × n`` member.

Example:
    >>> import numpy as np, eggroll_opt as eo
    >>> es = eo.Eggroll({"w": np.zeros((10, 10))}, popsize=18, sigma=1.0, seed=0,
    ...                 sigma_adaptation="auto", backend="numpy")
    >>> for _ in range(300):
    ...     pop = es.ask()
    ...     _ = es.tell([float(np.sum((m.params()["w"] - 1) ** 2)) for m in pop])
    >>> bool(es.sigmas["w"] < 0.2)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ._backend import namespace_of, to_numpy
from ._population import LeafSpec

__all__ = [
    "SIGMA_ADAPTATIONS",
    "SigmaAdaptation",
    "get_sigma_adaptation",
    "leaf_scales",
    "leaf_sigma",
    "leaf_sigmas",
    "lowrank_variance",
    "noise_scales",
]

State = dict[str, Any]

DEFAULT_BOUNDS = (1e-10, 1e4)
"""σ may move between these multiples of its starting value."""
SCALE_LIMIT = 1e4
"""Row, column and entry scales stay within ``[1/SCALE_LIMIT, SCALE_LIMIT]``."""


class SigmaAdaptation(NamedTuple):
    """A step-size adaptation: ``init(leaves, sigma, rank)``, ``update(state, noise, w, rank)``."""

    init: Callable[[Mapping[str, LeafSpec], float, int], State]
    update: Callable[[State, Mapping[str, Any], np.ndarray, int], State]


def lowrank_variance(rows: int, columns: int, rank: int) -> float:
    """``Var(‖Ê‖²/d)`` for ``Ê = A Bᵀ/√r`` with standard normal ``A`` (m×r), ``B`` (n×r).

    Dense noise of the same size has ``2/d``; rank-1 noise ``2/m + 2/n + 4/d``.

    Example:
        >>> round(lowrank_variance(32, 32, 1), 6), round(2 / 1024, 6)
        (0.128906, 0.001953)
    """
    size = rows * columns
    return 2 / (rank * rows) + 2 / (rank * columns) + 2 * (rank + 1) / (rank * size)


def _row_variance(columns: int, rank: int) -> float:
    """``Var`` of one row's mean square ``‖Ê_a‖²/n`` for rank-``r`` noise."""
    return 2 / rank + 2 * (rank + 2) / (rank * columns)


def _check_bounds(bounds: Any) -> tuple[float, float]:
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"`sigma_bounds` must be a pair (low, high), got {bounds!r}.") from None
    if not (0 < low <= 1 <= high < math.inf):
        raise ValueError(
            "`sigma_bounds` are multiples of the starting σ and must satisfy "
            f"0 < low <= 1 <= high < inf, got {bounds!r}."
        )
    return low, high


def _check_rate(name: str, rate: Any) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < math.inf:
        raise ValueError(f"`{name}` must be a positive number or None, got {rate!r}.")
    return float(rate)


def default_sigma_rate(size: int) -> float:
    """The rate ``c_σ`` of a leaf's log σ: ``0.6 / d^0.6`` (tuned on spheres, d = 100 and 1024)."""
    return 0.6 / size**0.6


def default_scale_rate(size: int) -> float:
    """The rate of row, column and entry log-scales: SNES's ``(3 + ln d) / (5 √(2d))``."""
    return (3 + math.log(size)) / (5 * math.sqrt(2 * size))


def _init(leaves: Mapping[str, LeafSpec], sigma: float, scales: bool) -> State:
    log_sigma = {
        p: np.array(math.log(sigma)) for p, leaf in leaves.items() if leaf.kind != "frozen"
    }
    state: State = {
        "log_sigma": log_sigma,
        "log_sigma0": {p: v.copy() for p, v in log_sigma.items()},
    }
    if scales:
        state["log_rows"], state["log_columns"], state["log_entries"] = {}, {}, {}
        for path, leaf in leaves.items():
            if leaf.kind == "lowrank":
                rows, columns = leaf.matrix_shape
                state["log_rows"][path] = np.zeros(rows)
                state["log_columns"][path] = np.zeros(columns)
            elif leaf.kind == "full" and math.prod(leaf.shape) > 1:
                state["log_entries"][path] = np.zeros(leaf.shape)
    return state


def _lowrank_statistics(noise: Any, weights: Any, scales: bool) -> tuple[float, Any, Any]:
    """Σ_k w_k t_k for σ, and (if ``scales``) the weighted row and column statistics."""
    left, right = noise  # (K, m, r), (K, n, r)
    xp = namespace_of(left)
    rows, rank = left.shape[1:]
    columns = right.shape[1]
    w = xp.asarray(weights, dtype=xp.float64)
    left64, right64 = left.astype(xp.float64), right.astype(xp.float64)
    gram_left = left64.transpose(0, 2, 1) @ left64  # (K, r, r)
    gram_right = right64.transpose(0, 2, 1) @ right64
    total = (gram_left * gram_right).sum(axis=(1, 2)) / (rank * rows * columns) - 1.0  # ‖Ê‖²/d - 1
    weighted_total = float(to_numpy(w @ total))
    if not scales:
        return weighted_total, None, None
    row_squares = ((left64 @ gram_right) * left64).sum(axis=2) / (rank * columns)  # (K, m)
    column_squares = ((right64 @ gram_left) * right64).sum(axis=2) / (rank * rows)  # (K, n)
    total_weight = float(to_numpy(w.sum()))
    row_stat = np.asarray(to_numpy(w @ row_squares)) - total_weight
    column_stat = np.asarray(to_numpy(w @ column_squares)) - total_weight
    return weighted_total, row_stat, column_stat


def _make(scales: bool, bounds: Any, sigma_rate: Any, scale_rate: Any) -> SigmaAdaptation:
    low, high = _check_bounds(bounds)
    sigma_rate = _check_rate("sigma_rate", sigma_rate)
    scale_rate = _check_rate("scale_rate", scale_rate)
    log_low, log_high = math.log(low), math.log(high)
    log_limit = math.log(SCALE_LIMIT)

    def init(leaves: Mapping[str, LeafSpec], sigma: float, rank: int) -> State:
        return _init(leaves, sigma, scales)

    def update(state: State, noise: Mapping[str, Any], weights: np.ndarray, rank: int) -> State:
        new: State = {key: dict(value) for key, value in state.items()}
        for path, leaf_noise_ in noise.items():
            if isinstance(leaf_noise_, tuple):
                left, right = leaf_noise_
                rows, columns = left.shape[1], right.shape[1]
                size = rows * columns
                learn_scales = scales and path in state.get("log_rows", {})
                total, row_stat, column_stat = _lowrank_statistics(
                    leaf_noise_, weights, learn_scales
                )
                variance = lowrank_variance(rows, columns, rank)
                if learn_scales:
                    rate = scale_rate or default_scale_rate(size)
                    for key, stat, count in (
                        ("log_rows", row_stat, columns),
                        ("log_columns", column_stat, rows),
                    ):
                        step = rate * stat / math.sqrt(_row_variance(count, rank))
                        value = state[key][path] + step
                        new[key][path] = np.clip(value - value.mean(), -log_limit, log_limit)
            else:
                xp = namespace_of(leaf_noise_)
                draws = leaf_noise_.shape[0]
                flat = leaf_noise_.reshape(draws, -1).astype(xp.float64)
                size = flat.shape[1]
                w = xp.asarray(weights, dtype=xp.float64)
                squares = flat * flat
                total = float(to_numpy(w @ (squares.mean(axis=1) - 1.0)))
                variance = 2.0 / size
                if scales and path in state.get("log_entries", {}):
                    rate = scale_rate or default_scale_rate(size)
                    stat = np.asarray(to_numpy(w @ squares)) - float(to_numpy(w.sum()))
                    value = state["log_entries"][path] + (rate / math.sqrt(2.0)) * stat.reshape(
                        state["log_entries"][path].shape
                    )
                    new["log_entries"][path] = np.clip(value - value.mean(), -log_limit, log_limit)
            rate = sigma_rate or default_sigma_rate(size)
            start = float(state["log_sigma0"][path])
            value = float(state["log_sigma"][path]) + rate * total / math.sqrt(variance)
            new["log_sigma"][path] = np.array(min(max(value, start + log_low), start + log_high))
        return new

    return SigmaAdaptation(init, update)


def leaf_sigma(*, bounds: Any = DEFAULT_BOUNDS, sigma_rate: float | None = None) -> SigmaAdaptation:
    """One σ per leaf, learned with the natural-gradient log-σ rule (rank-aware variance).

    Args:
        bounds: σ stays within ``[low, high]`` times its starting value.
        sigma_rate: ``c_σ``; None uses :func:`default_sigma_rate` of each leaf's size.
    """
    return _make(False, bounds, sigma_rate, None)


def noise_scales(
    *,
    bounds: Any = DEFAULT_BOUNDS,
    sigma_rate: float | None = None,
    scale_rate: float | None = None,
) -> SigmaAdaptation:
    """:func:`leaf_sigma`, plus row × column scales (low-rank leaves) and entry scales (full).

    A low-rank member becomes ``σ/√r · diag(ρ) A Bᵀ diag(γ)``: it adapts to ill-conditioning
    that is a product of a row and a column factor at no extra cost per member. Full leaves
    learn one scale per entry (SNES). Scales are normalised to a geometric mean of 1 (σ carries
    the overall size) and bounded by :data:`SCALE_LIMIT`.

    Args:
        bounds: σ stays within ``[low, high]`` times its starting value.
        sigma_rate: ``c_σ``; None uses :func:`default_sigma_rate`.
        scale_rate: rate of the log-scales; None uses :func:`default_scale_rate`.
    """
    return _make(True, bounds, sigma_rate, scale_rate)


SIGMA_ADAPTATIONS: dict[str, Callable[..., SigmaAdaptation]] = {
    "leaf": leaf_sigma,
    "scales": noise_scales,
}
_AUTO = "scales"


def get_sigma_adaptation(
    name: str | SigmaAdaptation | None, options: Mapping[str, Any] | None = None
) -> SigmaAdaptation | None:
    """The adaptation named ``name`` (``"auto"`` is the recommended one), or None for fixed σ.

    Raises:
        ValueError: for an unknown name or options it does not take.
    """
    if name is None:
        if options:
            raise ValueError(
                f"`sigma_adaptation_options` {dict(options)!r} given without a `sigma_adaptation`."
            )
        return None
    if isinstance(name, SigmaAdaptation):
        return name
    if not isinstance(name, str) or (name != "auto" and name not in SIGMA_ADAPTATIONS):
        raise ValueError(
            f"`sigma_adaptation` must be None, 'auto', one of {sorted(SIGMA_ADAPTATIONS)} or a "
            f"SigmaAdaptation, got {name!r}."
        )
    factory = SIGMA_ADAPTATIONS[_AUTO if name == "auto" else name]
    try:
        return factory(**dict(options or {}))
    except TypeError as error:
        raise ValueError(
            f"`sigma_adaptation_options` {dict(options or {})!r} for {name!r}: {error}"
        ) from None


def leaf_sigmas(state: State) -> dict[str, float]:
    """σ of every searched leaf in an adaptation state."""
    return {path: math.exp(float(value)) for path, value in state["log_sigma"].items()}


def leaf_scales(state: State) -> dict[str, Any]:
    """The noise scales of every leaf that has them: ``(ρ, γ)`` or ``D`` (host float64)."""
    scales: dict[str, Any] = {}
    for path, rows in state.get("log_rows", {}).items():
        scales[path] = (np.exp(rows), np.exp(state["log_columns"][path]))
    for path, entries in state.get("log_entries", {}).items():
        scales[path] = np.exp(entries)
    return scales
