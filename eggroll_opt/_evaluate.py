"""Evaluate a population anywhere: the evaluation loop, its accounting and its results.

:func:`evaluate` gives every member of a population exactly one fitness value or one recorded
failure, in process (optionally with a vectorised fitness that takes the whole
:class:`~eggroll_opt.Population`), on any :class:`concurrent.futures.Executor` (threads, a process
pool), or on a :class:`~eggroll_opt.RemoteExecutor` such as :class:`~eggroll_opt.ProcessPool` or
the Dask adapter ``eggroll_opt.integrations.dask.DaskExecutor``. The executors are in
``_executors.py``, what a worker runs in ``_worker.py``, and the ask/evaluate/tell loop built on
this, :func:`~eggroll_opt.optimize`, in ``_optimize.py``; this module knows nothing of strategies.

What travels (an executor other than in-process):

* once per generation, a *broadcast*: the base parameters as host (NumPy) arrays, the fitness
  function, one template :class:`~eggroll_opt.MemberSpec` and the backend members are rebuilt
  with (``worker_backend``); a process pool or Dask delivers it once per worker; threads share
  it;
* per task, a chunk of member indices (a ``range`` for the contiguous chunks of a generation);
* back, one float per member plus a short record per failed member.

Each worker copies the base once per generation (aligned, writable, C-ordered host arrays, or one
device copy per leaf with ``worker_backend="cupy"``) and rebuilds its members from it, generating
each leaf's noise once per block of members.

Accounting (every executor): a member's fitness is recorded at most once per generation (the
first result wins, later ones are counted in :attr:`Evaluation.duplicates` and ignored). A task
whose worker died is retried in three steps, so that a member that kills its worker is found
and the others complete:

1. a lost chunk is split: its members are resubmitted one per task, a few tasks at a time;
2. a member whose single-member task is lost again is queued to run *alone* (nothing else of
   the generation in flight), where a lost worker can be blamed on it;
3. a member that loses its worker while running alone more than ``max_retries`` times is
   reported failed with reason ``"worker_lost"``.

Steps 1 and 2 happen at most once per member; an engine that retries lost tasks itself (Dask's
``allowed-failures``) reports how many attempts one loss stands for, and they count against the
same budget, so retries are never multiplied. Only the lost task's members run again: a
:class:`~eggroll_opt.ProcessPool` or a Dask cluster loses just the task of the worker that died.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
import numbers
import pickle
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _parts
from ._backend import host_values, is_cupy_array, to_numpy
from ._evaluation import Evaluation, EvaluationError, FailureReason, MemberFailure, values_of
from ._executors import Broadcast, FailureKind, RemoteExecutor, _resolve_executor
from ._population import Population, chunk_ranges
from ._tree import flatten, unflatten
from ._worker import _as_fitness, _ChunkResult, _describe, _Payload, _run_chunk

FAILURE_POLICIES = ("worst", "raise")
WORKER_BACKENDS = ("numpy", "cupy", "auto")


# -- the evaluation -----------------------------------------------------------------------------
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}.")
    return int(value)


def _check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"`timeout` must be a number of seconds or None, got {timeout!r}.")
    seconds = float(timeout)
    if not seconds > 0:
        raise ValueError(f"`timeout` must be > 0 seconds, got {timeout}.")
    return seconds


def _check_worker_backend(worker_backend: Any, executor: Any) -> str:
    """The backend workers rebuild members with (``"numpy"`` when ``worker_backend`` is None).

    Raises:
        ValueError: for an unknown name, or a backend given without an executor (in process,
            members are on the strategy's backend).
    """
    if worker_backend is None:
        return "numpy"
    if not isinstance(worker_backend, str) or worker_backend not in WORKER_BACKENDS:
        raise ValueError(
            f"`worker_backend` must be None or one of {WORKER_BACKENDS}, got {worker_backend!r}."
        )
    if executor is None:
        raise ValueError(
            f"`worker_backend`={worker_backend!r} applies to an executor's workers; without "
            "`executor` members are rebuilt in this process on the strategy's backend."
        )
    return worker_backend


def evaluate(
    population: Population,
    fitness_fn: Callable[[Any], Any],
    executor: concurrent.futures.Executor | str | None = None,
    *,
    vectorized: bool = False,
    timeout: float | None = None,
    max_retries: int = 2,
    chunks_per_worker: int = 1,
    worker_backend: str | None = None,
) -> Evaluation:
    """Give every member of ``population`` one fitness value or one recorded failure.

    Args:
        population: what ``strategy.ask()`` returned.
        fitness_fn: called with one member's parameter tree, returns one real number (a NumPy
            or CuPy scalar is fine). With ``vectorized=True`` it is called once with the whole
            :class:`~eggroll_opt.Population` and returns ``popsize`` values.
        executor: ``None`` (in this process, arrays on the strategy's backend), ``"threads"``,
            ``"processes"`` (a pool made for this call; pass an executor to reuse one), any
            :class:`concurrent.futures.Executor`, or a :class:`RemoteExecutor`
            (:class:`ProcessPool`, ``eggroll_opt.integrations.dask.DaskExecutor``). Executors
            get host (NumPy) arrays unless ``worker_backend`` says otherwise.
        vectorized: ``fitness_fn`` takes the population (a :class:`~eggroll_opt.Population`)
            and returns its values. In process, or with ``executor="threads"`` (or a
            :class:`~concurrent.futures.ThreadPoolExecutor`) in ``workers ×
            chunks_per_worker`` parts on the threads at once, BLAS limited so the parts share
            the cores: a NumPy forward pass runs on every core (``_parts.py``).
        timeout: seconds; the call returns by then (plus the time to collect what finished),
            and members without a result fail with reason ``"timeout"``. What happens to a
            fitness call still running then depends on where it runs (a running Python call
            cannot be interrupted from outside):

            * ``executor=None``: the deadline is checked between members, so the call returns
              only when the member running at the deadline returns; later members are not
              started.
            * ``"threads"``: its daemon threads are left running the call in the background;
              its result is dropped, the chunk stops before its next member, and neither the
              evaluation nor the interpreter's exit waits for it. A
              :class:`~concurrent.futures.ThreadPoolExecutor` of your own works the same way
              but keeps that thread busy until the call returns, and Python waits for its
              threads at exit.
            * ``"processes"`` / :class:`ProcessPool`: the processes running late tasks are
              ended and replaced; other executors cancel what they can (Dask lets a running
              task finish unobserved).
        max_retries: how often a member whose worker died while it ran alone is run again.
        chunks_per_worker: tasks per worker per generation (1 sends the base parameters once per
            worker; more balance uneven fitness costs).
        worker_backend: the array library an executor's workers rebuild members with, whatever
            the strategy's backend: ``None`` (default) or ``"numpy"``: host arrays; ``"cupy"``:
            each worker copies the base to its GPU once per generation, generates the noise
            there and hands ``fitness_fn`` CuPy arrays (CuPy scalars it returns are read back
            once per task); ``"auto"``: CuPy on workers that have a GPU, NumPy on the others.
            The base travels as host arrays either way. The default is NumPy for threads too,
            although they share this process's GPU: a fitness function run on an executor
            then receives NumPy arrays whatever backend ``"auto"`` resolved to (pass
            ``"cupy"`` to rebuild members on the shared GPU). Only with an executor.

    Returns:
        An :class:`Evaluation`: ``fitness`` (NaN for failed members) and ``failures``.

    Raises:
        EvaluationError: if the executor fails in a way that is not a lost worker (for example
            a fitness function the workers cannot import), or ``vectorized`` fitness raises.

    Example:
        >>> import numpy as np, eggroll_opt as eo
        >>> es = eo.Eggroll({"w": np.zeros(3)}, popsize=4, sigma=0.1, learning_rate=0.1,
        ...                 seed=0, backend="numpy")
        >>> def loss(params):
        ...     if params["w"][0] > 0:  # one member of each mirrored pair
        ...         raise ValueError("out of range")
        ...     return float(np.sum(params["w"] ** 2))
        >>> result = eo.evaluate(es.ask(), loss)
        >>> result.num_failed, sorted({f.reason for f in result.failures.values()})
        (2, ['raised'])
        >>> bool(np.isnan(result.fitness).sum() == 2)
        True
    """
    if not isinstance(population, Population):
        raise TypeError(
            f"`population` must be an eggroll_opt.Population (from ask()), got "
            f"{type(population).__name__}."
        )
    if not callable(fitness_fn):
        raise TypeError(f"`fitness_fn` must be callable, got {fitness_fn!r}.")
    if not isinstance(vectorized, bool | np.bool_):
        raise TypeError(f"`vectorized` must be a bool, got {vectorized!r}.")
    deadline_seconds = _check_timeout(timeout)
    max_retries = _check_int("max_retries", max_retries, 0)
    chunks_per_worker = _check_int("chunks_per_worker", chunks_per_worker, 1)
    if vectorized:
        _parts.check_executor(executor, worker_backend)
    backend = _check_worker_backend(worker_backend, executor)
    remote, owned = _resolve_executor(executor)
    if remote is None:
        return _evaluate_here(population, fitness_fn, bool(vectorized), deadline_seconds)
    try:
        if vectorized:
            return _parts.evaluate_in_parts(
                population, fitness_fn, remote, deadline_seconds, chunks_per_worker
            )
        run = _Run(
            population,
            fitness_fn,
            remote,
            deadline_seconds,
            max_retries,
            chunks_per_worker,
            backend,
        )
        return run.execute()
    finally:
        if owned:
            remote.shutdown(wait=True, cancel_futures=True)


def _evaluate_here(
    population: Population,
    fitness_fn: Callable[[Any], Any],
    vectorized: bool,
    timeout: float | None,
) -> Evaluation:
    start = time.perf_counter()
    size = len(population)
    if vectorized:
        try:
            raw = fitness_fn(population)
        except Exception as error:
            raise EvaluationError(
                f"vectorised fitness_fn raised {type(error).__name__}: {error}"
            ) from error
        values = values_of(raw, size)
        return Evaluation(
            generation=population.generation,
            fitness=values,
            failures={},
            attempts=np.ones(size, dtype=np.int64),
            seconds=(seconds := time.perf_counter() - start),
            busy_seconds=seconds,
        )
    values = np.full(size, math.nan)
    attempts = np.zeros(size, dtype=np.int64)
    failures: dict[int, MemberFailure] = {}
    on_device: dict[int, Any] = {}  # fitness values a member returned as device scalars
    for member in population:
        index = member.index
        if timeout is not None and time.perf_counter() - start > timeout:
            failures[index] = MemberFailure(
                index, "timeout", f"not started within the {timeout} s deadline"
            )
            continue
        attempts[index] = 1
        try:
            value = fitness_fn(member.params())
        except (Exception, SystemExit) as error:
            _, message, text, kept = _describe(error, keep=True)
            failures[index] = MemberFailure(index, "raised", message, text, kept, 1)
            continue
        if is_cupy_array(value) and value.size == 1 and value.dtype.kind in "biuf":
            on_device[index] = value  # read back with the others, in one transfer
            continue
        fitness, problem = _as_fitness(value)
        if problem is None:
            values[index] = fitness
        else:
            failures[index] = MemberFailure(index, "invalid", problem, attempts=1)
    if on_device:
        values[list(on_device)] = host_values([v.reshape(()) for v in on_device.values()])
    return Evaluation(
        generation=population.generation,
        fitness=values,
        failures=failures,
        attempts=attempts,
        seconds=(seconds := time.perf_counter() - start),
        busy_seconds=seconds,
    )


@dataclass
class _Task:
    indices: Sequence[int]
    stage: int  # 0: chunk, 1: single member in parallel, 2: single member alone
    broadcast_number: int
    nbytes: int


@dataclass
class _Ledger:
    """First result per member wins; every member ends with a value or a failure."""

    values: np.ndarray
    resolved: np.ndarray
    attempts: np.ndarray
    charged: np.ndarray
    failures: dict[int, MemberFailure] = field(default_factory=dict)
    duplicates: int = 0

    @classmethod
    def empty(cls, size: int) -> _Ledger:
        return cls(
            values=np.full(size, math.nan),
            resolved=np.zeros(size, dtype=bool),
            attempts=np.zeros(size, dtype=np.int64),
            charged=np.zeros(size, dtype=np.int64),
        )

    def record(self, index: int, value: float) -> None:
        if self.resolved[index]:
            self.duplicates += 1
            return
        self.values[index] = value
        self.resolved[index] = True

    def fail(
        self,
        index: int,
        reason: FailureReason,
        message: str,
        text: str = "",
        error: BaseException | None = None,
    ) -> None:
        if self.resolved[index]:
            self.duplicates += 1
            return
        self.failures[index] = MemberFailure(
            index, reason, message, text, error, int(self.attempts[index])
        )
        self.resolved[index] = True


class _Run:
    """One generation on a :class:`RemoteExecutor` (see the module docstring for the steps)."""

    def __init__(
        self,
        population: Population,
        fitness_fn: Callable[[Any], Any],
        executor: RemoteExecutor,
        timeout: float | None,
        max_retries: int,
        chunks_per_worker: int,
        worker_backend: str = "numpy",
    ) -> None:
        self.population = population
        self.executor = executor
        self.timeout = timeout
        self.max_retries = max_retries
        self.size = len(population)
        self.workers = max(1, int(executor.workers))
        self.chunks = min(self.size, self.workers * chunks_per_worker)
        self.payload = _Payload(
            token=uuid.uuid4().hex,
            template=population.spec(0),
            fitness_fn=fitness_fn,
            base=_host_tree(population.base),
            backend=worker_backend,
        )
        self.ledger = _Ledger.empty(self.size)
        self.pending: dict[Future[Any], _Task] = {}
        self.singles: collections.deque[int] = collections.deque()
        self.alone: collections.deque[int] = collections.deque()
        self.broadcasts: list[Broadcast] = []
        self.tasks = 0
        self.lost_tasks = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.seen_workers: dict[str, float] = {}
        self.per_worker_bytes = 0
        self.busy_seconds = 0.0

    # -- submission ---------------------------------------------------------------------------
    def _broadcast(self) -> None:
        broadcast = self.executor.broadcast(self.payload)
        self.broadcasts.append(broadcast)
        if not broadcast.per_task:
            self.per_worker_bytes = broadcast.nbytes

    def _submit(self, indices: Sequence[int], stage: int) -> None:
        broadcast = self.broadcasts[-1]
        nbytes = len(pickle.dumps(indices)) if broadcast.nbytes else 0
        if broadcast.per_task:
            nbytes += broadcast.nbytes
        self.bytes_sent += nbytes
        self.tasks += 1
        for index in indices:
            self.ledger.attempts[index] += 1
        try:
            future = self.executor.submit(_run_chunk, broadcast.handle, indices)
        except Exception as error:  # report it through the same path as a failed task
            future = Future()
            future.set_exception(error)
        self.pending[future] = _Task(indices, stage, len(self.broadcasts), nbytes)

    def _feed(self) -> None:
        window = 2 * self.workers
        in_flight = sum(1 for task in self.pending.values() if task.stage == 1)
        while self.singles and in_flight < window:
            self._submit((self.singles.popleft(),), 1)
            in_flight += 1
        if not self.pending and not self.singles and self.alone:
            self._submit((self.alone.popleft(),), 2)

    # -- results ------------------------------------------------------------------------------
    def _finish(self, future: Future[Any]) -> None:
        task = self.pending.pop(future)
        try:
            result = future.result()
        except Exception as error:
            self._lost(task, error)
            return
        if not isinstance(result, _ChunkResult) or result.token != self.payload.token:
            # Not this generation's answer: the task is lost and its members run again.
            stale = RuntimeError(f"a task returned a result of another generation: {result!r:.80}")
            self._lost(task, stale, "worker_lost")
            return
        if task.nbytes:
            self.bytes_received += len(pickle.dumps(result))
        self.seen_workers[result.worker] = self.seen_workers.get(result.worker, 0.0) + (
            result.busy_seconds
        )
        self.busy_seconds += result.busy_seconds
        expected = set(task.indices)
        for index, value in zip(result.indices, result.values, strict=True):
            if index not in expected:
                self.ledger.duplicates += 1
                continue
            failure = result.failures.get(index)
            if failure is None:
                self.ledger.record(index, float(value))
            else:
                reason, message, text, kept = failure
                self.ledger.fail(index, reason, message, text, kept)  # type: ignore[arg-type]
        for index in expected - set(result.indices):  # a malformed result: run them again
            self._requeue(index, task.stage)

    def _lost(self, task: _Task, error: BaseException, kind: FailureKind | None = None) -> None:
        if kind is None:
            kind = self.executor.classify_failure(error)
        if kind == "error":
            if isinstance(error, EvaluationError):  # the executor said what went wrong
                raise error
            raise EvaluationError(
                f"a task of generation {self.population.generation} failed outside the fitness "
                f"function: {type(error).__name__}: {error}"
            ) from error
        self.lost_tasks += 1
        if kind == "data_lost":
            if task.broadcast_number == len(self.broadcasts):
                if len(self.broadcasts) > self.max_retries:
                    for index in task.indices:
                        self.ledger.fail(
                            index,
                            "data_lost",
                            f"the broadcast was lost {len(self.broadcasts)} times: {error}",
                        )
                    return
                self._broadcast()
            if task.stage == 0:
                self._submit(task.indices, 0)
            else:
                for index in task.indices:
                    (self.singles if task.stage == 1 else self.alone).append(index)
            return
        for index in task.indices:
            if task.stage == 2:
                self.ledger.charged[index] += max(1, self.executor.lost_attempts(error))
                if self.ledger.charged[index] > self.max_retries:
                    self.ledger.fail(
                        index,
                        "worker_lost",
                        f"its worker died each of the {int(self.ledger.charged[index])} times it "
                        f"ran alone (last error: {type(error).__name__}: {error})",
                    )
                    continue
            self._requeue(index, task.stage + 1)

    def _requeue(self, index: int, stage: int) -> None:
        if self.ledger.resolved[index]:
            return
        (self.singles if stage <= 1 else self.alone).append(index)

    # -- the loop -----------------------------------------------------------------------------
    def execute(self) -> Evaluation:
        start = time.perf_counter()
        deadline = None if self.timeout is None else start + self.timeout
        try:
            self._broadcast()
            chunks = chunk_ranges(self.size, self.chunks, self.payload.template.mirrored)
            self.executor.spread(len(chunks))
            for chunk in chunks:
                self._submit(chunk, 0)
            while not self.ledger.resolved.all():
                self._feed()
                if not self.pending:  # nothing runs and nothing is queued: cannot happen
                    raise EvaluationError("internal error: members left without a task")
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    break
                done, _ = concurrent.futures.wait(
                    list(self.pending), timeout=remaining, return_when="FIRST_COMPLETED"
                )
                for future in done:
                    self._finish(future)
            for index in np.flatnonzero(~self.ledger.resolved):
                self.ledger.fail(
                    int(index), "timeout", f"no result within the {self.timeout} s deadline"
                )
        finally:
            if self.pending:
                self.executor.abandon(list(self.pending))
                self.pending.clear()
            for broadcast in self.broadcasts:
                self.executor.release(broadcast)
        self.bytes_sent += self.per_worker_bytes * len(self.seen_workers)
        return Evaluation(
            generation=self.population.generation,
            fitness=self.ledger.values,
            failures=self.ledger.failures,
            attempts=self.ledger.attempts,
            seconds=time.perf_counter() - start,
            tasks=self.tasks,
            lost_tasks=self.lost_tasks,
            duplicates=self.ledger.duplicates,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            workers=tuple(self.seen_workers),
            busy_seconds=self.busy_seconds,
            worker_seconds=dict(self.seen_workers),
        )


def _host_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Host (NumPy) copies of a parameter tree's leaves (NumPy leaves are not copied)."""
    return unflatten({path: np.asarray(to_numpy(v)) for path, v in flatten(tree).items()})
