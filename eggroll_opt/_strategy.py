"""The ask/tell strategies: :class:`Eggroll` (low-rank noise) and :class:`OpenES` (full rank).

Conventions, in one place (see also ``docs/conventions.md``):

* **Direction.** Fitness is minimized by default; ``maximize=True`` maximizes. Internally the
  *utility* ``u_i`` is ``-f_i`` (minimizing) or ``f_i`` (maximizing): higher is better.
* **Shaping.** ``z = fitness_shaping(u)`` (centered ranks by default); NaN fitness ranks worst
  (``nan_policy="worst"``) or raises (``"raise"``); ``±inf`` rank at their ends.
* **Estimator.** With ``ε̂_i`` member ``i``'s unit-σ perturbation (its perturbation divided by
  σ) the ascent direction of the smoothed utility is

      g = 1 / (N σ) · Σ_i z_i · ε̂_i                       (ε̂_i carries the sign s_i)

  For a low-rank leaf ``ε̂_i = s_i A_k B_kᵀ / √r`` and the sum is one matrix product,
  ``g = 1 / (N σ √r) · (A · diag(w)) · Bᵀ`` over the ``K·r`` columns of all draws, with
  ``w_k = Σ_{i: k_i = k} s_i z_i`` (``z_{2k} - z_{2k+1}`` when mirrored). No member is ever
  materialised.
* **Step.** The optimizer receives ``-g`` (the gradient of a loss) and returns the step added to
  the parameters, so every optimizer, learning rate and weight decay means the same thing for
  both strategies.
* **Adapted σ.** With a ``sigma_adaptation`` (:mod:`eggroll_opt.adaptation`) σ and the noise
  scales are state: the optimizer receives ``-Σ_i u_i ε̂_i`` with ``u = z / Σ|z|`` (whitened
  units) and its step is multiplied by each leaf's σ and scales, the natural-gradient step.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from . import _checkpoint, _safe_step, adaptation
from ._backend import Backend, get_backend, host_values, read_only, to_numpy
from ._defaults import default_learning_rate, default_popsize, default_sigma
from ._noise import MAX_NORMAL
from ._optimize import OptimizeResult, optimize
from ._population import NOISE_KINDS, LeafSpec, Population, leaf_noise
from ._safe_step import NonFiniteStepError
from ._tree import flatten, unflatten
from .adaptation import SigmaAdaptation, get_sigma_adaptation
from .optim import GradientTransformation, get_optimizer
from .shaping import ShapingFunction, get_shaping

NAN_POLICIES = ("worst", "raise")
_CUSTOM = "custom"  # a callable the checkpoint cannot store


class AskTellError(ValueError):
    """``tell`` called out of order: before ``ask``, or twice for one ``ask``."""


@dataclass(frozen=True)
class GenerationStats:
    """What ``tell`` reports about the generation it just learned from.

    Fitness values are in the user's own terms (not negated), over members whose fitness was
    not NaN; ``best_index`` is the member with the best fitness. ``sigma`` holds the σ of every
    searched leaf that this generation was sampled with (row, column and entry scales, where an
    adaptation learns them, are in :attr:`Eggroll.noise_scales`). ``gradient_norm`` is the
    Euclidean norm of the search gradient over all leaves, computed without overflow in the
    squares; it is ``inf`` only when the norm itself exceeds the float64 range (raw fitness
    near 1e308), a step ``tell`` still takes when the new mean stays finite.
    """

    generation: int
    best_fitness: float
    mean_fitness: float
    worst_fitness: float
    best_index: int
    num_failed: int
    gradient_norm: float
    sigma: dict[str, float] = field(default_factory=dict)

    @property
    def sigma_range(self) -> tuple[float, float]:
        """Smallest and largest per-leaf σ this generation was sampled with."""
        values = list(self.sigma.values()) or [math.nan]
        return min(values), max(values)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


def _check_rank(rank: Any) -> int | dict[str, int]:
    """``rank=``: an int >= 1, or a mapping from leaf path to such an int."""
    if isinstance(rank, Mapping):
        checked = {}
        for path, value in rank.items():
            if not isinstance(path, str):
                raise TypeError(f"`rank` keys must be leaf paths (str), got {path!r}.")
            checked[path] = _check_int(f"rank[{path!r}]", value, 1)
        return checked
    return _check_int("rank", rank, 1)


def _check_float(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"`{name}` must be finite and {bound}, got {value}.")
    return value


class Eggroll:
    """EGGROLL: evolution strategies with low-rank perturbations of matrix parameters.

    Each member perturbs every 2-D (or larger) leaf by a rank-``rank`` product
    ``s_i σ/√r · A_k B_kᵀ`` regenerated from the seed, and every 0-D/1-D leaf by dense noise,
    so a population costs ``rank·(m+n)`` numbers per member and matrix instead of ``m·n``.

    Args:
        params: the initial mean, a dict (nested allowed) of finite float arrays.
        popsize: number of members per generation (even when ``mirrored``). None:
            :func:`default_popsize` of the number of searched numbers (``4 + ⌊3 ln d⌋``, at
            least 8, rounded up to even), a size for black-box problems; networks usually want
            hundreds.
        sigma: starting noise scale σ > 0. None: :func:`default_sigma` (0.1 times the RMS of
            the initial searched parameters, 0.1 if they are all zero).
        rank: rank r of the low-rank perturbations: an int for every low-rank leaf, or a
            mapping ``{"path/to/leaf": r}`` (leaves it does not name get 1). It is a cap: a
            leaf viewed as an m × n matrix gets ``min(r, m, n)`` (``rank=2`` gives a 1 × 24
            output layer rank 1); :attr:`ranks` tells what each leaf got.
        learning_rate: step size of the optimizer. None: :func:`default_learning_rate` (σ/2
            for Adam with fixed σ; 3 for the natural-gradient step when low-rank leaves hold
            most of the searched numbers, 1 otherwise).
        optimizer: ``"adam"``, ``"sgd"``, ``"momentum"`` or a
            :class:`~eggroll_opt.optim.GradientTransformation`. None: ``"adam"`` with fixed σ,
            ``"sgd"`` (the natural-gradient step) with a ``sigma_adaptation``.
        sigma_adaptation: None keeps σ fixed; ``"auto"`` (the recommended method, now
            ``"scales"``), ``"leaf"`` (one σ per leaf), ``"scales"`` (one σ per leaf plus row ×
            column scales of low-rank leaves and entry scales of full ones) or a
            :class:`~eggroll_opt.adaptation.SigmaAdaptation`. With an adaptation the mean's
            step follows σ: the optimizer sees the gradient in units of the search
            distribution (utilities normalised to ``Σ|u| = 1``) and its step is multiplied by
            the leaf's σ and scales (see :mod:`eggroll_opt.adaptation`).
        sigma_bounds: ``(low, high)``: multiples of the starting σ that an adaptation keeps σ
            within (default ``(1e-10, 1e4)``).
        optimizer_options: extra keyword arguments of a named optimizer (``{"b1": 0.8}``).
        weight_decay: decoupled weight decay (see :mod:`eggroll_opt.optim`).
        seed: non-negative int; None draws one (readable as ``es.seed``).
        maximize: maximize fitness instead of minimizing it.
        mirrored: antithetic pairs: members 2k and 2k+1 share noise k with signs +1/-1.
        noise_reuse: 0 or 1 draw fresh noise each generation; R >= 2 keeps the same noise for
            R consecutive generations.
        fitness_shaping: ``"centered_rank"``, ``"zscore"``, ``"raw"`` or a callable (see
            :mod:`eggroll_opt.shaping`).
        nan_policy: ``"worst"`` (NaN fitness ranks worst) or ``"raise"``.
        noise_kinds: per-leaf override of the noise kind, ``{"path/to/leaf": "frozen"}``, with
            kinds ``"lowrank"`` (>= 2-D leaves), ``"full"`` and ``"frozen"``.
        backend: ``"auto"`` (CuPy if it sees a GPU, else NumPy), ``"numpy"`` or ``"cupy"``.

    Example:
        >>> import numpy as np, eggroll_opt as eo
        >>> target = np.arange(12.0).reshape(3, 4) / 10
        >>> es = eo.Eggroll({"w": np.zeros((3, 4))}, popsize=32, sigma=0.1,
        ...                 learning_rate=0.05, seed=0, backend="numpy")
        >>> for _ in range(150):
        ...     pop = es.ask()
        ...     stats = es.tell([np.sum((m.params()["w"] - target) ** 2) for m in pop])
        >>> bool(np.abs(es.params["w"] - target).max() < 0.1)
        True
    """

    _default_lowrank = True

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        popsize: int | None = None,
        sigma: float | None = None,
        learning_rate: float | None = None,
        rank: int | Mapping[str, int] = 1,
        optimizer: str | GradientTransformation | None = None,
        sigma_adaptation: str | SigmaAdaptation | None = None,
        sigma_bounds: tuple[float, float] | None = None,
        optimizer_options: Mapping[str, Any] | None = None,
        weight_decay: float = 0.0,
        seed: int | None = None,
        maximize: bool = False,
        mirrored: bool = True,
        noise_reuse: int = 0,
        fitness_shaping: str | ShapingFunction = "centered_rank",
        nan_policy: str = "worst",
        noise_kinds: Mapping[str, str] | None = None,
        backend: str | Backend = "auto",
    ) -> None:
        self._backend = get_backend(backend)
        if not isinstance(mirrored, bool | np.bool_):
            raise TypeError(f"`mirrored` must be a bool, got {mirrored!r}.")
        self._mirrored = bool(mirrored)
        flat = flatten(params)
        self._rank = _check_rank(rank)
        self._leaves = self._leaf_specs(flat, noise_kinds)
        self._params = {
            path: self._backend.xp.array(self._backend.asarray(value), copy=True)
            for path, value in flat.items()
        }
        peaks = _safe_step.peak_magnitudes(self._backend.xp, self._params)
        for path, peak in peaks.items():
            if not math.isfinite(peak):
                raise ValueError(
                    f"`params` leaf {path!r} holds NaN or inf; the initial mean must be finite."
                )
        searched = self.num_params
        if popsize is None:
            popsize = default_popsize(searched, even=self._mirrored)
        self._popsize = _check_int("popsize", popsize, 2)
        if self._mirrored and self._popsize % 2:
            raise ValueError(
                f"`popsize` must be even with mirrored sampling, got {popsize} "
                "(use an even popsize or mirrored=False)."
            )
        if sigma is None:
            sigma = default_sigma(self._trainable())
        self._sigma = _check_float("sigma", sigma, positive=True)
        if sigma_adaptation is None and sigma_bounds is not None:
            raise ValueError(
                f"`sigma_bounds`={sigma_bounds!r} needs a `sigma_adaptation` (σ is fixed)."
            )
        self._sigma_bounds = sigma_bounds
        bounds = {} if sigma_bounds is None else {"bounds": sigma_bounds}
        if isinstance(sigma_adaptation, SigmaAdaptation) and sigma_bounds is not None:
            raise ValueError(
                "`sigma_bounds` applies to a named `sigma_adaptation`; build a custom "
                "SigmaAdaptation with its own bounds."
            )
        self._adaptation = get_sigma_adaptation(sigma_adaptation, bounds)
        self._adaptation_name = (
            None if isinstance(sigma_adaptation, SigmaAdaptation) else sigma_adaptation
        )
        if optimizer is None:
            optimizer = "adam" if self._adaptation is None else "sgd"
        if learning_rate is None:
            lowrank = sum(
                math.prod(leaf.shape) for leaf in self._leaves.values() if leaf.kind == "lowrank"
            )
            learning_rate = default_learning_rate(
                optimizer if isinstance(optimizer, str) else "custom",
                self._sigma,
                adaptive=self._adaptation is not None,
                lowrank_fraction=lowrank / max(searched, 1),
            )
        self._learning_rate = _check_float("learning_rate", learning_rate, positive=True)
        self._weight_decay = _check_float("weight_decay", weight_decay, positive=False)
        self._noise_reuse = _check_int("noise_reuse", noise_reuse, 0)
        if seed is None:
            seed = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]
        self._seed = _check_int("seed", seed, 0)
        if not isinstance(maximize, bool | np.bool_):
            raise TypeError(f"`maximize` must be a bool, got {maximize!r}.")
        self._maximize = bool(maximize)
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"`nan_policy` must be one of {NAN_POLICIES}, got {nan_policy!r}.")
        self._nan_policy = nan_policy
        self._shaping = get_shaping(fitness_shaping)
        self._shaping_name = fitness_shaping if isinstance(fitness_shaping, str) else None

        if isinstance(optimizer, GradientTransformation):
            self._optimizer_name = None
            self._optimizer = optimizer
        elif isinstance(optimizer, str):
            self._optimizer_name = optimizer
            self._optimizer = get_optimizer(
                optimizer, self._learning_rate, self._weight_decay, optimizer_options
            )
        else:
            raise TypeError(
                f"`optimizer` must be a name or a GradientTransformation, got {optimizer!r}."
            )
        self._optimizer_options = dict(optimizer_options or {})
        self._opt_state = self._optimizer.init(self._trainable())
        self._adaptation_state = self._init_adaptation()
        self._generation = 0
        self._restarts = 0
        self._population: Population | None = None
        self._param_peaks = peaks  # a bound on max |mean| per leaf, for _step

    def _init_adaptation(self) -> dict[str, Any] | None:
        if self._adaptation is None:
            return None
        trainable = {p: leaf for p, leaf in self._leaves.items() if leaf.kind != "frozen"}
        return self._adaptation.init(trainable, self._sigma, self._nominal_rank)

    # -- construction helpers ----------------------------------------------------------------
    def _leaf_specs(
        self, flat: Mapping[str, Any], noise_kinds: Mapping[str, str] | None
    ) -> dict[str, LeafSpec]:
        overrides = dict(noise_kinds or {})
        unknown = sorted(set(overrides) - set(flat))
        if unknown:
            raise ValueError(f"`noise_kinds` names leaves that do not exist: {unknown}.")
        leaves = {}
        for path, value in flat.items():
            dtype = (
                np.asarray(to_numpy(value)).dtype if not hasattr(value, "dtype") else value.dtype
            )
            shape = tuple(int(d) for d in np.shape(value))
            if np.dtype(dtype) not in (np.float32, np.float64):
                raise TypeError(
                    f"`params` leaf {path!r} must be a float array (float32 or float64), got "
                    f"dtype {np.dtype(dtype)} (convert with .astype(np.float32); search over "
                    "integers or choices with the Optuna sampler)."
                )
            if 0 in shape:
                raise ValueError(f"`params` leaf {path!r} has a zero-size dimension: {shape}.")
            kind = overrides.get(path, self._default_kind(shape))
            if kind not in NOISE_KINDS:
                raise ValueError(
                    f"`noise_kinds`[{path!r}] must be one of {NOISE_KINDS}, got {kind!r}."
                )
            leaf = LeafSpec(path, kind, shape, np.dtype(dtype).str)
            if kind == "lowrank":
                if len(shape) < 2:
                    raise ValueError(
                        f"`noise_kinds`[{path!r}]='lowrank' needs a leaf with >= 2 dimensions, "
                        f"got shape {shape}."
                    )
                requested = self._rank.get(path, 1) if isinstance(self._rank, dict) else self._rank
                leaf = dataclasses.replace(leaf, rank=min(requested, *leaf.matrix_shape))
            leaves[path] = leaf
        if isinstance(self._rank, dict):
            unknown = sorted(p for p in self._rank if p not in leaves)
            if unknown:
                raise ValueError(f"`rank` names leaves that do not exist: {unknown}.")
            wrong = sorted(p for p in self._rank if leaves[p].kind != "lowrank")
            if wrong:
                raise ValueError(
                    f"`rank` names leaves without low-rank noise: {wrong}; low-rank leaves are "
                    f"{sorted(p for p, leaf in leaves.items() if leaf.kind == 'lowrank')}."
                )
        if all(leaf.kind == "frozen" for leaf in leaves.values()):
            raise ValueError("`noise_kinds` freezes every leaf: nothing left to optimize.")
        return leaves

    def _default_kind(self, shape: tuple[int, ...]) -> str:
        return "lowrank" if self._default_lowrank and len(shape) >= 2 else "full"

    def _trainable(self) -> dict[str, Any]:
        return {p: v for p, v in self._params.items() if self._leaves[p].kind != "frozen"}

    # -- read-only state ---------------------------------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """The current mean, in the tree structure given (arrays on :attr:`backend`).

        On NumPy the arrays are **read-only views** of the strategy's own (writing to them
        raises ``ValueError``; ``np.array(x)`` gives an editable copy); on CuPy, which has no
        read-only arrays, they are copies. Either way, editing them never moves the mean: use
        :meth:`restart` to set a new one.
        """
        return unflatten({path: read_only(value) for path, value in self._params.items()})

    @property
    def generation(self) -> int:
        """Number of completed ``tell`` calls."""
        return self._generation

    @property
    def maximize(self) -> bool:
        """Whether higher fitness is better (``False``: fitness is minimized)."""
        return self._maximize

    @property
    def popsize(self) -> int:
        """Members per generation."""
        return self._popsize

    @property
    def sigma(self) -> float:
        """The starting noise scale σ₀ (the current per-leaf values are :attr:`sigmas`)."""
        return self._sigma

    @property
    def sigmas(self) -> dict[str, float]:
        """The current σ of every searched leaf (all ``sigma`` while σ is fixed)."""
        if self._adaptation_state is None:
            return {p: self._sigma for p, leaf in self._leaves.items() if leaf.kind != "frozen"}
        return adaptation.leaf_sigmas(self._adaptation_state)

    @property
    def noise_scales(self) -> dict[str, Any]:
        """Learned noise scales by leaf: ``(rows, columns)`` (low-rank) or entry scales (full).

        Empty unless the ``sigma_adaptation`` learns scales (``"scales"``, ``"auto"``). Host
        float64 arrays; member noise is ``diag(rows) A Bᵀ diag(columns)`` or ``scales * eps``.
        """
        if self._adaptation_state is None:
            return {}
        return adaptation.leaf_scales(self._adaptation_state)

    @property
    def sigma_adaptation(self) -> str | SigmaAdaptation | None:
        """The ``sigma_adaptation`` given (None: σ is fixed)."""
        return self._adaptation_name if self._adaptation_name is not None else self._adaptation

    @property
    def restarts(self) -> int:
        """How many times :meth:`restart` was called over this run (checkpoints keep it)."""
        return self._restarts

    @property
    def learning_rate(self) -> float:
        """The optimizer's learning rate."""
        return self._learning_rate

    @property
    def rank(self) -> int | dict[str, int]:
        """The ``rank`` setting as given (an int, or a mapping by leaf); see :attr:`ranks`."""
        return dict(self._rank) if isinstance(self._rank, dict) else self._rank

    @property
    def _nominal_rank(self) -> int:
        """One int for APIs that take one: the setting, or the largest leaf rank."""
        if isinstance(self._rank, int):
            return self._rank
        return max(self.ranks.values(), default=1)

    @property
    def ranks(self) -> dict[str, int]:
        """The rank each low-rank leaf's noise has: the setting capped at ``min(m, n)``."""
        return {path: leaf.rank for path, leaf in self._leaves.items() if leaf.kind == "lowrank"}

    @property
    def seed(self) -> int:
        """The seed every noise draw derives from."""
        return self._seed

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``."""
        return self._backend.name

    @property
    def xp(self) -> Any:
        """The array module the strategy computes with: ``numpy``, or ``cupy`` on a GPU.

        Move a fitness function's data there once (``es.xp.asarray(x)``) so that vectorised
        fitness never mixes host and device arrays.
        """
        return self._backend.xp

    @property
    def noise_kinds(self) -> dict[str, str]:
        """The noise kind of every leaf, by path."""
        return {path: leaf.kind for path, leaf in self._leaves.items()}

    @property
    def num_params(self) -> int:
        """Number of searched (non-frozen) scalars."""
        return sum(math.prod(leaf.shape) for leaf in self._leaves.values() if leaf.kind != "frozen")

    @property
    def optimizer_state(self) -> Any:
        """The optimizer's state (a nest of dicts/tuples of arrays and ints)."""
        return self._opt_state

    def _epoch(self, generation: int) -> int:
        return generation // self._noise_reuse if self._noise_reuse > 1 else generation

    # -- ask / tell --------------------------------------------------------------------------
    def ask(self) -> Population:
        """The population of the current generation (the same object until ``tell``).

        Noise for all members is generated here in one call per leaf; the population holds
        ``O(K·r·(m+n))`` numbers per low-rank leaf.
        """
        if self._population is None:
            draws = self._popsize // 2 if self._mirrored else self._popsize
            epoch = self._epoch(self._generation)
            noise = {
                path: leaf_noise(self._backend, self._seed, leaf, epoch, 0, draws)
                for path, leaf in self._leaves.items()
                if leaf.kind != "frozen"
            }
            adaptive = self._adaptation_state is not None
            self._population = Population(
                backend=self._backend,
                leaves=self._leaves,
                base=self._params,
                noise=noise,
                seed=self._seed,
                generation=self._generation,
                epoch=epoch,
                popsize=self._popsize,
                sigma={**dict.fromkeys(self._leaves, self._sigma), **self.sigmas}
                if adaptive
                else self._sigma,
                mirrored=self._mirrored,
                scales=self.noise_scales,
            )
        return self._population

    def tell(self, fitness: Any) -> GenerationStats:
        """Learn from the fitness of the population handed out by the last ``ask``.

        Args:
            fitness: one real value per member, in population order: a list, tuple, NumPy or
                CuPy array of shape (popsize,). NaN marks a failed member; ±inf are allowed.

        Returns:
            :class:`GenerationStats` of the generation just completed.

        Raises:
            AskTellError: before ``ask``, or a second time for one ``ask``.
            TypeError: for non-numeric or complex fitness.
            ValueError: for a wrong shape, all-NaN fitness, or NaN with ``nan_policy="raise"``.
        """
        population = self._population
        if population is None:
            if self._generation == 0:
                raise AskTellError("tell() called before ask(); call ask() first.")
            raise AskTellError(
                f"tell() was already called for generation {self._generation - 1}; "
                f"call ask() for generation {self._generation} first."
            )
        values = self._validate_fitness(fitness)
        utility = values if self._maximize else -values
        weights = np.asarray(self._shaping(utility.copy()), dtype=np.float64)
        if weights.shape != values.shape or not np.isfinite(weights).all():
            raise ValueError(
                f"`fitness_shaping` must return {values.shape[0]} finite values, got "
                f"{weights.shape} with {int((~np.isfinite(weights)).sum())} non-finite."
            )
        xp = self._backend.xp
        # Summed in a safe scale: weights = unit · 2**exponent (exponent 0 for normal weights).
        unit, exponent = _safe_step.split_exponent(weights)
        adaptation_state = self._adaptation_state
        if self._adaptation is None or adaptation_state is None:
            scale = -1.0 / (self._popsize * self._sigma)
            grads = self._loss_gradient(population, unit, scale)
            if exponent:
                with np.errstate(over="ignore"):
                    grads = {path: xp.ldexp(g, exponent) for path, g in grads.items()}
            with np.errstate(over="ignore"):
                total_weight = float(np.ldexp(np.abs(unit).sum(), exponent))  # inf if huge
            bounds = self._gradient_bounds(total_weight, scale)
        else:
            # Utilities normalised to Σ|u| = 1; the gradient is taken in whitened units.
            total = float(np.abs(unit).sum())
            utilities = unit / total if total > 0 else np.zeros_like(unit)
            grads = self._loss_gradient(population, utilities, -1.0)
            bounds = self._gradient_bounds(1.0, -1.0)
            signed = utilities * population.signs
            if self._mirrored:
                selection = utilities[0::2] + utilities[1::2]
                signed = signed[0::2] + signed[1::2]
            else:
                selection = utilities
            squares = float(np.sum(utilities**2))
            observed = adaptation.Observation(
                noise={path: population.factors(path, unit=True) for path in grads},
                selection=selection,
                direction={path: -grad for path, grad in grads.items()},
                direction_norm=float(np.sqrt(np.sum(signed**2))),
                mu_eff=1.0 / squares if squares > 0 else 1.0,
                rank=self._nominal_rank,
            )
            adaptation_state = self._adaptation.update(adaptation_state, observed)
        params, opt_state, norms = self._step(grads, bounds, population, values)
        self._params = params
        self._opt_state = opt_state
        self._adaptation_state = adaptation_state
        self._population = None
        self._generation += 1
        return self._stats(
            values, math.hypot(*norms.values()), {p: population.sigma(p) for p in grads}
        )

    def _step(
        self,
        grads: dict[str, Any],
        bounds: Mapping[str, float],
        population: Population,
        values: np.ndarray,
    ) -> tuple[dict[str, Any], Any, dict[str, float]]:
        """The new mean, optimizer state and gradient norms, or :class:`NonFiniteStepError`.

        The optimizer updates its state in place, so the state is copied first whenever an
        overflow is possible (see :mod:`eggroll_opt._safe_step`); ``bounds`` (``max |g|`` per
        leaf, known on the host) decide that. Everything checked afterwards (the gradient norms
        and the new mean's norms) is read back from the device in one transfer.

        The new mean is made of new arrays (the old one stays valid for its population): views
        of one buffer per dtype (:func:`~eggroll_opt._safe_step.packed_like`), so one norm per
        dtype checks them all. With an optimizer that offers ``apply`` (the built-in ones), the
        step writes them itself: on CuPy one fused kernel per leaf does the optimizer's step and
        ``mean + update``, bit for bit what ``update`` and the sum give on NumPy.
        """
        xp = self._backend.xp
        trainable = self._trainable()
        growth = max(1.0, self._learning_rate) * (1.0 + self._weight_decay)
        if self._adaptation is not None:
            growth *= max(1.0, self._largest_noise_scale(population))
        dtypes = {path: self._leaves[path].dtype for path in grads}
        risky = self._optimizer_name is None or _safe_step.may_overflow(
            bounds, self._param_peaks, dtypes, growth
        )
        snapshot = _safe_step.copy_tree(self._opt_state) if risky else None
        # Norms are taken before the update, which may reuse the gradient buffers. Away from
        # overflow they stay on the device until the one read-back below.
        grad_norms: dict[str, Any] = {
            path: _safe_step.leaf_norm(xp, g) if risky else xp.linalg.norm(g.reshape(-1))
            for path, g in grads.items()
        }
        apply = self._optimizer.apply if self._adaptation is None else None
        with np.errstate(over="ignore", invalid="ignore"):
            if apply is not None:
                new_mean, groups = _safe_step.packed_like(xp, {p: trainable[p] for p in grads})
                _, opt_state = apply(grads, self._opt_state, trainable, new_mean)
            else:
                updates, opt_state = self._optimizer.update(grads, self._opt_state, trainable)
                if self._adaptation is not None:
                    updates = self._follow_sigma(updates, population)
                new_mean, groups = _safe_step.packed_like(
                    xp, {path: self._params[path] for path in updates}
                )
                for path, update in updates.items():
                    xp.add(self._params[path], update, out=new_mean[path])
            group_norms = {name: xp.linalg.norm(buffer) for name, (buffer, _) in groups.items()}
        norms, group_peaks = _safe_step.read_back(xp, grad_norms, group_norms)
        # A dtype's norm bounds max |μ| of each of its leaves; where it is inf (the squares
        # overflowed, or the mean did), each leaf's own max |μ| is read back instead.
        peaks = {path: group_peaks[name] for name, (_, paths) in groups.items() for path in paths}
        closer = {path: new_mean[path] for path, peak in peaks.items() if math.isinf(peak)}
        if closer:
            peaks.update(_safe_step.peak_magnitudes(xp, closer))
        gradient_ok = all(math.isfinite(norm) for norm in norms.values())
        finite = gradient_ok and all(math.isfinite(peak) for peak in peaks.values())
        if finite and snapshot is not None:
            finite = _safe_step.all_finite(xp, opt_state)
        if not finite:
            if snapshot is not None:
                self._opt_state = snapshot
            raise self._non_finite(values, "step" if gradient_ok else "search gradient")
        self._param_peaks = peaks  # bounds on max |μ| per leaf for the next step's check
        return {**self._params, **new_mean}, opt_state, norms

    def _largest_noise_scale(self, population: Population) -> float:
        """The largest σ times noise scale of any leaf (what the step is multiplied by)."""
        largest = 0.0
        for path, leaf in self._leaves.items():
            if leaf.kind == "frozen":
                continue
            factor = population.sigma(path)
            scales = population.scales(path)
            if scales is not None:
                parts = scales if leaf.kind == "lowrank" else (scales,)
                factor *= math.prod(float(np.max(to_numpy(part))) for part in parts)
            largest = max(largest, factor)
        return largest

    def _non_finite(self, values: np.ndarray, what: str) -> NonFiniteStepError:
        """The error of a ``tell`` that would have made the mean or optimizer state non-finite."""
        finite = values[np.isfinite(values)]
        spread = (
            f"finite fitness spans [{finite.min():.3g}, {finite.max():.3g}]"
            if finite.size
            else "no fitness value is finite"
        )
        shaping = self._shaping_name or "a custom shaping"
        return NonFiniteStepError(
            f"`fitness` gives a non-finite {what} ({spread}, fitness_shaping={shaping!r}, "
            f"optimizer={self._optimizer_name or 'custom'!r}, learning_rate="
            f"{self._learning_rate:g}); the strategy is unchanged. Call tell again with "
            "rescaled fitness, or use fitness_shaping='centered_rank' (the default), which "
            "any values suit."
        )

    def _follow_sigma(self, updates: dict[str, Any], population: Population) -> dict[str, Any]:
        """Each leaf's step times its σ and noise scales: the natural-gradient step."""
        xp = self._backend.xp
        scaled = {}
        for path, update in updates.items():
            leaf = self._leaves[path]
            factor: Any = population.sigma(path)
            scales = population.scales(path)
            if scales is not None and leaf.kind == "lowrank":
                rows, columns = (xp.asarray(part, dtype=update.dtype) for part in scales)
                factor = (factor * rows[:, None] * columns[None, :]).reshape(leaf.shape)
            elif scales is not None:
                factor = factor * xp.asarray(scales, dtype=update.dtype)
            scaled[path] = update * factor
        return scaled

    def optimize(
        self, fitness_fn: Callable[[Any], Any], generations: int, **options: Any
    ) -> OptimizeResult:
        """Run ask / evaluate / tell for up to ``generations`` generations.

        The same as ``eggroll_opt.optimize(self, fitness_fn, generations, **options)``; see
        :func:`eggroll_opt.optimize` for the options (``executor``, ``vectorized``,
        ``callbacks``, ``progress``, ``checkpoint``, ``checkpoint_every``, ``target``,
        ``patience``, ``timeout``, ``max_retries``, ``failure_policy``,
        ``chunks_per_worker``).

        Example:
            >>> import numpy as np, eggroll_opt as eo
            >>> es = eo.Eggroll({"w": np.zeros((3, 4))}, popsize=16, sigma=0.1,
            ...                 learning_rate=0.05, seed=0, backend="numpy")
            >>> result = es.optimize(lambda p: float(np.sum((p["w"] - 1) ** 2)), 20,
            ...                      progress=False)
            >>> result.generations, es.generation
            (20, 20)
        """
        return optimize(self, fitness_fn, generations, **options)

    def _validate_fitness(self, fitness: Any) -> np.ndarray:
        if isinstance(fitness, str | bytes | Mapping) or fitness is None:
            raise TypeError(
                f"`fitness` must be a sequence of {self._popsize} real numbers, got "
                f"{type(fitness).__name__}."
            )
        try:
            array = host_values(fitness)
        except (TypeError, ValueError) as error:
            raise TypeError(f"`fitness` could not be read as an array: {error}") from None
        if array.dtype.kind == "c":
            raise TypeError(f"`fitness` must be real, got complex values ({array.dtype}).")
        if array.dtype.kind == "O":
            try:
                array = array.astype(np.float64)
            except (TypeError, ValueError):
                raise TypeError("`fitness` must hold real numbers, got other objects.") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(f"`fitness` must hold real numbers, got dtype {array.dtype}.")
        if array.shape != (self._popsize,):
            raise ValueError(
                f"`fitness` must have shape ({self._popsize},), one value per member, "
                f"got shape {array.shape}."
            )
        values = array.astype(np.float64)
        failed = np.isnan(values)
        if failed.all():
            raise ValueError("`fitness` is NaN for every member; nothing to learn from.")
        if failed.any() and self._nan_policy == "raise":
            raise ValueError(
                f"`fitness` is NaN for members {np.flatnonzero(failed).tolist()} "
                "(nan_policy='raise')."
            )
        return values

    def _loss_gradient(
        self, population: Population, weights: np.ndarray, scale: float
    ) -> dict[str, Any]:
        """``scale · Σ_i weights_i ε̂_i`` per trainable leaf, one GEMM per low-rank leaf.

        ``ε̂_i`` is member i's unit noise (sign included, before σ and noise scales); with
        ``scale = -1/(N σ)`` this is ``-g`` of the module docstring.
        """
        xp = self._backend.xp
        per_draw = weights * population.signs
        if self._mirrored:
            per_draw = per_draw[0::2] + per_draw[1::2]
        searched = {p: leaf for p, leaf in self._leaves.items() if leaf.kind != "frozen"}
        # Every leaf's weights, scaled on the host, go to the device in one copy per dtype.
        factors = {
            path: scale / math.sqrt(leaf.rank) if leaf.kind == "lowrank" else scale
            for path, leaf in searched.items()
        }
        rows: dict[str, Any] = {}
        for dtype in {leaf.dtype for leaf in searched.values()}:
            paths = [p for p, leaf in searched.items() if leaf.dtype == dtype]
            table = xp.asarray(np.stack([per_draw * factors[p] for p in paths]), dtype=dtype)
            rows.update({path: table[i] for i, path in enumerate(paths)})
        grads = {}
        for path, leaf in searched.items():
            noise = population.factors(path, unit=True)
            w = rows[path]
            if leaf.kind == "lowrank":
                left, right = noise  # (K, m, r), (K, n, r)
                draws, length, rank = left.shape
                # (K·r, m)ᵀ @ (K·r, n): one GEMM; for rank 1 both operands are views.
                weighted = (left * w[:, None, None]).transpose(0, 2, 1).reshape(-1, length)
                stacked = right.transpose(0, 2, 1).reshape(draws * rank, -1)
                grads[path] = (weighted.T @ stacked).reshape(leaf.shape)
            else:
                grads[path] = xp.asarray(xp.tensordot(w, noise, axes=1))  # 0-d stays an array
        return grads

    def _gradient_bounds(self, total_weight: float, scale: float) -> dict[str, float]:
        """A bound on ``max |g|`` per leaf for ``scale · Σ_i w_i ε̂_i`` with ``Σ|w_i|`` given.

        A unit normal of the generator is at most :data:`MAX_NORMAL` in magnitude, so an entry of
        ``ε̂`` is at most ``M`` (full) or ``√r · M²`` (low rank: ``r`` products over ``√r``).
        Known on the host before the step, it tells whether an overflow is possible without
        reading anything back from the device.
        """
        bounds = {}
        for path, leaf in self._leaves.items():
            if leaf.kind == "frozen":
                continue
            entry = MAX_NORMAL if leaf.kind == "full" else math.sqrt(leaf.rank) * MAX_NORMAL**2
            with np.errstate(over="ignore"):
                bounds[path] = float(np.float64(total_weight) * abs(scale) * entry)
        return bounds

    def _stats(
        self, values: np.ndarray, gradient_norm: float, sigmas: dict[str, float]
    ) -> GenerationStats:
        ok = ~np.isnan(values)
        ranked = values[ok]
        best_pos = int(np.argmax(ranked) if self._maximize else np.argmin(ranked))
        best, worst = (
            (ranked.max(), ranked.min()) if self._maximize else (ranked.min(), ranked.max())
        )
        finite = ranked[np.isfinite(ranked)]
        return GenerationStats(
            generation=self._generation - 1,
            best_fitness=float(best),
            mean_fitness=_safe_step.mean(finite),
            worst_fitness=float(worst),
            best_index=int(np.flatnonzero(ok)[best_pos]),
            num_failed=int((~ok).sum()),
            gradient_norm=gradient_norm,
            sigma=sigmas,
        )

    # -- checkpoints -------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "popsize": self._popsize,
            "sigma": self._sigma,
            "rank": self._rank,
            "learning_rate": self._learning_rate,
            "optimizer": self._optimizer_name,
            "optimizer_options": self._optimizer_options,
            "weight_decay": self._weight_decay,
            "seed": self._seed,
            "maximize": self._maximize,
            "mirrored": self._mirrored,
            "noise_reuse": self._noise_reuse,
            "fitness_shaping": self._shaping_name,
            "nan_policy": self._nan_policy,
            "noise_kinds": self.noise_kinds,
            "sigma_adaptation": _CUSTOM
            if self._adaptation is not None and self._adaptation_name is None
            else self._adaptation_name,
            "sigma_bounds": None if self._sigma_bounds is None else list(self._sigma_bounds),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint: parameters, optimizer state, seed, counters and configuration.

        The file is a NumPy ``.npz`` archive loadable without pickle, written atomically
        (a temporary file renamed over ``path``). A population handed out but not yet told is
        not stored: after loading, ``ask`` hands out the identical population again. Temporary
        files that killed saves of ``path`` left are removed here and by :meth:`load` (see
        ``eggroll_opt._checkpoint`` for how a live save's file is told from a stale one).

        Raises:
            FileNotFoundError: if the folder of ``path`` does not exist.
            ValueError: if ``path`` is a folder.
            OSError: if writing fails (no space, no permission); the message names ``path``,
                and the checkpoint already there, if any, is left as it was.
        """
        _checkpoint.save(
            path,
            strategy=type(self).__name__,
            config=self._config(),
            leaves=list(self._leaves.values()),
            params={p: to_numpy(v) for p, v in self._params.items()},
            optimizer_state=self._opt_state,
            generation=self._generation,
            adaptation_state=self._adaptation_state,
            restarts=self._restarts,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str | Backend = "auto",
        fitness_shaping: str | ShapingFunction | None = None,
        optimizer: GradientTransformation | None = None,
        sigma_adaptation: SigmaAdaptation | None = None,
    ) -> Self:
        """Rebuild a strategy from :meth:`save`'s file; it continues bit-identically.

        Args:
            path: the checkpoint file.
            backend: where to put the arrays (the checkpoint itself is device-independent).
            fitness_shaping: required if the saved strategy used a callable shaping.
            optimizer: required if the saved strategy used a custom GradientTransformation.
            sigma_adaptation: required if the saved strategy used a custom SigmaAdaptation.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: for a file that is not a checkpoint of this class or of this format
                version (a folder, an empty, truncated or damaged file, a ``.npy`` or any other
                file; the message names ``path`` and what is wrong), or when a callable that
                cannot be stored is not given again.
            OSError: if the file cannot be read (no permission).
        """
        data = _checkpoint.load(path, strategy=cls.__name__)
        config = dict(data.config)
        if config["fitness_shaping"] is None and fitness_shaping is None:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} used a custom fitness_shaping callable; pass it "
                "again as `fitness_shaping=`."
            )
        if config["optimizer"] is None and optimizer is None:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} used a custom optimizer; pass it again as "
                "`optimizer=`."
            )
        if config.get("sigma_adaptation") == _CUSTOM:
            if sigma_adaptation is None:
                raise ValueError(
                    f"checkpoint {os.fspath(path)!r} used a custom sigma_adaptation; pass it "
                    "again as `sigma_adaptation=`."
                )
            config["sigma_adaptation"] = sigma_adaptation
        config["fitness_shaping"] = fitness_shaping or config["fitness_shaping"]
        config["optimizer"] = optimizer or config["optimizer"]
        if config.get("sigma_bounds") is not None:
            config["sigma_bounds"] = tuple(config["sigma_bounds"])
        strategy = cls(unflatten(data.params), backend=backend, **config)
        strategy._restore(data)
        return strategy

    def restore(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint's parameters, optimizer state and counters into this strategy.

        Raises:
            FileNotFoundError: if ``path`` does not exist.
            ValueError: if the checkpoint's leaves (paths, shapes, dtypes, noise kinds) or
                seed differ from this strategy's, or for a file that :meth:`load` refuses.
        """
        data = _checkpoint.load(path, strategy=type(self).__name__)
        mine = list(self._leaves.values())

        def layout(leaves: list[LeafSpec]) -> list[tuple[str, str, tuple[int, ...], str]]:
            return [(leaf.path, leaf.kind, leaf.shape, leaf.dtype) for leaf in leaves]

        if layout(data.leaves) != layout(mine):
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} has other leaves than this strategy: "
                f"{[(leaf.path, leaf.shape, leaf.dtype, leaf.kind) for leaf in data.leaves]} vs "
                f"{[(leaf.path, leaf.shape, leaf.dtype, leaf.kind) for leaf in mine]}."
            )
        if data.config["seed"] != self._seed:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} has seed {data.config['seed']}, this strategy "
                f"{self._seed}."
            )
        saved = data.config.get("sigma_adaptation")
        if (saved is None) != (self._adaptation is None):
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} has sigma_adaptation={saved!r}, this strategy "
                f"{self._adaptation_name!r}: a run with adapted σ cannot continue with fixed σ "
                "or the other way round; use "
                f"{type(self).__name__}.load to rebuild the saved strategy."
            )
        self._restore(data)

    def _restore(self, data: _checkpoint.CheckpointData) -> None:
        self._params = {
            path: self._backend.asarray(value, dtype=np.dtype(self._leaves[path].dtype))
            for path, value in data.params.items()
        }
        template = self._optimizer.init(self._trainable())
        self._opt_state = _checkpoint.restore_optimizer_state(
            template, data.optimizer_state, self._backend
        )
        if self._adaptation is not None:
            template = self._init_adaptation()
            if data.adaptation_state is None:
                raise ValueError("checkpoint holds no step-size adaptation state.")
            self._adaptation_state = _checkpoint.restore_optimizer_state(
                template, data.adaptation_state, None
            )
        self._generation = data.generation
        self._restarts = data.restarts
        self._popsize = int(data.config["popsize"])  # a restart may have grown it
        self._population = None
        self._param_peaks = _safe_step.peak_magnitudes(self._backend.xp, self._params)

    def restart(
        self, params: Mapping[str, Any] | None = None, *, popsize: int | None = None
    ) -> None:
        """Start the search afresh (IPOP-style), keeping the seed and the generation count.

        The mean becomes ``params`` (default: the current mean), the optimizer state and σ
        (with any learned scales) return to their starting values, and the population size
        becomes ``popsize`` (default: unchanged). Noise keeps following the generation count,
        so a restarted run never repeats the noise of an earlier one. :func:`eggroll_opt.optimize`
        calls this when a run stagnates (its ``restarts`` option).

        Raises:
            ValueError: for ``params`` with other leaves, shapes or non-finite values, or a
                ``popsize`` that is not allowed; the strategy is then unchanged.
        """
        new_popsize = self._popsize if popsize is None else _check_int("popsize", popsize, 2)
        if self._mirrored and new_popsize % 2:
            raise ValueError(f"`popsize` must be even with mirrored sampling, got {popsize}.")
        mean = dict(self._params)
        if params is not None:
            flat = flatten(params)
            if set(flat) != set(self._params):
                raise ValueError(
                    f"`params` must have the leaves {sorted(self._params)}, got {sorted(flat)}."
                )
            for path, value in flat.items():
                leaf = self._leaves[path]
                array = self._backend.asarray(value, dtype=np.dtype(leaf.dtype))
                if tuple(array.shape) != leaf.shape:
                    raise ValueError(
                        f"`params` leaf {path!r} has shape {tuple(array.shape)}, expected "
                        f"{leaf.shape}."
                    )
                if not bool(self._backend.xp.isfinite(array).all()):
                    raise ValueError(f"`params` leaf {path!r} holds NaN or inf.")
                mean[path] = self._backend.xp.array(array, copy=True)
        self._params = mean
        self._popsize = new_popsize
        self._opt_state = self._optimizer.init(self._trainable())
        self._adaptation_state = self._init_adaptation()
        self._restarts += 1
        self._population = None
        self._param_peaks = _safe_step.peak_magnitudes(self._backend.xp, self._params)


class OpenES(Eggroll):
    """Standard (OpenAI-style) evolution strategies: every leaf gets dense, full-rank noise.

    The same machinery as :class:`Eggroll` (same shaping, optimizers, learning-rate meaning and
    checkpoints), so the two compare fairly. Each member costs ``m·n`` normals per matrix.
    ``rank`` applies only to leaves set to ``"lowrank"`` through ``noise_kinds``.

    Example:
        >>> import numpy as np, eggroll_opt as eo
        >>> es = eo.OpenES({"w": np.zeros((2, 2))}, popsize=8, sigma=0.1, learning_rate=0.1,
        ...                seed=0, backend="numpy")
        >>> es.noise_kinds
        {'w': 'full'}
    """

    _default_lowrank = False
