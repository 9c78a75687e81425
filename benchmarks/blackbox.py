"""Black-box benchmark: EGGROLL's step-size adaptations beside OpenES, SNES, CMA-ES and sep-CMA-ES.

What is measured. Each method minimises COCO/BBOB functions (instance 1) and one extra problem:

* ``f1`` sphere, ``f2`` separable ellipsoid, ``f8`` Rosenbrock, ``f10`` rotated ellipsoid,
  ``f15`` rotated Rastrigin, with BBOB's transformations (shift ``x_opt``, ``T_osz``,
  ``T_asy``, ``Λ^α``, rotations ``R`` and ``Q``) re-implemented here in vectorised NumPy: the
  whole population is evaluated in one call. Instance parameters come from the BBOB reference
  generator (``x_opt``, ``f_opt``, the rotations); for ``d <= 128`` ``x_opt`` and ``f_opt``
  are checked against the ``ioh`` package's problem when it is installed, and
  ``tests/test_blackbox_bench.py`` checks the values against ``ioh`` on random points.
  A rotation is the Gram-Schmidt orthonormalisation of the generator's Gaussian matrix; it is
  computed as a QR factorisation with a positive diagonal (the same matrix up to rounding):
  about 25 s for a 4096 x 4096 rotation on two cores, where building ioh's problem takes about
  48 s at d = 1024 and grows as ``d³``.
* ``ellrc``: ``Σ c_i (x_i - x_opt,i)²`` with f2's coefficients ``c_i = 10^(6 i/(d-1))`` and
  f2's ``x_opt``, without rotation or ``T_osz``. On the row-major matrix layout its
  conditioning is a product of a row factor and a column factor, the case EGGROLL's row x
  column noise scales are made for.

A d-dimensional point is one matrix leaf of shape ``(m, n)``, ``m`` the largest divisor of
``d`` not above ``√d`` (10 -> 2 x 5, 100 -> 10 x 10, 1024 -> 32 x 32, 4096 -> 64 x 64),
flattened row-major. Every method starts from the same ``x0`` (uniform in ``[-4, 4]^d``,
drawn from the seed and ``d``); methods that adapt their step start at σ = 2:

* ``eggroll-fixed``: ``Eggroll`` with fixed σ = 0.5 (Adam, the library's defaults);
* ``eggroll-leaf``, ``eggroll-scales``: ``Eggroll`` with ``sigma_adaptation="leaf"`` /
  ``"scales"`` (``"scales"`` is what ``"auto"`` selects); ``eggroll-csa``
  (``sigma_adaptation="csa"``, path-length control);
* ``openes``: ``OpenES`` (dense noise) with fixed σ = 0.5; ``snes``: ``OpenES`` with
  ``sigma_adaptation="scales"`` (separable NES);
* ``cma``: ``cmaes.CMA`` (only ``d <= 100``); ``sepcma``: ``cmaes.SepCMA``; both without
  restarts: a run ends when ``should_stop()`` says so (its best is then carried forward).

Population sizes are each library's default. Every run records the gap ``f(x) - f_opt`` of the
best point evaluated so far, and of the distribution's mean (evaluated outside the budget), at
evaluation counts on a log grid (10 points per decade plus the report budgets); the evaluations
needed to reach a gap of 1e-8 (exact to the evaluation); and the strategy's own time per
generation, median over generations: ask (including materialising the members as a
``(popsize, d)`` array) plus tell, without the fitness evaluation. A run stops at its budget or
at a gap <= 1e-8; later grid points then repeat its final values.

Budgets: 1e4 and 1e5 evaluations for d <= 100; 2.56e4 and 2.56e5 above (times
``--budget-scale``).

Run ``python -m benchmarks.blackbox --out DIR [--dims 10,100,1024,4096]
[--functions f1,f2,f8,f10,f15,ellrc] [--methods eggroll-scales,cma,...] [--seeds 0,1,2]
[--budget-scale 1.0] [--blas-threads 1]``; ``--quick`` is a smoke run (d = 10 and 100, f1 and
ellrc, budget 2e4, seed 0; about 20 s on two idle cores); ``--report`` rebuilds the report from
``DIR/blackbox.json``.
It writes ``DIR/blackbox.json`` (every run, machine information), ``DIR/blackbox.md`` (median
over seeds per method) and ``DIR/blackbox.png`` (median best gap against evaluations).
BLAS runs on one thread unless ``--blas-threads`` says otherwise (0: as the environment sets
it): with two threads on a busy two-core machine full CMA-ES's generations were about 20 times
slower. The full default run (d up to 4096) takes hours on a few cores.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ._measure import command_line, describe, machine

Array = NDArray[np.float64]

TARGET = 1e-8
INSTANCE = 1
FUNCTIONS = ("f1", "f2", "f8", "f10", "f15", "ellrc")
TITLES = {
    "f1": "f1 sphere",
    "f2": "f2 separable ellipsoid",
    "f8": "f8 Rosenbrock",
    "f10": "f10 rotated ellipsoid",
    "f15": "f15 rotated Rastrigin",
    "ellrc": "ellrc row x column ellipsoid",
}
METHODS = (
    "eggroll-fixed",
    "eggroll-leaf",
    "eggroll-scales",
    "eggroll-csa",
    "openes",
    "snes",
    "cma",
    "sepcma",
)
OPTIONAL_METHODS: tuple[str, ...] = ("snes-lr3",)
"""Run only when named: ``snes-lr3`` is ``snes`` with the learning rate of low-rank noise (3),
the comparison behind the default of 1 for dense noise."""
ALL_METHODS = METHODS + OPTIONAL_METHODS
DIMS = (10, 100, 1024, 4096)
SEEDS = (0, 1, 2)
SIGMA0 = 2.0
FIXED_SIGMA = 0.5
CMA_MAX_DIM = 100
IOH_CHECK_MAX_DIM = 128
QUICK_BUDGETS = (2_000, 20_000)
BLAS_THREADS = 1
"""BLAS threads during the runs (None: leave them). On a shared two-core machine a second
thread waiting for a busy core made full CMA-ES's generations about 20 times slower (d = 100);
one thread keeps the strategies' timings comparable. The rotated functions at d = 4096 evaluate
faster with more threads (``--blas-threads 2`` on an idle machine)."""
GRID_PER_DECADE = 10


# -- the BBOB reference generator ------------------------------------------------------------
# A Lehmer generator (multiplier 16807, modulus 2^31 - 1) behind a 32-slot shuffle table, as
# in the BBOB 2009 reference code; Gaussians by Box-Muller from two halves of one stream.
_MODULUS = 2**31 - 1
_MULTIPLIER = 16807
_SLOT_DIVISOR = 67108865
_BLOCK = 1 << 16
_CHUNK = 1 << 20


def _lehmer(seed: int, count: int) -> NDArray[np.int64]:
    """``16807^k · seed mod (2^31 - 1)`` for ``k = 1 .. count``, in blocks of jumps."""
    powers = np.empty(min(_BLOCK, count), np.int64)
    value = 1
    for k in range(powers.size):
        value = value * _MULTIPLIER % _MODULUS
        powers[k] = value
    out = np.empty(count, np.int64)
    state = seed
    for start in range(0, count, _BLOCK):
        stop = min(start + _BLOCK, count)
        out[start:stop] = powers[: stop - start] * state % _MODULUS  # < 2^62: exact in int64
        state = int(out[stop - 1])
    return out


def bbob_uniform(count: int, seed: int) -> Array:
    """``count`` uniform numbers in (0, 1] of the BBOB generator seeded with ``seed``.

    Example:
        >>> [round(float(u), 6) for u in bbob_uniform(2, 10001)]
        [0.531634, 0.355405]
    """
    seed = max(abs(int(seed)), 1)
    stream = _lehmer(seed, 40 + count)
    table = [int(v) for v in stream[39:7:-1]]  # slot i holds the (40 - i)-th number
    current = table[0]
    out = np.empty(count)
    for start in range(0, count, _CHUNK):
        fresh = stream[40 + start : 40 + min(start + _CHUNK, count)].tolist()
        drawn = [0] * len(fresh)
        for i, value in enumerate(fresh):
            slot = current // _SLOT_DIVISOR
            current = table[slot]
            table[slot] = value
            drawn[i] = current
        out[start : start + len(fresh)] = drawn
    out /= 2.147483647e9
    out[out == 0] = 1e-99
    return out


def bbob_gauss(count: int, seed: int) -> Array:
    """``count`` standard normal numbers of the BBOB generator (Box-Muller, cosine branch)."""
    uniform = bbob_uniform(2 * count, seed)
    out = np.sqrt(-2 * np.log(uniform[:count])) * np.cos(2 * math.pi * uniform[count:])
    out[out == 0] = 1e-99
    return out


@functools.lru_cache(maxsize=2)
def bbob_rotation(seed: int, dim: int) -> Array:
    """BBOB's orthogonal matrix for ``seed``: the generator's Gaussians, filled column by
    column, orthonormalised column after column (Gram-Schmidt), computed as the Q of a QR
    factorisation whose R has a positive diagonal. Read-only; cached."""
    gauss = bbob_gauss(dim * dim, seed).reshape(dim, dim).T  # B[i, j] = g[j·d + i]
    q, r = np.linalg.qr(gauss)
    rotation = q * np.sign(np.diag(r))[None, :]
    rotation.setflags(write=False)
    return rotation


def bbob_xopt(seed: int, dim: int) -> Array:
    """BBOB's optimum location: uniform on the grid of step 8e-4 in [-4, 4), 0 -> -1e-5."""
    x = 8 * np.floor(1e4 * bbob_uniform(dim, seed)) / 1e4 - 4
    x[x == 0] = -1e-5
    return x


def bbob_fopt(function_id: int, instance: int = INSTANCE) -> float:
    """BBOB's optimal value: a rounded Cauchy draw clipped to [-1000, 1000]."""
    base = _instance_seed(function_id, instance)
    ratio = float(bbob_gauss(1, base)[0] / bbob_gauss(1, base + 1)[0])
    return min(1000.0, max(-1000.0, round(100 * 100 * ratio) / 100))


def _instance_seed(function_id: int, instance: int = INSTANCE) -> int:
    return {4: 3, 18: 17}.get(function_id, function_id) + 10000 * instance


# -- BBOB transformations (rows are points) --------------------------------------------------
def t_osz(x: Array) -> Array:
    """The oscillation transformation ``T_osz``, element-wise."""
    nonzero = x != 0
    log_abs = np.log(np.abs(np.where(nonzero, x, 1.0)))
    c1 = np.where(x > 0, 10.0, 5.5)
    c2 = np.where(x > 0, 7.9, 3.1)
    wiggle = np.exp(log_abs + 0.049 * (np.sin(c1 * log_abs) + np.sin(c2 * log_abs)))
    return np.where(nonzero, np.sign(x) * wiggle, 0.0)


def t_asy(x: Array, beta: float) -> Array:
    """The asymmetry transformation ``T_asy^β`` along the last axis."""
    dim = x.shape[-1]
    exponent = np.arange(dim) / (dim - 1)
    positive = np.where(x > 0, x, 0.0)
    return np.where(x > 0, positive ** (1 + beta * exponent * np.sqrt(positive)), x)


def conditioning(dim: int, alpha: float) -> Array:
    """``α^((i)/(d-1))``, ``i = 0 .. d-1``: the coefficients of BBOB's ellipsoids (α = 1e6)."""
    return alpha ** (np.arange(dim) / (dim - 1))


# -- problems --------------------------------------------------------------------------------
def matrix_shape(dim: int) -> tuple[int, int]:
    """The matrix leaf a d-vector is laid out as: ``(m, d/m)``, ``m`` the largest divisor <= √d.

    Example:
        >>> matrix_shape(10), matrix_shape(100), matrix_shape(4096)
        ((2, 5), (10, 10), (64, 64))
    """
    rows = max(m for m in range(1, math.isqrt(dim) + 1) if dim % m == 0)
    return rows, dim // rows


@dataclass(frozen=True)
class Problem:
    """One benchmark problem at one dimension: ``gap(X)`` is ``f(x) - f_opt`` for each row."""

    name: str
    dim: int
    x_opt: Array
    f_opt: float
    gap: Callable[[Array], Array]
    reference: str

    @property
    def shape(self) -> tuple[int, int]:
        return matrix_shape(self.dim)

    def value(self, points: Array) -> Array:
        """``f(x)`` for each row of ``points`` (the gap plus ``f_opt``)."""
        return self.gap(points) + self.f_opt


def _function_id(name: str) -> int:
    return 2 if name == "ellrc" else int(name[1:])


def _check_with_ioh(function_id: int, dim: int, x_opt: Array, f_opt: float) -> str:
    """Compare the generated ``x_opt``/``f_opt`` with ioh's problem (when cheap and installed)."""
    if dim > IOH_CHECK_MAX_DIM:
        return "BBOB generator (ioh check skipped above d = 128)"
    try:
        problem = ioh_problem(function_id, dim)
    except ImportError:
        return "BBOB generator (ioh not installed)"
    ioh_x = np.asarray(problem.optimum.x, dtype=np.float64)
    if not np.allclose(ioh_x, x_opt, rtol=0, atol=1e-12) or float(problem.optimum.y) != f_opt:
        raise RuntimeError(
            f"the BBOB generator disagrees with ioh for f{function_id}, d = {dim}: "
            f"x_opt max diff {np.abs(ioh_x - x_opt).max():.3g}, "
            f"f_opt {f_opt} against {problem.optimum.y}"
        )
    return "BBOB generator, x_opt and f_opt equal ioh's"


def ioh_problem(function_id: int, dim: int, instance: int = INSTANCE) -> Any:
    """ioh's BBOB problem (evaluates one point at a time; construction costs ``O(d³)``)."""
    import ioh

    return ioh.get_problem(
        function_id, instance=instance, dimension=dim, problem_class=ioh.ProblemClass.BBOB
    )


def make_problem(name: str, dim: int, *, check_ioh: bool = True) -> Problem:
    """The problem ``name`` (one of :data:`FUNCTIONS`) at dimension ``dim`` >= 2, instance 1."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; choose from {', '.join(FUNCTIONS)}")
    if dim < 2:
        raise ValueError(f"dimension must be at least 2, got {dim}")
    function_id = _function_id(name)
    seed = _instance_seed(function_id)
    x_opt = bbob_xopt(seed, dim)
    if name == "f8":
        x_opt *= 0.75
    f_opt = 0.0 if name == "ellrc" else bbob_fopt(function_id)
    reference = "f2's x_opt; f_opt = 0 (not a BBOB function)"
    if name != "ellrc" and check_ioh:
        reference = _check_with_ioh(function_id, dim, x_opt, f_opt)
    x_opt.setflags(write=False)
    ellipsoid = conditioning(dim, 1e6)

    if name == "f1":

        def gap(points: Array) -> Array:
            return np.sum((points - x_opt) ** 2, axis=-1)

    elif name == "f2":

        def gap(points: Array) -> Array:
            return t_osz(points - x_opt) ** 2 @ ellipsoid

    elif name == "ellrc":

        def gap(points: Array) -> Array:
            return (points - x_opt) ** 2 @ ellipsoid

    elif name == "f8":
        factor = max(1.0, math.sqrt(dim) / 8)

        def gap(points: Array) -> Array:
            z = factor * (points - x_opt) + 1
            head, tail = z[:, :-1], z[:, 1:]
            return np.sum(100 * (head**2 - tail) ** 2 + (head - 1) ** 2, axis=-1)

    elif name == "f10":
        rotation = bbob_rotation(seed + 1_000_000, dim)

        def gap(points: Array) -> Array:
            return t_osz((points - x_opt) @ rotation.T) ** 2 @ ellipsoid

    else:  # f15: z = R Λ^10 Q T_asy^0.2(T_osz(R (x - x_opt)))
        first = bbob_rotation(seed + 1_000_000, dim)
        mixing = (first * np.sqrt(conditioning(dim, 10.0))[None, :]) @ bbob_rotation(seed, dim)

        def gap(points: Array) -> Array:
            z = t_asy(t_osz((points - x_opt) @ first.T), 0.2) @ mixing.T
            # 10 Σ (1 - cos 2πz) written as 20 Σ sin²(πz): no cancellation near the optimum
            return 20 * np.sum(np.sin(np.pi * z) ** 2, axis=-1) + np.sum(z**2, axis=-1)

    def guarded(points: Array) -> Array:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(gap(np.atleast_2d(np.asarray(points, np.float64))), np.float64)

    return Problem(name, dim, x_opt, f_opt, guarded, reference)


# -- methods ---------------------------------------------------------------------------------
_ADAPTATION_KIND = {
    "eggroll-leaf": "leaf",
    "eggroll-scales": "scales",
    "eggroll-csa": "csa",
    "snes": "scales",
    "snes-lr3": "scales",
}
_LEARNING_RATE = {"snes-lr3": 3.0}  # None elsewhere: the library's default


class _EsRunner:
    """An eggroll_opt strategy on one matrix leaf."""

    def __init__(self, method: str, x0: Array, shape: tuple[int, int], seed: int) -> None:
        import eggroll_opt as eo

        start = {"x": x0.reshape(shape).copy()}
        strategy = eo.OpenES if method in ("openes", "snes", "snes-lr3") else eo.Eggroll
        adaptation = _ADAPTATION_KIND.get(method)
        self.adaptation = adaptation
        sigma = FIXED_SIGMA if adaptation is None else SIGMA0
        self.es = strategy(
            start,
            sigma=sigma,
            sigma_adaptation=self.adaptation,
            learning_rate=_LEARNING_RATE.get(method),
            seed=seed,
            backend="numpy",
        )
        self.popsize = int(self.es.popsize)
        self.settings = {
            "strategy": type(self.es).__name__,
            "sigma_adaptation": self.adaptation,
            "sigma0": sigma,
            "learning_rate": float(self.es.learning_rate),
            "rank": self.es.rank,
        }

    def ask(self) -> Array:
        stacked = np.asarray(self.es.ask().stacked("x"), dtype=np.float64)
        return stacked.reshape(self.popsize, -1)

    def tell(self, points: Array, gaps: Array) -> None:
        self.es.tell(gaps)

    def mean(self) -> Array:
        return np.asarray(self.es.params["x"], dtype=np.float64).reshape(-1)

    def sigma(self) -> float | None:
        return float(self.es.sigmas["x"])

    def should_stop(self) -> bool:
        return False


class _CmaRunner:
    """A ``cmaes`` optimizer (full or separable covariance)."""

    def __init__(self, method: str, x0: Array, seed: int) -> None:
        import cmaes

        kind = cmaes.CMA if method == "cma" else cmaes.SepCMA
        self.optimizer = kind(mean=x0.copy(), sigma=SIGMA0, seed=seed)
        self.popsize = int(self.optimizer.population_size)
        self.settings = {"strategy": kind.__name__, "sigma0": SIGMA0}

    def ask(self) -> Array:
        return np.array([self.optimizer.ask() for _ in range(self.popsize)], dtype=np.float64)

    def tell(self, points: Array, gaps: Array) -> None:
        self.optimizer.tell(list(zip(points, gaps.tolist(), strict=True)))

    def mean(self) -> Array:
        return np.asarray(self.optimizer.mean, dtype=np.float64)

    def sigma(self) -> float | None:
        return float(self.optimizer._sigma)

    def should_stop(self) -> bool:
        return bool(self.optimizer.should_stop())


Runner = _EsRunner | _CmaRunner


def make_runner(method: str, x0: Array, shape: tuple[int, int], seed: int) -> Runner:
    """The method called ``method`` started at ``x0`` (a d-vector), seeded."""
    if method in ("cma", "sepcma"):
        return _CmaRunner(method, x0, seed)
    if method in ALL_METHODS:
        return _EsRunner(method, x0, shape, seed)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")


def initial_point(dim: int, seed: int) -> Array:
    """``x0``, uniform in ``[-4, 4]^d``, the same for every method and function."""
    return np.random.default_rng([seed, dim]).uniform(-4.0, 4.0, dim)


# -- bookkeeping -----------------------------------------------------------------------------
def log_grid(budget: int, extra: Sequence[int] = ()) -> list[int]:
    """Evaluation counts at which a run is recorded: 10 per decade up to ``budget``, plus
    ``extra`` and ``budget`` itself.

    Example:
        >>> log_grid(30, [25])
        [1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 30]
    """
    decades = math.log10(budget)
    points = {round(10 ** (k / GRID_PER_DECADE)) for k in range(int(decades * GRID_PER_DECADE) + 1)}
    points |= {int(b) for b in extra if b <= budget} | {int(budget)}
    return sorted(p for p in points if 1 <= p <= budget)


class Trace:
    """Best-so-far gap over evaluations, at the points of a grid; evaluations to the target.

    Args:
        grid: increasing evaluation counts to record at; the last one is the budget.
        target: the gap to reach.
    """

    def __init__(self, grid: Sequence[int], target: float = TARGET) -> None:
        self.grid = [int(g) for g in grid]
        self.budget = self.grid[-1]
        self.target = target
        self.evaluations = 0
        self.best = math.inf
        self.hit: int | None = None
        self.best_at: list[float] = []
        self.mean_at: list[float | None] = []
        self.sigma_at: list[float | None] = []

    @property
    def done(self) -> bool:
        """The budget is spent or the target reached."""
        return self.hit is not None or self.evaluations >= self.budget

    def crosses(self, count: int) -> bool:
        """Whether the next ``count`` evaluations reach a grid point."""
        position = len(self.best_at)
        return position < len(self.grid) and self.evaluations + count >= self.grid[position]

    def record(self, gaps: Array, mean_gap: float | None = None, sigma: float | None = None) -> int:
        """Count one generation's gaps (those beyond the budget are ignored); returns how many
        were counted. ``mean_gap`` and ``sigma`` describe the distribution that drew them."""
        gaps = np.asarray(gaps, dtype=np.float64)[: self.budget - self.evaluations]
        clean = np.where(np.isnan(gaps), np.inf, gaps)
        running = np.minimum.accumulate(np.concatenate([[self.best], clean]))[1:]
        start = self.evaluations
        if self.hit is None:
            reached = np.flatnonzero(running <= self.target)
            if reached.size:
                self.hit = start + int(reached[0]) + 1
        end = start + running.size
        while len(self.best_at) < len(self.grid) and self.grid[len(self.best_at)] <= end:
            self.best_at.append(float(running[self.grid[len(self.best_at)] - start - 1]))
            self.mean_at.append(mean_gap)
            self.sigma_at.append(sigma)
        if running.size:
            self.best = float(running[-1])
        self.evaluations = end
        return int(running.size)

    def finish(self, mean_gap: float | None, sigma: float | None) -> None:
        """Repeat the final values at the grid points the run did not reach."""
        while len(self.best_at) < len(self.grid):
            self.best_at.append(self.best)
            self.mean_at.append(mean_gap)
            self.sigma_at.append(sigma)


def run_one(
    problem: Problem, method: str, seed: int, budgets: Sequence[int], target: float = TARGET
) -> dict[str, Any]:
    """One run of ``method`` on ``problem`` up to ``max(budgets)`` evaluations or ``target``."""
    budget = max(budgets)
    grid = log_grid(budget, budgets)
    x0 = initial_point(problem.dim, seed)
    trace = Trace(grid, target)
    seconds: list[float] = []
    evaluation_seconds = 0.0
    stopped, error = "budget", None
    runner: Runner | None = None
    start = time.perf_counter()
    try:
        runner = make_runner(method, x0, problem.shape, seed)
        while not trace.done:
            tick = time.perf_counter()
            points = runner.ask()
            asked = time.perf_counter()
            gaps = problem.gap(points)
            mean_gap = None
            if trace.crosses(len(gaps)):
                mean_gap = float(problem.gap(runner.mean())[0])
            evaluation_seconds += time.perf_counter() - asked
            trace.record(gaps, mean_gap, runner.sigma())
            if trace.done:
                break
            told = time.perf_counter()
            runner.tell(points, gaps)
            seconds.append(asked - tick + time.perf_counter() - told)
            if runner.should_stop():
                stopped = "should_stop"
                break
    except Exception as exc:  # a diverging or failing method is a result, not a crash
        stopped, error = "error", f"{type(exc).__name__}: {exc}"
    final_mean: float | None = None
    final_sigma: float | None = None
    if runner is not None:
        try:
            final_mean = float(problem.gap(runner.mean())[0])
            final_sigma = runner.sigma()
        except Exception as exc:
            error = error or f"{type(exc).__name__}: {exc}"
    if trace.hit is not None:
        stopped = "target"
    trace.finish(final_mean, final_sigma)
    return {
        "function": problem.name,
        "dim": problem.dim,
        "shape": list(problem.shape),
        "method": method,
        "seed": seed,
        "popsize": None if runner is None else runner.popsize,
        "settings": None if runner is None else runner.settings,
        "budget": budget,
        "budgets": [int(b) for b in budgets],
        "evaluations": trace.evaluations,
        "generations": len(seconds),
        "stopped": stopped,
        "error": error,
        "evals_to_target": trace.hit,
        "target": target,
        "final_best_gap": trace.best,
        "final_mean_gap": final_mean,
        "final_sigma": final_sigma,
        "grid": grid,
        "best_gap": trace.best_at,
        "mean_gap": trace.mean_at,
        "sigma": trace.sigma_at,
        "ms_per_generation": 1e3 * statistics.median(seconds) if seconds else None,
        "strategy_s": sum(seconds),
        "evaluation_s": evaluation_seconds,
        "wall_s": time.perf_counter() - start,
    }


# -- the benchmark ---------------------------------------------------------------------------
@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[str]:
    """Limit BLAS to ``threads`` threads inside the block (through threadpoolctl); yields what
    was done, for the report."""
    if threads is None:
        yield "not limited"
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield "not limited (threadpoolctl not installed)"
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield f"limited to {threads}"


def budgets_for(dim: int, scale: float = 1.0, quick: bool = False) -> tuple[int, ...]:
    """The report budgets at dimension ``dim`` (the run goes to the last one)."""
    base = QUICK_BUDGETS if quick else (10_000, 100_000) if dim <= 100 else (25_600, 256_000)
    return tuple(max(1, round(b * scale)) for b in base)


def section_blackbox(
    quick: bool,
    *,
    dims: Sequence[int] | None = None,
    functions: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    budget_scale: float = 1.0,
    threads: int | None = BLAS_THREADS,
    progress: Callable[[str], None] | None = print,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; the result holds the settings, ``machine``, every run and a summary.

    ``quick`` means d = 10 and 100, f1 and ellrc, one seed and a budget of 2e4; the other
    arguments override the defaults (all dims, functions, methods and seeds 0, 1, 2).
    ``threads`` limits BLAS threads during the runs (:data:`BLAS_THREADS`; None leaves them).
    ``save``, when given, is called with the partial result after every run.
    """
    section = _run_section(
        quick, dims, functions, methods, seeds, budget_scale, threads, progress, save
    )
    section["summary"] = summarize(section["rows"])
    return section


def _run_section(
    quick: bool,
    dims: Sequence[int] | None,
    functions: Sequence[str] | None,
    methods: Sequence[str] | None,
    seeds: Sequence[int] | None,
    budget_scale: float,
    threads: int | None,
    progress: Callable[[str], None] | None,
    save: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """:func:`section_blackbox`'s loop; BLAS is limited during the runs, not while problems are
    built (a rotation's QR at d = 4096 uses every thread)."""
    dims = tuple(dims or ((10, 100) if quick else DIMS))
    functions = tuple(functions or (("f1", "ellrc") if quick else FUNCTIONS))
    methods = tuple(methods or METHODS)
    seeds = tuple(seeds if seeds is not None else ((0,) if quick else SEEDS))
    for name in functions:
        if name not in FUNCTIONS:
            raise ValueError(f"unknown function {name!r}; choose from {', '.join(FUNCTIONS)}")
    for method in methods:
        if method not in ALL_METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    section: dict[str, Any] = {
        "settings": {
            "dims": list(dims),
            "functions": list(functions),
            "methods": list(methods),
            "seeds": list(seeds),
            "budgets": {str(d): list(budgets_for(d, budget_scale, quick)) for d in dims},
            "budget_scale": budget_scale,
            "quick": quick,
            "target": TARGET,
            "sigma0": SIGMA0,
            "fixed_sigma": FIXED_SIGMA,
            "cma_max_dim": CMA_MAX_DIM,
            "instance": INSTANCE,
        },
        "machine": {},
        "problems": [],
        "rows": [],
    }
    with blas_threads(threads) as limited:
        section["machine"] = machine()
    section["settings"]["blas_threads"] = limited
    start = time.perf_counter()
    for dim in dims:
        budgets = budgets_for(dim, budget_scale, quick)
        for name in functions:
            built = time.perf_counter()
            problem = make_problem(name, dim)
            section["problems"].append(
                {
                    "function": name,
                    "dim": dim,
                    "shape": list(problem.shape),
                    "f_opt": problem.f_opt,
                    "reference": problem.reference,
                    "build_s": time.perf_counter() - built,
                }
            )
            for method in methods:
                if method == "cma" and dim > CMA_MAX_DIM:
                    continue
                for seed in seeds:
                    with blas_threads(threads):
                        row = run_one(problem, method, seed, budgets)
                    section["rows"].append(row)
                    if progress is not None:
                        reached = row["evals_to_target"]
                        note = f", {row['error']}" if row["error"] else ""
                        progress(
                            f"  {name} d={dim} {method} seed {seed}: best gap "
                            f"{row['final_best_gap']:.3g} after {row['evaluations']} evals "
                            f"({'target at ' + str(reached) if reached else row['stopped']}), "
                            f"{row['wall_s']:.1f} s{note}"
                        )
                    if save is not None:
                        save(section)
            del problem
    section["wall_s"] = time.perf_counter() - start
    return section


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (function, dim, method): medians over seeds."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["function"], row["dim"], row["method"]), []).append(row)
    summary = []
    for (name, dim, method), mine in groups.items():
        budgets = mine[0]["budgets"]
        at_budget = {}
        mean_at_budget = {}
        for budget in budgets:
            index = mine[0]["grid"].index(budget)
            at_budget[str(budget)] = _median([row["best_gap"][index] for row in mine])
            mean_at_budget[str(budget)] = _median([row["mean_gap"][index] for row in mine])
        hits = [row["evals_to_target"] for row in mine if row["evals_to_target"] is not None]
        summary.append(
            {
                "function": name,
                "dim": dim,
                "method": method,
                "seeds": len(mine),
                "popsize": mine[0]["popsize"],
                "best_gap": at_budget,
                "mean_gap": mean_at_budget,
                "reached": len(hits),
                "evals_to_target": _median(hits),
                "ms_per_generation": _median([row["ms_per_generation"] for row in mine]),
                "final_sigma": _median([row["final_sigma"] for row in mine]),
                "errors": [row["error"] for row in mine if row["error"]],
                "stopped": sorted({row["stopped"] for row in mine}),
            }
        )
    return summary


# -- report ----------------------------------------------------------------------------------
def _gap(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2e}"


def _count(value: float) -> str:
    """An evaluation count in short form: 20000 -> 2e4, 256000 -> 2.56e5."""
    return f"{value:.3g}".replace("e+0", "e").replace("e+", "e")


def _settings_text(rows: Sequence[dict[str, Any]]) -> list[str]:
    """``method: Strategy(key=value, ...)`` once per method, from the first run that has it."""
    seen: dict[str, str] = {}
    for row in rows:
        settings = row.get("settings")
        if row["method"] in seen or not settings:
            continue
        options = ", ".join(f"{k}={v!r}" for k, v in settings.items() if k != "strategy")
        seen[row["method"]] = f"{row['method']}: {settings['strategy']}({options})"
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    return [seen[m] for m in sorted(seen, key=lambda m: order.get(m, 99))]


def _target(value: float) -> str:
    """1e-08 -> 1e-8."""
    return f"{value:g}".replace("e-0", "e-")


def markdown_blackbox(section: dict[str, Any]) -> str:
    """The report: one table per (function, d), medians over seeds per method."""
    settings = section["settings"]
    summary = section.get("summary") or summarize(section["rows"])
    lines = [
        "## Black-box benchmark (BBOB instance 1 and a row x column ellipsoid)",
        "",
        f"Machine: {describe(section['machine'])}.",
        "",
        f"Seeds {', '.join(str(s) for s in settings['seeds'])}; medians over seeds. Gap: "
        f"f(x) - f_opt of the best point evaluated within the budget (the run stops at "
        f"{_target(settings['target'])}); mean gap: of the distribution's mean at the last budget. "
        f"'evals to {_target(settings['target'])}': median over the seeds that reached it "
        "(reached/seeds). ms/gen: the strategy's ask + tell per generation (members "
        "materialised, fitness excluded). Adaptive methods start at "
        f"σ = {settings['sigma0']:g}; eggroll-fixed and openes keep σ = "
        f"{settings['fixed_sigma']:g}. cma runs for d <= {settings['cma_max_dim']} only. "
        f"BLAS threads {settings.get('blas_threads', 'not recorded')}. "
        f"Total wall time {section.get('wall_s', math.nan):.0f} s.",
        "",
        "Settings per method (library defaults where not set here): "
        + "; ".join(_settings_text(section["rows"])),
    ]
    keys = []
    for name in settings["functions"]:
        for dim in settings["dims"]:
            keys.append((name, dim))
    for name, dim in keys:
        entries = [s for s in summary if s["function"] == name and s["dim"] == dim]
        if not entries:
            continue
        budgets = sorted(int(b) for b in entries[0]["best_gap"])
        shape = "x".join(str(v) for v in matrix_shape(dim))
        lines += [
            "",
            f"### {TITLES[name]}, d = {dim} ({shape})",
            "",
            "| method | popsize | "
            + " | ".join(f"gap @ {_count(b)}" for b in budgets)
            + f" | mean gap @ {_count(budgets[-1])} | evals to {_target(settings['target'])} | "
            "ms/gen | final σ | notes |",
            "|---|---:|" + "---:|" * (len(budgets) + 4) + "---|",
        ]
        order = {m: i for i, m in enumerate(ALL_METHODS)}
        for entry in sorted(entries, key=lambda e: order.get(e["method"], 99)):
            hits = (
                f"{entry['evals_to_target']:,.0f} ({entry['reached']}/{entry['seeds']})"
                if entry["reached"]
                else f"- (0/{entry['seeds']})"
            )
            ms = entry["ms_per_generation"]
            sigma = entry["final_sigma"]
            notes = "; ".join(sorted(set(entry["errors"])))
            if "should_stop" in entry["stopped"]:
                notes = "; ".join(filter(None, [notes, "stopped by should_stop()"]))
            lines.append(
                f"| {entry['method']} | {entry['popsize']} | "
                + " | ".join(_gap(entry["best_gap"][str(b)]) for b in budgets)
                + f" | {_gap(entry['mean_gap'][str(budgets[-1])])} | {hits} | "
                + ("-" if ms is None else f"{ms:.3f}")
                + f" | {'-' if sigma is None else f'{sigma:.2g}'} | {notes} |"
            )
    return "\n".join(lines)


def plot(section: dict[str, Any], path: str) -> bool:
    """Median best gap against evaluations, log-log, one panel per (function, d).

    Returns False (and draws nothing) when matplotlib is missing.
    """
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = section["settings"]
    functions, dims = settings["functions"], settings["dims"]
    figure, axes = plt.subplots(
        len(functions),
        len(dims),
        figsize=(4.2 * len(dims), 3.2 * len(functions)),
        squeeze=False,
    )
    colors = {m: f"C{i}" for i, m in enumerate(ALL_METHODS)}
    floor = settings["target"] / 100
    for i, name in enumerate(functions):
        for j, dim in enumerate(dims):
            ax = axes[i][j]
            for method in ALL_METHODS:
                runs = [
                    r
                    for r in section["rows"]
                    if r["function"] == name and r["dim"] == dim and r["method"] == method
                ]
                if not runs:
                    continue
                curve = np.median(np.array([r["best_gap"] for r in runs], dtype=float), axis=0)
                ax.plot(
                    runs[0]["grid"],
                    np.maximum(curve, floor),
                    color=colors[method],
                    label=method,
                    linewidth=1.2,
                )
            ax.axhline(settings["target"], color="gray", linestyle=":", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{TITLES[name]}, d = {dim}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(functions) - 1:
                ax.set_xlabel("evaluations")
            if j == 0:
                ax.set_ylabel("median best gap")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for row in axes:
        for ax in row:
            more = ax.get_legend_handles_labels()
            if len(more[1]) > len(labels):
                handles, labels = more
    figure.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _save_json(section: dict[str, Any], path: str) -> None:
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(section, file)
    os.replace(temporary, path)


def write_report(section: dict[str, Any], folder: str) -> str:
    """Write ``blackbox.json``, ``blackbox.md`` and ``blackbox.png`` to ``folder``."""
    os.makedirs(folder, exist_ok=True)
    section.setdefault("summary", summarize(section["rows"]))
    _save_json(section, os.path.join(folder, "blackbox.json"))
    text = markdown_blackbox(section)
    with open(os.path.join(folder, "blackbox.md"), "w") as file:
        file.write(text + "\n")
    plot(section, os.path.join(folder, "blackbox.png"))
    return text


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or rebuild its report), write the three files, print the tables."""
    parser = command_line("python -m benchmarks.blackbox", __doc__)
    parser.add_argument("--out", default="blackbox-results", help="results folder")
    parser.add_argument("--dims", help="comma list (default 10,100,1024,4096)")
    parser.add_argument("--functions", help=f"comma list of {','.join(FUNCTIONS)}")
    parser.add_argument(
        "--methods", help=f"comma list of {','.join(ALL_METHODS)} (default: all but snes-lr3)"
    )
    parser.add_argument("--seeds", help="comma list of seeds (default 0,1,2)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiplies budgets")
    parser.add_argument(
        "--blas-threads",
        type=int,
        default=BLAS_THREADS,
        help=f"BLAS threads during the runs (default {BLAS_THREADS}; 0 leaves them as they are)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    args = parser.parse_args(argv)
    if args.report:
        with open(os.path.join(args.out, "blackbox.json")) as file:
            section = json.load(file)
        section["summary"] = summarize(section["rows"])
        print(write_report(section, args.out))
        return 0
    if args.budget_scale <= 0:
        parser.error("--budget-scale must be positive")
    functions = _names(args.functions) if args.functions else None
    methods = _names(args.methods) if args.methods else None
    for name in functions or ():
        if name not in FUNCTIONS:
            parser.error(f"unknown function {name!r}; choose from {', '.join(FUNCTIONS)}")
    for method in methods or ():
        if method not in ALL_METHODS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")
    dims = _ints(args.dims) if args.dims else None
    if dims and min(dims) < 2:
        parser.error("--dims must be at least 2")
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "blackbox.json")
    section = section_blackbox(
        args.quick,
        dims=dims,
        functions=functions,
        methods=methods,
        seeds=_ints(args.seeds) if args.seeds else None,
        budget_scale=args.budget_scale,
        threads=args.blas_threads if args.blas_threads > 0 else None,
        save=lambda partial: _save_json(partial, json_path),
    )
    print(write_report(section, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
