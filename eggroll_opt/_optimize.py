"""The ask/evaluate/tell loop: :func:`optimize`, with early stopping, checkpoints and restarts.

It drives any strategy with ``ask``/``tell`` (:class:`~eggroll_opt.Eggroll`,
:class:`~eggroll_opt.OpenES`) through :func:`~eggroll_opt.evaluate`. It imports no strategy:
the strategy module imports it, for :meth:`Eggroll.optimize`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import numbers
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _parts
from ._backend import to_numpy
from ._evaluate import (
    FAILURE_POLICIES,
    Evaluation,
    EvaluationError,
    _check_int,
    _check_timeout,
    _check_worker_backend,
    evaluate,
)
from ._executors import _resolve_executor
from ._tree import tree_map

if TYPE_CHECKING:
    from ._strategy import Eggroll, GenerationStats


@dataclass(frozen=True)
class GenerationReport:
    """What each callback of :func:`optimize` receives after a generation.

    Attributes:
        generation: the generation just told.
        stats: what ``tell`` returned.
        evaluation: what :func:`evaluate` returned.
        seconds: wall time of the generation (ask, evaluate, tell).
        elapsed: wall time since :func:`optimize` started.
        best_fitness: best fitness of any member so far in this run.
        strategy: the strategy (read ``strategy.params`` for the new mean).
    """

    generation: int
    stats: GenerationStats
    evaluation: Evaluation
    seconds: float
    elapsed: float
    best_fitness: float
    strategy: Eggroll


@dataclass(frozen=True)
class OptimizeResult:
    """What :func:`optimize` returns.

    Attributes:
        params: the final mean (the strategy's ``params``).
        generations: generations completed in this call.
        history: ``tell``'s statistics, one per generation.
        best_fitness: best member fitness seen in this call.
        best_generation: the generation it was seen in.
        stop_reason: ``"generations"``, ``"target"``, ``"patience"`` or ``"callback"``.
        num_failed: failed member evaluations over the run.
        seconds: wall time.
        best_params: the parameters of the best member seen (host NumPy arrays; None if no
            member had a finite fitness). A restart never loses them.
        restarts: the generations after which the run restarted (see ``restarts``).
    """

    params: dict[str, Any]
    generations: int
    history: list[GenerationStats]
    best_fitness: float
    best_generation: int
    stop_reason: str
    num_failed: int
    seconds: float
    best_params: dict[str, Any] | None = None
    restarts: list[int] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"OptimizeResult(generations={self.generations}, best_fitness={self.best_fitness:.6g}, "
            f"best_generation={self.best_generation}, stop_reason={self.stop_reason!r}, "
            f"restarts={len(self.restarts)}, num_failed={self.num_failed}, "
            f"seconds={self.seconds:.3g})"
        )


Callback = Callable[[GenerationReport], Any]


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional: no bar without it
        return None
    return tqdm(total=total, unit="gen", dynamic_ncols=True)


def optimize(
    strategy: Eggroll,
    fitness_fn: Callable[[Any], Any],
    generations: int,
    *,
    executor: concurrent.futures.Executor | str | None = None,
    vectorized: bool = False,
    callbacks: Callback | Sequence[Callback] = (),
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10,
    target: float | None = None,
    patience: int | None = None,
    timeout: float | None = None,
    max_retries: int = 2,
    failure_policy: str = "worst",
    chunks_per_worker: int = 1,
    worker_backend: str | None = None,
    restarts: int = 0,
    restart_patience: int | None = None,
    restart_popsize_factor: float = 2.0,
) -> OptimizeResult:
    """Run ask / :func:`evaluate` / tell for up to ``generations`` generations.

    Args:
        strategy: an :class:`~eggroll_opt.Eggroll` or :class:`~eggroll_opt.OpenES`.
        fitness_fn: as in :func:`evaluate`.
        generations: how many generations to run in this call (>= 1).
        executor: as in :func:`evaluate`; a pool named here (``"threads"``, ``"processes"``) is
            made once for the whole run and shut down at its end.
        vectorized: ``fitness_fn`` takes the population, in process or in parts on threads
            (see :func:`evaluate`).
        callbacks: callables given a :class:`GenerationReport` after each generation; one that
            returns True stops the run after this generation (all are called first).
        progress: show a tqdm progress bar (if tqdm is installed; nothing otherwise).
        checkpoint: a file to ``strategy.save`` to every ``checkpoint_every`` generations and
            when the run ends normally or stops early. Resume with ``Eggroll.load(path)``.
        checkpoint_every: generations between checkpoints.
        target: stop once a member's fitness is at least this good (<= when minimizing).
        patience: stop after this many generations without a better member.
        timeout: per-generation deadline in seconds (see :func:`evaluate`).
        max_retries: see :func:`evaluate`.
        failure_policy: ``"worst"``: failed members are told as NaN, which the strategy ranks
            below every other member (its ``nan_policy="raise"`` refuses them instead);
            ``"raise"``: any failed member stops the run with :class:`EvaluationError`.
            A generation in which every member failed always raises.
        chunks_per_worker: see :func:`evaluate`.
        worker_backend: the backend an executor's workers rebuild members with; see
            :func:`evaluate`.
        restarts: how many times the run may restart when it stagnates (IPOP-style): after
            ``restart_patience`` generations without a better member since the last (re)start,
            ``strategy.restart`` starts again from the best member seen, with σ and the
            optimizer state reset and the population ``restart_popsize_factor`` times larger.
            ``patience`` stops the run only once no restart is left.
        restart_patience: generations without improvement that trigger a restart; default
            ``10 + ⌈30 d / popsize⌉`` for ``d`` searched numbers (CMA-ES's stagnation horizon),
            at most 200.
        restart_popsize_factor: growth of the population at each restart (>= 1).

    Returns:
        An :class:`OptimizeResult`.

    Example:
        >>> import numpy as np, eggroll_opt as eo
        >>> es = eo.Eggroll({"w": np.zeros((3, 4))}, popsize=16, sigma=0.1,
        ...                 learning_rate=0.05, seed=0, backend="numpy")
        >>> result = eo.optimize(es, lambda p: float(np.sum((p["w"] - 1) ** 2)), 30,
        ...                      progress=False, patience=10)
        >>> result.generations, result.best_fitness < 12.0
        (30, True)
    """
    if not all(hasattr(strategy, name) for name in ("ask", "tell", "restart", "save")):
        raise TypeError(
            f"`strategy` must be an eggroll_opt.Eggroll or OpenES, got {type(strategy).__name__}."
        )
    if not callable(fitness_fn):
        raise TypeError(f"`fitness_fn` must be callable, got {fitness_fn!r}.")
    generations = _check_int("generations", generations, 1)
    checkpoint_every = _check_int("checkpoint_every", checkpoint_every, 1)
    if patience is not None:
        patience = _check_int("patience", patience, 1)
    if target is not None and (isinstance(target, bool) or not isinstance(target, numbers.Real)):
        raise TypeError(f"`target` must be a real number or None, got {target!r}.")
    if failure_policy not in FAILURE_POLICIES:
        raise ValueError(
            f"`failure_policy` must be one of {FAILURE_POLICIES}, got {failure_policy!r}."
        )
    if callable(callbacks):
        callbacks = (callbacks,)
    if isinstance(callbacks, str) or not isinstance(callbacks, Iterable):
        raise TypeError(f"`callbacks` must be a sequence of callables, got {callbacks!r}.")
    callbacks = tuple(callbacks)
    for callback in callbacks:
        if not callable(callback):
            raise TypeError(f"`callbacks` must hold callables, got {callback!r}.")
    if vectorized:
        _parts.check_executor(executor, worker_backend)
    _check_timeout(timeout)
    _check_int("max_retries", max_retries, 0)
    _check_int("chunks_per_worker", chunks_per_worker, 1)
    _check_worker_backend(worker_backend, executor)
    restarts = _check_int("restarts", restarts, 0)
    if restart_patience is None:
        restart_patience = min(200, 10 + math.ceil(30 * strategy.num_params / strategy.popsize))
    restart_patience = _check_int("restart_patience", restart_patience, 1)
    if (
        isinstance(restart_popsize_factor, bool)
        or not isinstance(restart_popsize_factor, numbers.Real)
        or not 1 <= restart_popsize_factor < math.inf
    ):
        raise ValueError(
            f"`restart_popsize_factor` must be a number >= 1, got {restart_popsize_factor!r}."
        )
    maximize = strategy.maximize

    def better(a: float, b: float) -> bool:
        return a > b if maximize else a < b

    remote, owned = _resolve_executor(executor)
    bar = _progress_bar(generations, bool(progress))
    history: list[GenerationStats] = []
    best_fitness, best_generation = (-math.inf if maximize else math.inf), -1
    stop_reason, num_failed, since_better = "generations", 0, 0
    best_params: dict[str, Any] | None = None
    restarted_at: list[int] = []
    segment_best, since_segment_better = (-math.inf if maximize else math.inf), 0
    saved_at = strategy.generation
    start = time.perf_counter()
    limits = contextlib.ExitStack()
    try:
        if vectorized and remote is not None:  # parts on threads: BLAS shares the cores
            limits.enter_context(_parts.blas_shared_by(remote.workers))
        for _ in range(generations):
            generation_start = time.perf_counter()
            population = strategy.ask()
            evaluation = evaluate(
                population,
                fitness_fn,
                remote,
                vectorized=vectorized,
                timeout=timeout,
                max_retries=max_retries,
                chunks_per_worker=chunks_per_worker,
                worker_backend=worker_backend,
            )
            num_failed += evaluation.num_failed
            if evaluation.num_failed == len(population) or (
                evaluation.failures and failure_policy == "raise"
            ):
                first = evaluation.failures[evaluation.failed[0]]
                raise EvaluationError(
                    f"generation {population.generation}: {evaluation.num_failed} of "
                    f"{len(population)} members failed (failure_policy={failure_policy!r}); "
                    f"member {first.index}: {first.reason}: {first.message}",
                    evaluation,
                )
            stats = strategy.tell(evaluation.fitness)
            history.append(stats)
            if better(stats.best_fitness, best_fitness):
                best_fitness, best_generation, since_better = (
                    stats.best_fitness,
                    stats.generation,
                    0,
                )
                best_params = _host_copy(population[stats.best_index].params())
            else:
                since_better += 1
            if better(stats.best_fitness, segment_best):
                segment_best, since_segment_better = stats.best_fitness, 0
            else:
                since_segment_better += 1
            now = time.perf_counter()
            report = GenerationReport(
                generation=stats.generation,
                stats=stats,
                evaluation=evaluation,
                seconds=now - generation_start,
                elapsed=now - start,
                best_fitness=best_fitness,
                strategy=strategy,
            )
            if bar is not None:
                bar.set_postfix(best=f"{best_fitness:.4g}", failed=evaluation.num_failed)
                bar.update(1)
            stop_requests = [bool(callback(report)) for callback in callbacks]
            if checkpoint is not None and strategy.generation % checkpoint_every == 0:
                strategy.save(checkpoint)
                saved_at = strategy.generation
            if any(stop_requests):
                stop_reason = "callback"
            elif target is not None and not better(float(target), best_fitness):
                stop_reason = "target"
            elif len(restarted_at) < restarts and since_segment_better >= restart_patience:
                popsize = math.ceil(strategy.popsize * restart_popsize_factor)
                strategy.restart(best_params, popsize=popsize + popsize % 2)
                restarted_at.append(stats.generation)
                segment_best, since_segment_better = (-math.inf if maximize else math.inf), 0
                since_better = 0
            elif patience is not None and since_better >= patience:
                stop_reason = "patience"
            if stop_reason != "generations":
                break
        if checkpoint is not None and saved_at != strategy.generation:
            strategy.save(checkpoint)
    finally:
        limits.close()
        if bar is not None:
            bar.close()
        if owned and remote is not None:
            remote.shutdown(wait=True, cancel_futures=True)
    return OptimizeResult(
        params=strategy.params,
        generations=len(history),
        history=history,
        best_fitness=best_fitness,
        best_generation=best_generation,
        stop_reason=stop_reason,
        num_failed=num_failed,
        seconds=time.perf_counter() - start,
        best_params=best_params,
        restarts=restarted_at,
    )


def _host_copy(tree: Any) -> dict[str, Any]:
    """Host copies of a parameter tree's arrays (never views of the strategy's arrays)."""
    return tree_map(lambda leaf: np.array(to_numpy(leaf), copy=True), tree)
