"""Step-size adaptation: σ as learned state, per leaf, with row × column scales for matrices.

A step-size adaptation is an ``init``/``update`` pair, like an optimizer (:mod:`.optim`):

* ``init(leaves, sigma, rank) -> state`` gives every searched leaf its starting σ;
* ``update(state, observed) -> state`` learns from one generation's :class:`Observation` (the
  unit noise of every searched leaf, the selection weight of every draw, the mean's whitened
  step). It returns a new state and never modifies the one it was given, so a failed ``tell``
  leaves the strategy as it was.

The state is a dict of host float64 arrays: ``"log_sigma"`` (one 0-d array per leaf),
``"log_sigma0"`` (the starting values, for the bounds and for restarts), and as the method
needs them ``"path"`` (an evolution path per leaf), ``"log_rows"``/``"log_columns"`` (per
low-rank leaf, shapes (m,) and (n,)) and ``"log_entries"`` (per full leaf, the leaf's shape).
Member ``i``'s perturbation is then

* low-rank: ``s_i σ / √r · diag(ρ) A_k B_kᵀ diag(γ)`` with ``ρ = exp(log_rows)``,
  ``γ = exp(log_columns)`` — still rank ``r``, so populations keep their factors;
* full: ``s_i σ · D ∘ ε_k`` with ``D = exp(log_entries)``.

Methods (``sigma_adaptation=`` names; derivations in ``docs/conventions.md``):

* ``"leaf"`` (:func:`leaf_sigma`): with whitened noise ``Ê`` (before σ and the scales),
  ``log σ += c_σ · Σ_k w_k t_k / sd(t)`` with ``t = ‖Ê‖²/d - 1`` and, for rank-``r`` noise,
  ``Var(t) = 2/(rm) + 2/(rn) + 2(r+1)/(rd)`` (not the dense ``2/d``), plus the positive part of
  a path-length term so that σ also grows on slopes;
* ``"scales"`` (:func:`noise_scales`, what ``"auto"`` picks): ``"leaf"`` plus row, column and
  entry log-scales driven in the same way by each row's, column's or entry's mean square;
* ``"csa"`` (:func:`path_length`): cumulative step-size adaptation alone;
* ``"nes"``: ``"leaf"`` without the path term (for comparisons).

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
    "Observation",
    "SigmaAdaptation",
    "get_sigma_adaptation",
    "leaf_scales",
    "leaf_sigma",
    "leaf_sigmas",
    "lowrank_variance",
    "noise_scales",
    "path_length",
]

State = dict[str, Any]

DEFAULT_BOUNDS = (1e-10, 1e4)
"""σ may move between these multiples of its starting value."""
SCALE_LIMIT = 1e4
"""Row, column and entry scales stay within ``[1/SCALE_LIMIT, SCALE_LIMIT]``."""


class Observation(NamedTuple):
    """What a generation shows a step-size adaptation (built by ``Eggroll.tell``).

    Attributes:
        noise: the unit noise of every searched leaf, draws on the leading axis: ``(A, B)``
            for a low-rank leaf (shapes (K, m, r), (K, n, r)), ``eps`` for a full one.
        selection: per draw, the sum of its members' utilities (normalised to ``Σ|u| = 1``):
            what ``‖Ê_k‖²``-type statistics are weighted by (host float64, shape (K,)).
        direction: per leaf, the mean's whitened ascent direction ``Σ_i u_i ε̂_i`` (leaf shape).
        direction_norm: ``√(Σ_k w_k²)`` of the per-draw weights of ``direction``, so that
            ``direction / direction_norm`` has ``E‖·‖² = d`` under random selection.
        mu_eff: ``1 / Σ_i u_i²``, the variance-effective number of selected members.
        rank: the strategy's ``rank`` setting (the largest leaf rank when it is a mapping);
            each low-rank leaf's own rank is the last axis of its noise factors.
    """

    noise: Mapping[str, Any]
    selection: np.ndarray
    direction: Mapping[str, Any]
    direction_norm: float
    mu_eff: float
    rank: int


class SigmaAdaptation(NamedTuple):
    """A step-size adaptation: ``init(leaves, sigma, rank)``, ``update(state, observed)``."""

    init: Callable[[Mapping[str, LeafSpec], float, int], State]
    update: Callable[[State, Observation], State]


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
        raise ValueError(f"`sigma_bounds` must be a pair (low, high), got {bounds!r}.") from None
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


def _init(leaves: Mapping[str, LeafSpec], sigma: float, scales: bool, path: bool) -> State:
    searched = {p: leaf for p, leaf in leaves.items() if leaf.kind != "frozen"}
    log_sigma = {p: np.array(math.log(sigma)) for p in searched}
    state: State = {
        "log_sigma": log_sigma,
        "log_sigma0": {p: v.copy() for p, v in log_sigma.items()},
    }
    if path:
        state["path"] = {p: np.zeros(leaf.shape) for p, leaf in searched.items()}
    if scales:
        state["log_rows"], state["log_columns"], state["log_entries"] = {}, {}, {}
        for name, leaf in searched.items():
            if leaf.kind == "lowrank":
                rows, columns = leaf.matrix_shape
                state["log_rows"][name] = np.zeros(rows)
                state["log_columns"][name] = np.zeros(columns)
            elif math.prod(leaf.shape) > 1:
                state["log_entries"][name] = np.zeros(leaf.shape)
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


def _full_statistics(noise: Any, weights: Any, scales: bool) -> tuple[float, Any]:
    """Σ_k w_k (‖ε_k‖²/d - 1), and (if ``scales``) Σ_k w_k (ε_k² - 1) per entry."""
    xp = namespace_of(noise)
    flat = noise.reshape(noise.shape[0], -1).astype(xp.float64)
    w = xp.asarray(weights, dtype=xp.float64)
    squares = flat * flat
    total = float(to_numpy(w @ (squares.mean(axis=1) - 1.0)))
    if not scales:
        return total, None
    return total, np.asarray(to_numpy(w @ squares)) - float(to_numpy(w.sum()))


def _path_constants(size: int, mu_eff: float) -> tuple[float, float]:
    """CSA's cumulation rate ``c`` and damping ``d_σ`` for a leaf of ``size`` numbers."""
    cumulation = (mu_eff + 2) / (size + mu_eff + 5)
    damping = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (size + 1)) - 1) + cumulation
    return cumulation, damping


def _make(
    gradient: bool, path_rule: str, scales: bool, bounds: Any, sigma_rate: Any, scale_rate: Any
) -> SigmaAdaptation:
    """The adaptation with a log-σ ``gradient`` term (NES) and/or an evolution ``path`` term.

    ``path_rule`` is ``"none"``, ``"grow"`` (only its positive part: σ grows on slopes, which the
    gradient term cannot see under mirrored sampling) or ``"full"`` (CSA).
    """
    low, high = _check_bounds(bounds)
    sigma_rate = _check_rate("sigma_rate", sigma_rate)
    scale_rate = _check_rate("scale_rate", scale_rate)
    log_low, log_high = math.log(low), math.log(high)
    log_limit = math.log(SCALE_LIMIT)
    csa = path_rule != "none"

    def init(leaves: Mapping[str, LeafSpec], sigma: float, rank: int) -> State:
        return _init(leaves, sigma, scales, csa)

    def learn_scales(new: State, key: str, path: str, step: np.ndarray) -> None:
        value = new[key][path] + step.reshape(new[key][path].shape)
        new[key][path] = np.clip(value - value.mean(), -log_limit, log_limit)

    def update(state: State, observed: Observation) -> State:
        new: State = {key: dict(value) for key, value in state.items()}
        weights = observed.selection
        for path, noise in observed.noise.items():
            if isinstance(noise, tuple):
                rows, columns = noise[0].shape[1], noise[1].shape[1]
                rank = noise[0].shape[2]  # the leaf's own rank (capped at min(m, n))
                size = rows * columns
                with_scales = scales and path in state["log_rows"]
                total, row_stat, column_stat = _lowrank_statistics(noise, weights, with_scales)
                variance = lowrank_variance(rows, columns, rank)
                if with_scales:
                    rate = scale_rate or default_scale_rate(size)
                    row_sd = math.sqrt(_row_variance(columns, rank))
                    column_sd = math.sqrt(_row_variance(rows, rank))
                    learn_scales(new, "log_rows", path, rate * row_stat / row_sd)
                    learn_scales(new, "log_columns", path, rate * column_stat / column_sd)
            else:
                size = math.prod(noise.shape[1:])
                with_scales = scales and path in state["log_entries"]
                total, entry_stat = _full_statistics(noise, weights, with_scales)
                variance = 2.0 / size
                if with_scales:
                    rate = scale_rate or default_scale_rate(size)
                    learn_scales(new, "log_entries", path, rate * entry_stat / math.sqrt(2.0))
            log_sigma = float(state["log_sigma"][path])
            if gradient:
                log_sigma += (sigma_rate or default_sigma_rate(size)) * total / math.sqrt(variance)
            if csa:
                cumulation, damping = _path_constants(size, observed.mu_eff)
                z = np.asarray(to_numpy(observed.direction[path]), dtype=np.float64)
                z = z / observed.direction_norm if observed.direction_norm > 0 else z * 0.0
                trail = (1 - cumulation) * state["path"][path] + math.sqrt(
                    cumulation * (2 - cumulation)
                ) * z.reshape(state["path"][path].shape)
                new["path"][path] = trail
                squared = float(np.vdot(trail, trail)) / size
                term = cumulation / (2 * damping) * (squared - 1)
                if path_rule == "grow":
                    log_sigma += max(term, 0.0)
                else:
                    log_sigma += (1.0 if gradient else sigma_rate or 1.0) * term
            start = float(state["log_sigma0"][path])
            clipped = min(max(log_sigma, start + log_low), start + log_high)
            new["log_sigma"][path] = np.array(clipped)
        return new

    return SigmaAdaptation(init, update)


def path_length(
    *,
    bounds: Any = DEFAULT_BOUNDS,
    scales: bool = False,
    sigma_rate: float | None = None,
    scale_rate: float | None = None,
) -> SigmaAdaptation:
    """One σ per leaf by cumulative step-size adaptation (CSA, squared-norm form).

    Each leaf keeps an evolution path ``p ← (1 - c) p + √(c(2 - c)) z`` of its normalised mean
    steps ``z`` (in whitened units, ``E‖z‖² = d`` under random selection for dense and
    low-rank noise alike, so no correction for low rank is needed), and
    ``log σ += c / (2 d_σ) · (‖p‖²/d - 1)``: σ grows while steps line up (a slope) and shrinks
    while they cancel (near an optimum). ``c = (μ_eff + 2)/(d + μ_eff + 5)`` and ``d_σ`` are
    CMA-ES's settings, with ``μ_eff = 1/Σu²`` from the utilities. The path costs one array of
    the leaf's size.

    Args:
        bounds: σ stays within ``[low, high]`` times its starting value.
        scales: also learn row × column scales (low-rank leaves) and entry scales (full
            leaves), as :func:`noise_scales` does.
        sigma_rate: multiplies the log-σ step (default 1).
        scale_rate: rate of the log-scales; None uses :func:`default_scale_rate`.
    """
    return _make(False, "full", scales, bounds, sigma_rate, scale_rate)


def leaf_sigma(
    *, bounds: Any = DEFAULT_BOUNDS, sigma_rate: float | None = None, grow_on_slopes: bool = True
) -> SigmaAdaptation:
    """One σ per leaf: the natural-gradient log-σ rule (rank-aware), guarded on slopes.

    ``log σ += c_σ · Σ_k w_k t_k / sd(t)`` with ``t = ‖Ê‖²/d - 1``, ``w_k`` the selection
    weight of draw ``k`` and ``sd(t)`` from :func:`lowrank_variance`. Under mirrored sampling
    the two members of a pair share ``‖Ê‖²``, so this term sees only curvature and cannot tell
    that σ is too small on a slope; with ``grow_on_slopes`` the positive part of
    :func:`path_length`'s term is added (σ grows while the mean's steps line up).

    Args:
        bounds: σ stays within ``[low, high]`` times its starting value.
        sigma_rate: ``c_σ``; None uses :func:`default_sigma_rate` of each leaf's size.
        grow_on_slopes: add the evolution path's growth term.
    """
    return _make(True, "grow" if grow_on_slopes else "none", False, bounds, sigma_rate, None)


def noise_scales(
    *,
    bounds: Any = DEFAULT_BOUNDS,
    sigma_rate: float | None = None,
    scale_rate: float | None = None,
    grow_on_slopes: bool = True,
) -> SigmaAdaptation:
    """:func:`leaf_sigma`, plus row × column scales (low-rank leaves) and entry scales (full).

    A low-rank member becomes ``σ/√r · diag(ρ) A Bᵀ diag(γ)``: it adapts to ill-conditioning
    that is a product of a row and a column factor at no extra cost per member. Full leaves
    learn one scale per entry (SNES). Each log-scale moves by ``rate · Σ_k w_k t_k / sd(t)``
    with its row's, column's or entry's statistic ``t`` (mean square minus 1); scales are
    normalised to a geometric mean of 1 (σ carries the overall size) and bounded by
    :data:`SCALE_LIMIT`.

    Args:
        bounds: σ stays within ``[low, high]`` times its starting value.
        sigma_rate: ``c_σ``; None uses :func:`default_sigma_rate`.
        scale_rate: rate of the log-scales; None uses :func:`default_scale_rate`.
        grow_on_slopes: as in :func:`leaf_sigma`.
    """
    path = "grow" if grow_on_slopes else "none"
    return _make(True, path, True, bounds, sigma_rate, scale_rate)


def _plain_gradient(**options: Any) -> SigmaAdaptation:
    """:func:`leaf_sigma` without the slope guard (for comparisons)."""
    return leaf_sigma(grow_on_slopes=False, **options)


SIGMA_ADAPTATIONS: dict[str, Callable[..., SigmaAdaptation]] = {
    "leaf": leaf_sigma,
    "scales": noise_scales,
    "csa": path_length,
    "nes": _plain_gradient,
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
