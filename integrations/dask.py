"""Evaluate populations on a Dask cluster: ``DaskExecutor(client)``.

``DaskExecutor`` wraps a ``distributed.Client`` as a
:class:`~eggroll_opt.RemoteExecutor`, so :func:`eggroll_opt.evaluate` and
:func:`eggroll_opt.optimize` run fitness evaluations on the cluster's workers::

    from distributed import Client, LocalCluster
    import eggroll_opt as eo
    from eggroll_opt.integrations.dask import DaskExecutor

    with LocalCluster(n_workers=4, threads_per_worker=1) as cluster, Client(cluster) as client:
        eo.optimize(es, fitness_fn, 100, executor=DaskExecutor(client))

How it uses Dask:

* **The base parameters travel once per generation per worker.** They are submitted as the
  argument of a small task whose result every chunk task depends on; Dask copies a dependency
  to each worker once. Because it is a task (not scattered data), the scheduler can compute it
  again if the workers holding it die; scattered data would be lost with them.
* **Every task has its own key** (``pure=False``, a fresh key per submission), so Dask never
  merges two submissions of the same chunk.
* **A generation's chunks are spread,** one per worker thread (a loose preference: a chunk
  whose worker is gone runs elsewhere); otherwise the scheduler would queue them all on the
  worker that holds the payload.
* **Results are gathered as tasks finish,** in batches, by one background thread.
* **Workers rebuild members with NumPy** unless ``evaluate``/``optimize`` get
  ``worker_backend="cupy"`` (each worker copies the base to its GPU once per generation and
  hands the fitness CuPy arrays) or ``"auto"`` (CuPy on the workers that have a GPU). The base
  travels as host arrays either way, so the scheduler and workers without a GPU never need
  CuPy.
* **Retries are counted once.** A task whose worker dies is rerun by the scheduler up to its
  ``distributed.scheduler.allowed-failures`` setting (3 by default) before the task fails with
  ``KilledWorker``; :func:`eggroll_opt.evaluate` counts that error as ``allowed_failures + 1``
  attempts against its own ``max_retries``. Setting ``allowed-failures`` to 0 on the scheduler
  leaves every retry decision to :func:`eggroll_opt.evaluate`, which then needs the fewest worker
  deaths to isolate a member that kills its worker.

Dask cannot stop a task that is already running: after a generation's deadline the tasks still
running finish on their workers and their results are dropped.

**A cluster left without workers fails, it does not stall.** When the cluster has had no worker
for ``worker_wait`` seconds (60 by default) while the executor needs one (at the start of a
generation, or while tasks wait), :class:`NoWorkersError` (an
:class:`~eggroll_opt.EvaluationError`) is raised from :func:`eggroll_opt.evaluate` and
:func:`eggroll_opt.optimize`. With a generation ``timeout`` shorter than ``worker_wait`` the
members of that generation fail with reason ``"timeout"`` first, and the next generation raises.
(The scheduler's own ``distributed.scheduler.no-workers-timeout``, if set, fails the tasks
themselves; :func:`eggroll_opt.evaluate` then raises with Dask's error.)

For a cluster that must survive workers dying again and again, also raise
``distributed.deploy.lost-worker-timeout`` above the time a worker takes to restart: when it
expires while a worker is down, a ``LocalCluster`` closes that worker's nanny for good.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import numbers
import pickle
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from types import ModuleType
from typing import Any

from eggroll_opt._evaluate import EvaluationError
from eggroll_opt._executors import Broadcast, FailureKind, RemoteExecutor
from eggroll_opt._worker import _Payload

_BASE_PREFIX = "eggroll-base-"
_STOP = object()


def _distributed() -> ModuleType:
    try:
        import distributed
    except ImportError as error:
        raise ImportError(
            "eggroll_opt.integrations.dask needs Dask distributed: "
            "pip install 'dask[distributed]' (or 'eggroll_opt[dask]')."
        ) from error
    return distributed


def _hold(payload: Any) -> Any:
    """The task that holds a generation's payload on the cluster (it returns its argument)."""
    return payload


def _payload_nbytes(payload: Any) -> int:
    """Size of a payload on the wire: its arrays' bytes plus the pickled rest."""
    from eggroll_opt._tree import flatten

    arrays = flatten(payload.base, "base")
    array_bytes = sum(int(getattr(value, "nbytes", 0)) for value in arrays.values())
    try:
        import cloudpickle

        rest = len(cloudpickle.dumps((payload.fitness_fn, payload.template, payload.token)))
    except Exception:  # size accounting only; an unpicklable function fails later, loudly
        rest = len(pickle.dumps((payload.template, payload.token)))
    return array_bytes + rest


try:  # let Dask see a payload's real size (it schedules and accounts memory by it)
    from dask.sizeof import sizeof as _sizeof
except ImportError:  # Dask absent: DaskExecutor explains how to install it
    pass
else:
    _sizeof.register(_Payload)(_payload_nbytes)


class NoWorkersError(EvaluationError):
    """The Dask cluster had no workers for ``worker_wait`` seconds while tasks needed one."""


class DaskExecutor(RemoteExecutor):
    """Run :func:`eggroll_opt.evaluate`'s tasks on a Dask cluster through ``client``.

    It is also an ordinary :class:`concurrent.futures.Executor` (``submit`` returns a
    :class:`concurrent.futures.Future`). ``shutdown`` stops its result thread and leaves the
    client open.

    Args:
        client: a connected ``distributed.Client``.
        worker_wait: seconds the cluster may stay without any worker while this executor needs
            one (a generation starts, or tasks are waiting) before :class:`NoWorkersError` is
            raised; a restarting worker (a few seconds) is not a reason to fail.

    Example:
        >>> from eggroll_opt.integrations.dask import DaskExecutor
        >>> DaskExecutor("tcp://127.0.0.1:8786")
        Traceback (most recent call last):
        ...
        TypeError: `client` must be a distributed.Client, got str.
        >>> DaskExecutor(None, worker_wait=0)
        Traceback (most recent call last):
        ...
        ValueError: `worker_wait` must be a number of seconds > 0, got 0.

        With a cluster (not run here: it starts processes)::

            with LocalCluster(n_workers=2, threads_per_worker=1) as cluster:
                with Client(cluster) as client:
                    result = eo.evaluate(es.ask(), fitness_fn, DaskExecutor(client))
    """

    def __init__(self, client: Any, *, worker_wait: float = 60.0) -> None:
        distributed = _distributed()
        seconds: Any = worker_wait  # checked as any object: users pass what they pass
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, numbers.Real)
            or not float(seconds) > 0
        ):
            raise ValueError(f"`worker_wait` must be a number of seconds > 0, got {seconds!r}.")
        if not isinstance(client, distributed.Client):
            raise TypeError(f"`client` must be a distributed.Client, got {type(client).__name__}.")
        self._client = client
        self._worker_wait = float(seconds)
        self._poll_seconds = min(1.0, self._worker_wait / 4)
        self._empty_since: float | None = None
        self._finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._links: dict[Any, tuple[Future[Any], Any]] = {}
        self._lock = threading.Lock()
        self._collector: threading.Thread | None = None
        self._closed = False
        self._slots: list[str] = []  # one entry per worker thread, for round-robin placement
        self._to_place = 0
        self._placed = 0
        self._killed_worker = distributed.scheduler.KilledWorker
        self._comm_closed = distributed.comm.core.CommClosedError

    @property
    def client(self) -> Any:
        """The ``distributed.Client``."""
        return self._client

    @property
    def worker_wait(self) -> float:
        """Seconds the cluster may stay without workers before :class:`NoWorkersError`."""
        return self._worker_wait

    @property
    def workers(self) -> int:
        """Worker threads on the cluster now, waiting up to ``worker_wait`` for a first one.

        Raises:
            NoWorkersError: if no worker joined within ``worker_wait`` seconds.
        """
        nthreads = self._client.nthreads()
        if not nthreads:
            try:
                self._client.wait_for_workers(1, timeout=self._worker_wait)
            except TimeoutError:
                raise self._no_workers(self._worker_wait) from None
            nthreads = self._client.nthreads()
        with self._lock:
            self._slots = [
                address for address, count in sorted(nthreads.items()) for _ in range(count)
            ]
        return max(1, len(self._slots))

    def spread(self, count: int) -> None:
        """Give each of the next ``count`` submissions a preferred worker thread, in turn.

        Without it the scheduler would queue a generation's chunks on the worker that holds the
        payload. The preference is loose: a chunk whose worker is gone runs elsewhere. Other
        submissions (retries) are left to the scheduler, which hands a worker only as many
        tasks as it can start, so a member that kills its worker takes few others with it.
        """
        with self._lock:
            self._to_place = count
            self._placed = 0

    def scheduler_allowed_failures(self) -> int:
        """The scheduler's ``allowed-failures``: how often it reruns a task whose worker died."""
        return int(self._client.run_on_scheduler(_allowed_failures))

    # -- broadcast ----------------------------------------------------------------------------
    def broadcast(self, payload: Any) -> Broadcast:
        """Submit the payload inside a task the scheduler can recompute."""
        key = f"{_BASE_PREFIX}{payload.token}-{uuid.uuid4().hex[:8]}"
        future = self._client.submit(_hold, payload, key=key, pure=False)
        return Broadcast(future, _payload_nbytes(payload), per_task=False)

    def release(self, broadcast: Broadcast) -> None:
        """Let the scheduler forget the payload once no task needs it."""
        broadcast.handle.release()

    # -- failures -----------------------------------------------------------------------------
    def classify_failure(self, error: BaseException) -> FailureKind:
        """``KilledWorker`` is a lost worker (a lost payload if the payload's task died);
        a cancelled task means its payload went away (a restarted cluster)."""
        if isinstance(error, self._killed_worker):
            return "data_lost" if str(error.task).startswith(_BASE_PREFIX) else "worker_lost"
        if isinstance(error, concurrent.futures.CancelledError):
            return "data_lost"
        if isinstance(error, self._comm_closed):
            return "worker_lost"
        return "error"

    def lost_attempts(self, error: BaseException) -> int:
        """``KilledWorker`` arrives after ``allowed_failures + 1`` runs that lost their worker."""
        if isinstance(error, self._killed_worker):
            return int(error.allowed_failures) + 1
        return 1

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel the Dask tasks behind ``futures`` (running ones finish, unobserved)."""
        targets = set(futures)
        with self._lock:
            dask_futures = [
                dask_future for future, dask_future in self._links.values() if future in targets
            ]
        if dask_futures:
            self._client.cancel(dask_futures)

    # -- the Executor interface ---------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Submit ``fn(*args, **kwargs)`` as a task with a fresh key."""
        if self._closed:
            raise RuntimeError("cannot submit to a DaskExecutor after shutdown().")
        name = getattr(fn, "__name__", "task").strip("_") or "task"
        key = f"eggroll-{name}-{uuid.uuid4().hex}"
        if "workers" not in kwargs:
            with self._lock:
                if self._to_place > 0 and self._slots:
                    kwargs["workers"] = [self._slots[self._placed % len(self._slots)]]
                    kwargs["allow_other_workers"] = True  # a preference, not a pin
                    self._to_place -= 1
                    self._placed += 1
        dask_future = self._client.submit(fn, *args, key=key, pure=False, **kwargs)
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._links[dask_future.key] = (future, dask_future)
            if self._collector is None or not self._collector.is_alive():
                self._collector = threading.Thread(
                    target=self._collect, name="eggroll-dask-results", daemon=True
                )
                self._collector.start()
        dask_future.add_done_callback(self._finished.put)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the result thread; with ``cancel_futures`` cancel what is still pending."""
        self._closed = True
        with self._lock:
            links = list(self._links.values())
            collector = self._collector
        if cancel_futures and links:
            self._client.cancel([dask_future for _, dask_future in links])
            for future, _ in links:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(concurrent.futures.CancelledError("executor shut down"))
        self._finished.put(_STOP)
        if wait and collector is not None:
            collector.join(timeout=30)

    # -- an empty cluster ----------------------------------------------------------------------
    def _no_workers(self, seconds: float) -> NoWorkersError:
        address = getattr(self._client.scheduler, "address", "?")
        return NoWorkersError(
            f"the Dask cluster (scheduler {address}) has had no workers for {seconds:.3g} s "
            f"(`worker_wait`={self._worker_wait:g}); start workers, or find out why they died "
            f"(a LocalCluster stops restarting a worker that is down when "
            f"distributed.deploy.lost-worker-timeout expires)"
        )

    def _check_workers(self) -> None:
        """Fail every pending task once the cluster has been empty for ``worker_wait``."""
        with self._lock:
            pending = bool(self._links)
        if not pending:
            self._empty_since = None
            return
        try:
            count = len(self._client.nthreads())
        except Exception:  # the client is closing: its own errors reach the futures
            return
        now = time.monotonic()
        if count:
            self._empty_since = None
            return
        if self._empty_since is None:
            self._empty_since = now
            return
        if now - self._empty_since < self._worker_wait:
            return
        error = self._no_workers(now - self._empty_since)
        with self._lock:
            links = list(self._links.values())
            self._links.clear()
        with contextlib.suppress(Exception):  # the tasks are given up either way
            self._client.cancel([dask_future for _, dask_future in links])
        for future, _ in links:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)
        self._empty_since = None

    # -- results ------------------------------------------------------------------------------
    def _collect(self) -> None:
        """Resolve our futures as Dask's finish, gathering finished results in batches; while
        nothing finishes, check that the cluster still has workers."""
        while True:
            try:
                first = self._finished.get(timeout=self._poll_seconds)
            except queue.Empty:
                self._check_workers()
                continue
            if first is _STOP:
                return
            batch = [first]
            while True:
                try:
                    item = self._finished.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    self._finished.put(_STOP)
                    break
                batch.append(item)
            self._resolve(batch)

    def _resolve(self, batch: list[Any]) -> None:
        finished = {f.key: f for f in batch if f.status == "finished"}
        values: dict[Any, Any] = {}
        gather_error: BaseException | None = None
        if finished:
            try:
                values = self._client.gather(finished, errors="skip")
            except Exception as error:  # the client or the cluster went away
                gather_error = error
        for dask_future in batch:
            with self._lock:
                link = self._links.get(dask_future.key)
            if link is None:
                continue
            future = link[0]
            status = dask_future.status
            if status in ("pending", "lost"):  # its data was lost after it finished: wait again
                dask_future.add_done_callback(self._finished.put)
                continue
            with self._lock:
                self._links.pop(dask_future.key, None)
            try:
                if gather_error is not None:
                    future.set_exception(gather_error)
                elif status == "finished" and dask_future.key in values:
                    future.set_result(values[dask_future.key])
                elif status == "error":
                    future.set_exception(_task_exception(dask_future))
                else:
                    message = f"Dask task {dask_future.key} was {status}"
                    future.set_exception(concurrent.futures.CancelledError(message))
            except concurrent.futures.InvalidStateError:  # resolved already (shutdown)
                pass


def _task_exception(dask_future: Any) -> BaseException:
    try:
        error = dask_future.exception(timeout=10)
    except Exception as lookup:  # the exception itself could not be fetched
        return lookup
    return error if isinstance(error, BaseException) else RuntimeError(repr(error))


def _allowed_failures(dask_scheduler: Any) -> int:
    return int(getattr(dask_scheduler, "allowed_failures", 0))
