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
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from . import _checkpoint
from ._backend import Backend, get_backend, to_numpy
from ._population import NOISE_KINDS, LeafSpec, Population, leaf_noise
from ._tree import flatten, unflatten
from .optim import GradientTransformation, get_optimizer
from .shaping import ShapingFunction, get_shaping

if TYPE_CHECKING:
    from ._evaluate import OptimizeResult

NAN_POLICIES = ("worst", "raise")


class AskTellError(ValueError):
    """``tell`` called out of order: before ``ask``, or twice for one ``ask``."""


@dataclass(frozen=True)
class GenerationStats:
    """What ``tell`` reports about the generation it just learned from.

    Fitness values are in the user's own terms (not negated), over members whose fitness was
    not NaN; ``best_index`` is the member with the best fitness.
    """

    generation: int
    best_fitness: float
    mean_fitness: float
    worst_fitness: float
    best_index: int
    num_failed: int
    gradient_norm: float


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


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
        params: the initial mean, a dict (nested allowed) of float arrays.
        popsize: number of members per generation (even when ``mirrored``).
        sigma: noise scale σ > 0.
        rank: rank r of the low-rank perturbations (1 <= r <= min(m, n) of each such leaf).
        learning_rate: step size of the optimizer.
        optimizer: ``"adam"``, ``"sgd"``, ``"momentum"`` or a
            :class:`~eggroll_opt.optim.GradientTransformation`.
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
        popsize: int,
        sigma: float,
        learning_rate: float,
        rank: int = 1,
        optimizer: str | GradientTransformation = "adam",
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
        self._popsize = _check_int("popsize", popsize, 2)
        if not isinstance(mirrored, bool | np.bool_):
            raise TypeError(f"`mirrored` must be a bool, got {mirrored!r}.")
        self._mirrored = bool(mirrored)
        if self._mirrored and self._popsize % 2:
            raise ValueError(
                f"`popsize` must be even with mirrored sampling, got {popsize} "
                "(use an even popsize or mirrored=False)."
            )
        self._sigma = _check_float("sigma", sigma, positive=True)
        self._learning_rate = _check_float("learning_rate", learning_rate, positive=True)
        self._weight_decay = _check_float("weight_decay", weight_decay, positive=False)
        self._rank = _check_int("rank", rank, 1)
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

        flat = flatten(params)
        self._leaves = self._leaf_specs(flat, noise_kinds)
        self._params = {
            path: self._backend.xp.array(self._backend.asarray(value), copy=True)
            for path, value in flat.items()
        }
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
        self._generation = 0
        self._population: Population | None = None

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
                if self._rank > min(leaf.matrix_shape):
                    raise ValueError(
                        f"`rank`={self._rank} exceeds min(m, n)={min(leaf.matrix_shape)} of leaf "
                        f"{path!r} (viewed as {leaf.matrix_shape}); lower the rank or give "
                        "that leaf noise_kinds 'full'."
                    )
            leaves[path] = leaf
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
        """The current mean, in the tree structure given (arrays on :attr:`backend`)."""
        return unflatten(self._params)

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
        """Noise scale σ."""
        return self._sigma

    @property
    def rank(self) -> int:
        """Rank of the low-rank perturbations."""
        return self._rank

    @property
    def seed(self) -> int:
        """The seed every noise draw derives from."""
        return self._seed

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``."""
        return self._backend.name

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
                path: leaf_noise(self._backend, self._seed, leaf, epoch, 0, draws, self._rank)
                for path, leaf in self._leaves.items()
                if leaf.kind != "frozen"
            }
            self._population = Population(
                backend=self._backend,
                leaves=self._leaves,
                base=self._params,
                noise=noise,
                seed=self._seed,
                generation=self._generation,
                epoch=epoch,
                popsize=self._popsize,
                sigma=self._sigma,
                rank=self._rank,
                mirrored=self._mirrored,
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
        grads = self._loss_gradient(population, weights)
        gradient_norm = self._norm(grads)
        updates, self._opt_state = self._optimizer.update(grads, self._opt_state, self._trainable())
        xp = self._backend.xp
        params = dict(self._params)  # new arrays: the old mean stays valid for its population
        for path, update in updates.items():
            params[path] = xp.asarray(params[path] + update, dtype=params[path].dtype)
        self._params = params
        self._population = None
        self._generation += 1
        return self._stats(values, gradient_norm)

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
        from ._evaluate import optimize  # _evaluate builds on this module

        return optimize(self, fitness_fn, generations, **options)

    def _validate_fitness(self, fitness: Any) -> np.ndarray:
        if isinstance(fitness, str | bytes | Mapping) or fitness is None:
            raise TypeError(
                f"`fitness` must be a sequence of {self._popsize} real numbers, got "
                f"{type(fitness).__name__}."
            )
        try:
            array = np.asarray(to_numpy(fitness))
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

    def _loss_gradient(self, population: Population, weights: np.ndarray) -> dict[str, Any]:
        """``-g`` per trainable leaf (see the module docstring), one GEMM per low-rank leaf."""
        xp = self._backend.xp
        per_draw = weights * population.signs
        if self._mirrored:
            per_draw = per_draw[0::2] + per_draw[1::2]
        scale = -1.0 / (self._popsize * self._sigma)
        grads = {}
        for path, leaf in self._leaves.items():
            if leaf.kind == "frozen":
                continue
            noise = population.factors(path)
            if leaf.kind == "lowrank":
                left, right = noise  # (K, m, r), (K, n, r)
                draws, rows, rank = left.shape
                w = xp.asarray(per_draw * (scale / math.sqrt(rank)), dtype=left.dtype)
                # (K·r, m)ᵀ @ (K·r, n): one GEMM; for rank 1 both operands are views.
                weighted = (left * w[:, None, None]).transpose(0, 2, 1).reshape(-1, rows)
                stacked = right.transpose(0, 2, 1).reshape(draws * rank, -1)
                grads[path] = (weighted.T @ stacked).reshape(leaf.shape)
            else:
                w = xp.asarray(per_draw * scale, dtype=noise.dtype)
                grads[path] = xp.asarray(xp.tensordot(w, noise, axes=1))  # 0-d stays an array
        return grads

    def _norm(self, grads: Mapping[str, Any]) -> float:
        xp = self._backend.xp
        return math.sqrt(sum(float(xp.linalg.norm(g.reshape(-1))) ** 2 for g in grads.values()))

    def _stats(self, values: np.ndarray, gradient_norm: float) -> GenerationStats:
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
            mean_fitness=float(finite.mean()) if finite.size else float("nan"),
            worst_fitness=float(worst),
            best_index=int(np.flatnonzero(ok)[best_pos]),
            num_failed=int((~ok).sum()),
            gradient_norm=gradient_norm,
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
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint: parameters, optimizer state, seed, counters and configuration.

        The file is a NumPy ``.npz`` archive loadable without pickle, written atomically
        (a temporary file renamed over ``path``). A population handed out but not yet told is
        not stored: after loading, ``ask`` hands out the identical population again.
        """
        _checkpoint.save(
            path,
            strategy=type(self).__name__,
            config=self._config(),
            leaves=list(self._leaves.values()),
            params={p: to_numpy(v) for p, v in self._params.items()},
            optimizer_state=self._opt_state,
            generation=self._generation,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: str | Backend = "auto",
        fitness_shaping: str | ShapingFunction | None = None,
        optimizer: GradientTransformation | None = None,
    ) -> Self:
        """Rebuild a strategy from :meth:`save`'s file; it continues bit-identically.

        Args:
            path: the checkpoint file.
            backend: where to put the arrays (the checkpoint itself is device-independent).
            fitness_shaping: required if the saved strategy used a callable shaping.
            optimizer: required if the saved strategy used a custom GradientTransformation.

        Raises:
            ValueError: for a file that is not a checkpoint of this class or of this format
                version, or when a callable that cannot be stored is not given again.
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
        config["fitness_shaping"] = fitness_shaping or config["fitness_shaping"]
        config["optimizer"] = optimizer or config["optimizer"]
        strategy = cls(unflatten(data.params), backend=backend, **config)
        strategy._restore(data)
        return strategy

    def restore(self, path: str | os.PathLike[str]) -> None:
        """Load a checkpoint's parameters, optimizer state and counters into this strategy.

        Raises:
            ValueError: if the checkpoint's leaves (paths, shapes, dtypes, noise kinds) or
                seed differ from this strategy's.
        """
        data = _checkpoint.load(path, strategy=type(self).__name__)
        mine = list(self._leaves.values())
        if data.leaves != mine:
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
        self._generation = data.generation
        self._population = None


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
