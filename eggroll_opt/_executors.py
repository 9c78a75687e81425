"""Where fitness runs: the executor interface :func:`~eggroll_opt.evaluate` uses, and its pools.

* :class:`RemoteExecutor`: a :class:`concurrent.futures.Executor` with the hooks an evaluation
  needs (broadcast a generation's payload once, spread its chunks, tell a lost worker from an
  error, give up on tasks past a deadline). The Dask adapter
  ``eggroll_opt.integrations.dask.DaskExecutor`` is one.
* :class:`ProcessPool`: the local process pool. A worker that dies costs only the task it was
  running: the pool starts a new process in its place, and every other task goes on.
* ``_ThreadPool``: what ``executor="threads"`` makes. Its threads are daemon threads, so a
  fitness call left running past a deadline neither holds the evaluation nor the interpreter's
  exit.
* ``_WrappedExecutor``: any other :class:`concurrent.futures.Executor`, with default hooks.

:func:`_resolve_executor` turns the ``executor`` argument of ``evaluate``/``optimize`` into
one of these. The worker side (what a task runs) is in ``_worker.py``.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import multiprocessing
import numbers
import os
import pickle
import queue
import signal
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from typing import Any, Literal

from ._worker import _JOBS, _JOBS_KEPT, _dumps, _Job, _Packed

FailureKind = Literal["worker_lost", "data_lost", "error"]
_NAMED_EXECUTORS = ("threads", "processes")


@dataclass(frozen=True)
class Broadcast:
    """What :meth:`RemoteExecutor.broadcast` hands back.

    Attributes:
        handle: passed to every task of the generation in place of the payload.
        nbytes: serialised size of the payload.
        per_task: True if every task carries the payload again, False if a worker receives it
            once (:class:`ProcessPool`, Dask) or shares it (threads, then ``nbytes`` is 0).
    """

    handle: Any
    nbytes: int
    per_task: bool


class RemoteExecutor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` with the hooks :func:`evaluate` uses.

    Subclasses implement :meth:`submit` (and :meth:`shutdown`), and may override the hooks:
    :attr:`workers` (how many tasks run at once), :meth:`broadcast` / :meth:`release` (ship the
    generation's payload once), :meth:`spread` (place a generation's chunks one per worker),
    :meth:`classify_failure` and :meth:`lost_attempts` (tell a lost worker from an error) and
    :meth:`abandon` (stop tasks past the deadline). A plain executor
    given to :func:`evaluate` is wrapped with the defaults below.

    Example:
        >>> from concurrent.futures import BrokenExecutor
        >>> import eggroll_opt as eo
        >>> pool = eo.ProcessPool(2)
        >>> pool.workers, pool.classify_failure(BrokenExecutor("gone"))
        (2, 'worker_lost')
        >>> pool.shutdown()
    """

    @property
    def workers(self) -> int:
        """How many tasks the executor runs at the same time (default: the CPU count)."""
        return os.cpu_count() or 1

    @property
    def in_process(self) -> bool:
        """Whether tasks run on threads of this process, sharing its objects (default False)."""
        return False

    def broadcast(self, payload: Any) -> Broadcast:
        """Make ``payload`` reachable by this generation's tasks (default: pickle it once)."""
        data = _dumps(payload.fitness_fn, payload)
        return Broadcast(_Packed(payload.token, data), len(data), per_task=True)

    def release(self, broadcast: Broadcast) -> None:
        """Forget a broadcast once its generation is over (default: nothing to do)."""

    def spread(self, count: int) -> None:
        """The next ``count`` submissions are a generation's chunks: place them on distinct
        workers where the executor chooses placement (default: the executor's own order)."""

    def classify_failure(self, error: BaseException) -> FailureKind:
        """What a task's exception means: ``"worker_lost"``, ``"data_lost"`` or ``"error"``.

        Fitness errors never reach here (they are caught per member on the worker); this sees
        what went wrong around the task. Default: a broken executor is a lost worker.
        """
        if isinstance(error, concurrent.futures.BrokenExecutor | concurrent.futures.CancelledError):
            return "worker_lost"
        return "error"

    def lost_attempts(self, error: BaseException) -> int:
        """How many runs of the task one ``"worker_lost"`` error stands for (default 1)."""
        return 1

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Give up on ``futures`` (the deadline passed): cancel what can be cancelled."""
        for future in futures:
            future.cancel()


def _shared_broadcast(payload: Any) -> Broadcast:
    """Threads of this process share the prepared arrays: nothing is copied or pickled."""
    return Broadcast(_Job.prepare(payload, copy=False), 0, per_task=False)


def _stop_shared(broadcast: Broadcast) -> None:
    """The generation is over: chunks still running in threads stop before their next member."""
    if isinstance(broadcast.handle, _Job):
        broadcast.handle.stop()


class _WrappedExecutor(RemoteExecutor):
    """A plain executor with the default hooks (threads share the payload).

    A :class:`concurrent.futures.ThreadPoolExecutor` of the caller's keeps a thread that runs a
    fitness call past a deadline busy until the call returns, and Python waits for its threads
    at exit; ``executor="threads"`` uses daemon threads instead (``_ThreadPool``).
    """

    def __init__(self, executor: concurrent.futures.Executor) -> None:
        self._executor = executor
        self._threads = isinstance(executor, concurrent.futures.ThreadPoolExecutor)

    @property
    def workers(self) -> int:
        count = getattr(self._executor, "_max_workers", None)  # both stdlib pools keep it here
        return int(count) if isinstance(count, int) and count > 0 else super().workers

    @property
    def in_process(self) -> bool:
        return self._threads

    def broadcast(self, payload: Any) -> Broadcast:
        return _shared_broadcast(payload) if self._threads else super().broadcast(payload)

    def release(self, broadcast: Broadcast) -> None:
        _stop_shared(broadcast)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=cancel_futures)


# -- threads -----------------------------------------------------------------------------------
@dataclass
class _WorkItem:
    future: Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class _ThreadPool(RemoteExecutor):
    """Daemon threads, for ``executor="threads"``: a deadline can leave a thread behind.

    A thread cannot be stopped from outside. :meth:`abandon` writes off the threads still
    running tasks past the deadline (the chunk stops before its next member, see
    :meth:`release`; the call it is in finishes in the background and its result is dropped)
    and starts fresh threads in their place; :meth:`shutdown` never waits for written-off
    threads, and being daemon threads they do not hold the interpreter at exit.
    """

    def __init__(self, max_workers: int) -> None:
        self._max_workers = max_workers
        self._queue: queue.SimpleQueue[_WorkItem | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()  # live, not written off
        self._running: dict[Future[Any], threading.Thread] = {}
        self._written_off: set[threading.Thread] = set()
        self._closed = False

    @property
    def workers(self) -> int:
        return self._max_workers

    @property
    def in_process(self) -> bool:
        return True

    def broadcast(self, payload: Any) -> Broadcast:
        return _shared_broadcast(payload)

    def release(self, broadcast: Broadcast) -> None:
        _stop_shared(broadcast)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a thread pool after shutdown().")
            self._queue.put(_WorkItem(future, fn, args, kwargs))
            if len(self._threads) < self._max_workers:
                self._start_thread()
        return future

    def _start_thread(self) -> None:  # with the lock held
        thread = threading.Thread(
            target=self._serve, name=f"eggroll-fitness-{len(self._threads)}", daemon=True
        )
        self._threads.add(thread)
        thread.start()

    def _serve(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._queue.get()
            if item is None:
                return
            with self._lock:  # with abandon(): a future is either cancelled or known to run here
                if not item.future.set_running_or_notify_cancel():
                    continue
                self._running[item.future] = me
            try:
                result = item.fn(*item.args, **item.kwargs)
            except BaseException as error:
                outcome: tuple[bool, Any] = (False, error)
            else:
                outcome = (True, result)
            with self._lock:
                self._running.pop(item.future, None)
                written_off = me in self._written_off
                self._written_off.discard(me)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if outcome[0]:
                    item.future.set_result(outcome[1])
                else:
                    item.future.set_exception(outcome[1])
            if written_off:  # a fresh thread took this one's place
                return

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel queued ``futures``; write off the threads running the others."""
        with self._lock:
            for future in futures:
                if future.cancel():
                    continue
                thread = self._running.pop(future, None)
                if thread is not None and thread in self._threads:
                    self._threads.discard(thread)
                    self._written_off.add(thread)
                    if not self._closed:
                        self._start_thread()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item.future.cancel()
        for _ in threads:
            self._queue.put(None)
        if wait:
            for thread in threads:
                thread.join()


# -- processes ---------------------------------------------------------------------------------
_POOLS: weakref.WeakSet[Any] = weakref.WeakSet()  # the live ProcessPool objects, for _end_pools


@dataclass
class _PoolWorker:
    process: Any  # multiprocessing.process.BaseProcess
    connection: mp_connection.Connection
    task: _WorkItem | None = None
    tokens: collections.OrderedDict[str, None] = field(default_factory=collections.OrderedDict)
    stopping: bool = False  # killed by abandon()


class ProcessPool(RemoteExecutor):
    """A process pool where a worker's death costs only the task it was running.

    Each worker process holds one task at a time. When a worker dies (killed, out of memory,
    a crash in native code), the task it held fails with
    :class:`concurrent.futures.process.BrokenProcessPool` (a
    :class:`concurrent.futures.BrokenExecutor`, which :func:`evaluate` counts as a lost worker),
    the pool starts a new process in its place when there is work for it, and every other task,
    queued or running, goes on. (A :class:`concurrent.futures.ProcessPoolExecutor`, and loky's
    executor, fail every task in flight when one worker dies.) :meth:`abandon` stops tasks
    that overran a deadline by ending only the processes that run them.

    The generation's payload travels once per worker: a task of :func:`evaluate` carries the
    pickled payload to a worker that has not opened it yet, and only its token afterwards.

    Args:
        max_workers: number of processes (default: the CPU count).
        mp_context: a :mod:`multiprocessing` context (default: Python's default start method;
            ``fork`` starts in milliseconds, ``forkserver``/``spawn`` import the fitness
            function's module in each new process, which takes seconds with SciPy).

    Attributes:
        restarts: processes started to replace one that died or was stopped.

    Example:
        >>> import eggroll_opt as eo
        >>> with eo.ProcessPool(2) as pool:
        ...     pool.workers, pool.submit(pow, 2, 10).result()
        (2, 1024)
    """

    restarts: int
    _max_workers: int
    _context: Any
    _lock: threading.Lock
    _queue: collections.deque[_WorkItem]
    _workers: list[_PoolWorker]
    _to_replace: int
    _wake_reader: mp_connection.Connection
    _wake_writer: mp_connection.Connection
    _wake_pending: bool
    _manager: threading.Thread | None
    _closed: bool
    _exiting: bool
    _bytes_sent: int

    def __init__(self, max_workers: int | None = None, *, mp_context: Any = None) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if isinstance(max_workers, bool) or not isinstance(max_workers, numbers.Integral):
            raise TypeError(f"`max_workers` must be an int, got {max_workers!r}.")
        if max_workers < 1:
            raise ValueError(f"`max_workers` must be at least 1, got {max_workers}.")
        self._max_workers = int(max_workers)
        self._context = mp_context if mp_context is not None else multiprocessing.get_context()
        self._lock = threading.Lock()
        self._queue = collections.deque()
        self._workers = []
        self._to_replace = 0  # workers that died or were stopped, not replaced yet
        self._wake_reader, self._wake_writer = multiprocessing.Pipe(duplex=False)
        self._wake_pending = False
        self._manager = None
        self._closed = False
        self._exiting = False  # the interpreter is exiting: start no process, end them all
        self.restarts = 0
        self._bytes_sent = 0  # task bytes written to the workers' pipes
        _POOLS.add(self)

    @property
    def workers(self) -> int:
        return self._max_workers

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids of the workers running now (they start at the first task)."""
        with self._lock:
            return tuple(w.process.pid for w in self._workers if w.process.pid is not None)

    def broadcast(self, payload: Any) -> Broadcast:
        """Pickle the payload once; each worker receives the bytes once (see the class)."""
        data = _dumps(payload.fitness_fn, payload)
        return Broadcast(_Packed(payload.token, data), len(data), per_task=False)

    # -- the Executor interface ---------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue ``fn(*args, **kwargs)`` for a worker process; returns its future."""
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a ProcessPool after shutdown().")
            self._queue.append(_WorkItem(future, fn, args, kwargs))
            if self._manager is None:
                self._manager = threading.Thread(
                    target=self._manage, name="eggroll-process-pool", daemon=True
                )
                self._manager.start()
        self._wake()
        return future

    def abandon(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel queued ``futures``; end the processes running the others."""
        with self._lock:
            for future in futures:
                if future.cancel():  # still queued: never handed to a worker
                    continue
                for worker in self._workers:
                    if worker.task is not None and worker.task.future is future:
                        worker.stopping = True
                        _kill(worker.process)
        self._wake()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers once queued and running tasks are done (or cancelled)."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                for item in self._queue:
                    item.future.cancel()
                self._queue.clear()
            manager = self._manager
        self._wake()
        if manager is None:
            self._close_wake_pipe()
        elif wait:
            manager.join()

    # -- the manager thread -------------------------------------------------------------------
    def _wake(self) -> None:
        with self._lock:
            if self._wake_pending or self._wake_writer.closed:
                return
            self._wake_pending = True
        with contextlib.suppress(OSError):
            self._wake_writer.send_bytes(b"")

    def _manage(self) -> None:
        """Start workers, hand them tasks, collect results, replace workers that die."""
        try:
            self._serve_tasks()
        except BaseException as error:  # e.g. no new process could be started: fail, never hang
            with self._lock:
                self._closed = True
                items = [*self._queue, *(w.task for w in self._workers if w.task is not None)]
                self._queue.clear()
            for item in items:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    item.future.set_exception(
                        BrokenProcessPool(
                            f"the process pool stopped: {type(error).__name__}: {error}"
                        )
                    )
            self._kill_all()
        finally:
            self._stop_workers()
            self._close_wake_pipe()

    def _serve_tasks(self) -> None:
        while True:
            with self._lock:
                busy = sum(1 for w in self._workers if w.task is not None)
                if self._closed and not self._queue and not busy:
                    break
                wanted = min(len(self._queue), self._max_workers - len(self._workers))
            for _ in range(max(0, wanted)):
                self._start_worker()
            for worker, item in self._assign():
                self._send(worker, item)
            with self._lock:
                watched: dict[Any, _PoolWorker] = {}
                for worker in self._workers:
                    watched[worker.process.sentinel] = worker
                    if worker.task is not None:
                        watched[worker.connection] = worker
            ready = mp_connection.wait([self._wake_reader, *watched])
            for source in ready:
                if source is self._wake_reader:
                    self._drain_wake()
                    continue
                worker = watched[source]
                if source is worker.connection:
                    self._receive(worker)
                elif worker in self._workers:
                    self._receive(worker)  # a result sent just before the process ended
                    self._lost(worker)

    def _drain_wake(self) -> None:
        while self._wake_reader.poll():  # drain first, then accept new wake-ups
            self._wake_reader.recv_bytes()
        with self._lock:
            self._wake_pending = False

    def _start_worker(self) -> None:
        with self._lock:
            if self._exiting:
                return
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_serve, args=(child, parent), name="eggroll-worker", daemon=False
        )
        process.start()
        child.close()
        with self._lock:
            self._workers.append(_PoolWorker(process, parent))
            if self._to_replace:
                self._to_replace -= 1
                self.restarts += 1
            exiting = self._exiting
        if exiting:  # started while the interpreter began to exit: _kill_all() missed it
            _kill(process)

    def _assign(self) -> list[tuple[_PoolWorker, _WorkItem]]:
        assignments = []
        with self._lock:
            for worker in self._workers:
                if not self._queue:
                    break
                if worker.task is not None or worker.stopping:
                    continue
                item = self._queue.popleft()
                if not item.future.set_running_or_notify_cancel():
                    continue
                worker.task = item
                assignments.append((worker, item))
        return assignments

    def _send(self, worker: _PoolWorker, item: _WorkItem) -> None:
        args = item.args
        token = None
        if args and isinstance(args[0], _Packed):
            token = args[0].token
            if token in worker.tokens:  # the worker opened this payload already
                args = (_Packed(token, b""), *args[1:])
        try:
            data = pickle.dumps((item.fn, args, item.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            with self._lock:
                worker.task = None
            item.future.set_exception(error)
            return
        self._bytes_sent += len(data)
        try:
            worker.connection.send_bytes(data)
        except OSError:  # the process died; its sentinel reports it and _lost() fails the task
            return
        if token is not None:  # mirrors the worker's own cache of opened payloads (_open)
            worker.tokens[token] = None
            worker.tokens.move_to_end(token)
            while len(worker.tokens) > _JOBS_KEPT:
                worker.tokens.popitem(last=False)

    def _receive(self, worker: _PoolWorker) -> None:
        """Resolve the worker's task from its pipe, if a result is there."""
        try:
            if not worker.connection.poll():
                return
            data = worker.connection.recv_bytes()
        except (EOFError, OSError):
            return  # the process ended; _lost() follows from its sentinel
        try:
            ok, value = pickle.loads(data)
        except Exception as error:  # e.g. a result whose class this process cannot import
            ok, value = False, RuntimeError(f"cannot read the task's outcome: {error!r}")
        with self._lock:
            item, worker.task = worker.task, None
        if item is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if ok:
                    item.future.set_result(value)
                else:
                    item.future.set_exception(value)

    def _lost(self, worker: _PoolWorker) -> None:
        """The worker's process ended: fail the task it held (only that one), forget it."""
        worker.process.join()
        with self._lock:
            self._workers.remove(worker)
            self._to_replace += 1
            item, worker.task = worker.task, None
        worker.connection.close()
        if item is not None:
            how = _exit_description(worker.process.exitcode)
            cause = "was stopped at a deadline" if worker.stopping else f"died ({how})"
            error = BrokenProcessPool(
                f"worker process {worker.process.pid} {cause} while running this task; the "
                f"pool replaces it and its other tasks go on"
            )
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                item.future.set_exception(error)

    def _stop_workers(self) -> None:
        with self._lock:
            workers, self._workers = list(self._workers), []
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.connection.send_bytes(b"")
        for worker in workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                _kill(worker.process)
                worker.process.join()
            worker.connection.close()

    def _close_wake_pipe(self) -> None:
        with self._lock:
            self._wake_pending = True  # no more wake-ups
            self._wake_writer.close()
        self._wake_reader.close()

    def _kill_all(self) -> None:
        """At interpreter exit: end the workers at once (tasks still running are dropped)."""
        with self._lock:
            self._exiting = True
            workers = list(self._workers)
        for worker in workers:
            _kill(worker.process)


def _kill(process: Any) -> None:
    with contextlib.suppress(OSError, AttributeError, ValueError):
        process.kill()


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


def _serve(connection: mp_connection.Connection, pool_end: mp_connection.Connection) -> None:
    """A :class:`ProcessPool` worker: run one task at a time until an empty message arrives.

    The pool's end of the pipe is closed here, so that the worker reads end-of-file and exits
    when the pool's process is gone, however it ended (a forked worker inherits that end).
    """
    pool_end.close()
    _JOBS.clear()  # payloads inherited through fork were not sent by the pool
    while True:
        try:
            data = connection.recv_bytes()
        except EOFError:  # the pool is gone
            return
        if not data:
            return
        try:
            fn, args, kwargs = pickle.loads(data)
            outcome: tuple[bool, Any] = (True, fn(*args, **kwargs))
        except (Exception, SystemExit) as error:
            error.add_note(
                f"in worker process {os.getpid()}:\n"
                + "".join(traceback.format_exception(type(error), error, error.__traceback__))
            )
            outcome = (False, error)
        try:
            reply = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # a result or an exception that cannot travel
            reply = pickle.dumps((False, RuntimeError(f"cannot send the task's outcome: {error}")))
        connection.send_bytes(reply)


@atexit.register
def _end_pools() -> None:
    # Registered after multiprocessing's own exit handler, so it runs first: that handler waits
    # for non-daemon processes, and a worker stuck in a fitness call would hold the exit.
    for pool in list(_POOLS):
        pool._kill_all()


# -- choosing an executor ------------------------------------------------------------------------
def _named_executor(name: str) -> RemoteExecutor:
    if name == "threads":
        return _ThreadPool(os.cpu_count() or 1)
    return ProcessPool()


def _resolve_executor(executor: Any) -> tuple[RemoteExecutor | None, bool]:
    """(executor to use, whether this call owns it and must shut it down)."""
    if executor is None:
        return None, False
    if isinstance(executor, str):
        if executor not in _NAMED_EXECUTORS:
            raise ValueError(
                f"`executor` must be None, {_NAMED_EXECUTORS[0]!r}, {_NAMED_EXECUTORS[1]!r} or an "
                f"Executor, got {executor!r}."
            )
        return _named_executor(executor), True
    if isinstance(executor, RemoteExecutor):
        return executor, False
    if isinstance(executor, concurrent.futures.Executor):
        return _WrappedExecutor(executor), False
    if type(executor).__name__ == "Client" and hasattr(executor, "scheduler_info"):
        raise TypeError(
            "`executor` is a Dask Client; wrap it: "
            "eggroll_opt.integrations.dask.DaskExecutor(client)."
        )
    raise TypeError(
        f"`executor` must be None, 'threads', 'processes' or a concurrent.futures.Executor, got "
        f"{type(executor).__name__}."
    )
