"""Vectorised fitness on threads: the population in parts, one ``fitness_fn`` call per part.

``evaluate(population, fitness_fn, vectorized=True, executor="threads")`` splits the population
into ``workers × chunks_per_worker`` consecutive parts of about equal size, mirrored pairs kept
together (:func:`~eggroll_opt._population.chunk_ranges`, the boundaries of member-wise
evaluation's tasks too), and calls ``fitness_fn(part)`` for each on the pool's threads. NumPy
(like CuPy, PyTorch and JAX) releases the GIL inside its array operations, so the parts'
forward passes run on all cores at once; a fitness function that is mostly Python gains
nothing.

BLAS: a matrix product spreads over BLAS's own threads, and several parts doing that at once
oversubscribe the cores. While the parts run, BLAS is limited to its thread count divided by
the number of workers (at least 1) with threadpoolctl; the limit is process-wide for the
duration of the call and restored afterwards. (OpenMP pools, such as PyTorch's, are left as
they are.) :func:`~eggroll_opt.optimize` holds the limit for its whole run, ``ask`` and ``tell``
included: OpenBLAS's threads keep spinning for a while after a product, and woken by ``tell``
between two evaluations they compete with the parts for the cores (a loop of your own can
hold it with ``threadpoolctl.threadpool_limits(1, user_api="blas")``, as ``examples/mnist.py``
does).

Outcomes, as for a vectorised call in process: a part that raises makes the call raise
:class:`~eggroll_opt.EvaluationError` (the parts still running are abandoned), a value of the
wrong shape raises ``TypeError``/``ValueError``; with a ``timeout``, the members of parts not
finished by then fail with reason ``"timeout"`` and their threads are written off as for
member-wise evaluation on threads.
"""

from __future__ import annotations

import concurrent.futures
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ._evaluation import Evaluation, EvaluationError, MemberFailure, values_of
from ._executors import RemoteExecutor
from ._population import Population, split_evenly
from ._worker import _worker_id


def check_executor(executor: Any, worker_backend: Any) -> None:
    """Refuse what a vectorised ``fitness_fn`` cannot run on (it takes this process's
    :class:`~eggroll_opt.Population`, so only threads of this process can share it)."""
    on_threads = (
        executor is None
        or (isinstance(executor, str) and executor == "threads")
        or isinstance(executor, concurrent.futures.ThreadPoolExecutor)
        or (isinstance(executor, RemoteExecutor) and executor.in_process)
    )
    if not on_threads:
        raise ValueError(
            "`vectorized`=True evaluates in this process, alone or in parts on threads "
            f"(`executor`=None, 'threads' or a ThreadPoolExecutor); got `executor`={executor!r}."
        )
    if worker_backend is not None:
        raise ValueError(
            f"`worker_backend`={worker_backend!r} applies to members rebuilt on workers; a "
            "vectorised fitness_fn gets parts of the population on its own backend."
        )


def evaluate_in_parts(
    population: Population,
    fitness_fn: Callable[[Any], Any],
    pool: RemoteExecutor,
    timeout: float | None,
    chunks_per_worker: int,
) -> Evaluation:
    """Call ``fitness_fn`` on parts of ``population`` on ``pool``'s threads (module docstring)."""
    start = time.perf_counter()
    deadline = None if timeout is None else start + timeout
    workers = max(1, int(pool.workers))
    parts = split_evenly(population, workers * chunks_per_worker)
    values = np.full(len(population), math.nan)
    failures: dict[int, MemberFailure] = {}
    busy: dict[str, float] = {}
    pending: dict[concurrent.futures.Future[Any], Population] = {}
    with blas_shared_by(workers):
        try:
            for part in parts:
                pending[pool.submit(_run_part, fitness_fn, part)] = part
            while pending:
                remaining = None if deadline is None else deadline - time.perf_counter()
                if remaining is not None and remaining <= 0:
                    break
                done, _ = concurrent.futures.wait(
                    list(pending), timeout=remaining, return_when="FIRST_COMPLETED"
                )
                for future in done:
                    part = pending.pop(future)
                    raw, worker, seconds = _result(future, part)
                    values[_members(part, population)] = values_of(raw, len(part))
                    busy[worker] = busy.get(worker, 0.0) + seconds
        finally:
            if pending:
                pool.abandon(list(pending))
    for part in pending.values():
        for index in range(len(population))[_members(part, population)]:
            failures[index] = MemberFailure(
                index, "timeout", f"no result within the {timeout} s deadline", attempts=1
            )
    return Evaluation(
        generation=population.generation,
        fitness=values,
        failures=failures,
        attempts=np.ones(len(population), dtype=np.int64),
        seconds=time.perf_counter() - start,
        tasks=len(parts),
        workers=tuple(busy),
        busy_seconds=sum(busy.values()),
        worker_seconds=busy,
    )


def _run_part(fitness_fn: Callable[[Any], Any], part: Population) -> tuple[Any, str, float]:
    start = time.perf_counter()
    raw = fitness_fn(part)
    return raw, _worker_id(threading.current_thread().name), time.perf_counter() - start


def _result(future: concurrent.futures.Future[Any], part: Population) -> tuple[Any, str, float]:
    try:
        return future.result()
    except Exception as error:
        last = part.first + len(part) - 1
        raise EvaluationError(
            f"vectorised fitness_fn raised {type(error).__name__} on the part of members "
            f"{part.first}-{last}: {error}"
        ) from error


def _members(part: Population, population: Population) -> slice:
    """Where ``part``'s members are in ``population`` (itself possibly a part)."""
    offset = part.first - population.first
    return slice(offset, offset + len(part))


_held = threading.local()  # set while this thread holds a limit: an inner call keeps it


@contextmanager
def blas_shared_by(workers: int) -> Iterator[None]:
    """BLAS at its thread count divided by ``workers`` (at least 1) for the block's duration.

    Inside a block that already holds the limit (``optimize`` around each ``evaluate``), the
    limit is kept as it is rather than divided again.
    """
    if getattr(_held, "limit", False):
        yield
        return
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas")
    threads = max((library.num_threads for library in blas.lib_controllers), default=1)
    with blas.limit(limits=max(1, threads // workers)):
        _held.limit = True
        try:
            yield
        finally:
            _held.limit = False
