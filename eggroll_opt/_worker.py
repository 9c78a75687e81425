"""The worker side of an evaluation: what travels to a worker, and the task a worker runs.

A generation's *payload* (:class:`_Payload`: base parameters as host arrays, the fitness
function, one template :class:`~eggroll_opt.MemberSpec`, the name of the backend members are
rebuilt with) reaches a worker once, by whatever means its executor chooses (shared in threads,
pickled for processes, a Dask task); the worker opens it once per generation into a
:class:`_Job` (the base on the worker's backend: aligned host copies for NumPy, one device copy
per leaf for CuPy; the member rebuilder) and then runs :func:`_run_chunk` on chunks of member
indices. Nothing here knows of executors or of the accounting in ``_evaluate.py``; both import
this module.
"""

from __future__ import annotations

import collections
import math
import numbers
import os
import pickle
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._backend import Backend, get_backend, host_values, is_cupy_array, to_numpy
from ._population import MemberSpec, _perturbed, leaf_noise, scale_noise
from ._tree import flatten, unflatten

# Normals generated at once per block of members on a worker (bounds temporary memory).
_BLOCK_NORMALS = 1 << 22


@dataclass(frozen=True)
class _Payload:
    """The generation's broadcast: base parameters (host arrays), fitness function, template,
    and the backend a worker rebuilds members with (``"numpy"``, ``"cupy"`` or ``"auto"``,
    resolved on the worker)."""

    token: str
    template: MemberSpec
    fitness_fn: Callable[[Any], Any]
    base: dict[str, Any]
    backend: str = "numpy"


@dataclass(frozen=True)
class _Packed:
    """A pickled payload, with its token readable without unpickling it.

    ``data`` is empty when the executor knows the worker opened this token already (a
    :class:`~eggroll_opt.ProcessPool` sends the bytes once per worker and generation).
    """

    token: str
    data: bytes


def _dumps(fitness_fn: Any, value: Any) -> bytes:
    dumps: Callable[..., bytes] = pickle.dumps
    try:
        import cloudpickle  # handles lambdas, closures and functions of __main__

        dumps = cloudpickle.dumps
    except ImportError:
        pass
    try:
        return bytes(dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(
            f"`fitness_fn` {fitness_fn!r} cannot be pickled for worker processes ({error}); "
            "define it at module level, or install cloudpickle."
        ) from None


class _Job:
    """A payload opened on a worker: the base on the worker's backend, the member rebuilder."""

    def __init__(self, payload: _Payload, base: dict[str, Any], backend: Backend) -> None:
        self.token = payload.token
        self.template = payload.template
        self.fitness_fn = payload.fitness_fn
        self.base = base
        self.local = False  # results stay in this process (threads): keep exception objects
        self.stopped = False  # set when the generation is over: chunks still running stop early
        template = payload.template
        self._numbers_per_draw = max(1, sum(leaf.noise_size() for leaf in template.leaves))
        self._backend = backend
        # Noise scales (host arrays in the template) on the backend, moved once per generation.
        self._scales = tuple(
            _on_backend(backend, template.leaf_scales(slot)) for slot in range(len(template.leaves))
        )

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``: the array library members are rebuilt with."""
        return self._backend.name

    @classmethod
    def prepare(cls, payload: _Payload, *, copy: bool = True) -> _Job:
        """Open ``payload`` on its backend, resolved here (on the worker).

        NumPy: ``copy`` makes one aligned, writable copy of every base array (threads share
        the caller's arrays, ``copy=False``). CuPy: every base array is copied to the device,
        once per generation, whatever ``copy`` says.

        Raises:
            ValueError: if the payload asks for ``"cupy"`` where CuPy or a GPU is missing.
        """
        try:
            backend = get_backend(payload.backend)
        except ValueError as error:
            raise ValueError(
                f"`worker_backend`={payload.backend!r} cannot be used on worker "
                f"{_worker_id()}: {error}"
            ) from None
        flat = flatten(payload.base, "base")
        if backend.name != "numpy":
            flat = {path: backend.asarray(value) for path, value in flat.items()}
        elif copy:
            flat = {path: np.array(value, order="C", copy=True) for path, value in flat.items()}
        job = cls(payload, flat, backend)
        job.local = not copy
        return job

    def stop(self) -> None:
        """The generation is over: chunks of this job stop before their next member."""
        self.stopped = True

    def draw(self, index: int) -> int:
        return index // 2 if self.template.mirrored else index

    def members(self, indices: Sequence[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(index, parameter tree) of each member, noise generated once per block of draws."""
        template = self.template
        block = max(1, _BLOCK_NORMALS // self._numbers_per_draw)
        position = 0
        while position < len(indices):
            first_draw = self.draw(indices[position])
            stop = position
            while (
                stop < len(indices)
                and 0 <= self.draw(indices[stop]) - first_draw < block
                and (stop == position or indices[stop] > indices[stop - 1])
            ):
                stop += 1
            run = indices[position:stop]
            count = max(self.draw(i) for i in run) - first_draw + 1
            noise = {
                leaf.path: scale_noise(
                    leaf,
                    leaf_noise(
                        self._backend,
                        template.seed,
                        leaf,
                        template.epoch,
                        first_draw,
                        count,
                    ),
                    self._scales[slot],
                )
                for slot, leaf in enumerate(template.leaves)
                if leaf.kind != "frozen"
            }
            for index in run:
                k = self.draw(index) - first_draw
                sign = -1.0 if template.mirrored and index % 2 else 1.0
                values = {}
                for slot, leaf in enumerate(template.leaves):
                    leaf_noise_k = noise.get(leaf.path)
                    if leaf_noise_k is not None:
                        leaf_noise_k = (
                            tuple(part[k] for part in leaf_noise_k)
                            if leaf.kind == "lowrank"
                            else leaf_noise_k[k]
                        )
                    values[leaf.path] = _perturbed(
                        self.base[leaf.path],
                        leaf,
                        leaf_noise_k,
                        sign,
                        template.leaf_sigma(slot),
                    )
                yield index, unflatten(values)
            position = stop


def _on_backend(backend: Backend, scales: Any) -> Any:
    """A leaf's noise scales (None, ``(rows, columns)`` or an array) on ``backend``."""
    if scales is None or backend.name == "numpy":
        return scales
    if isinstance(scales, tuple):
        return tuple(backend.asarray(part) for part in scales)
    return backend.asarray(scales)


_JOBS: collections.OrderedDict[str, _Job] = collections.OrderedDict()
_JOBS_LOCK = threading.Lock()
_JOBS_KEPT = 2  # this generation's and the previous one's (late tasks)


def _open(handle: Any) -> _Job:
    """The job of a broadcast handle, opened once per process and generation."""
    if isinstance(handle, _Job):
        return handle
    with _JOBS_LOCK:
        job = _JOBS.get(handle.token)
        if job is None:
            if isinstance(handle, _Packed) and not handle.data:
                raise RuntimeError(
                    f"the payload of generation token {handle.token} was never sent to this "
                    f"worker (pid {os.getpid()})"
                )
            payload = pickle.loads(handle.data) if isinstance(handle, _Packed) else handle
            job = _Job.prepare(payload, copy=True)
            _JOBS[handle.token] = job
            while len(_JOBS) > _JOBS_KEPT:
                _JOBS.popitem(last=False)
        else:
            _JOBS.move_to_end(handle.token)
    return job


@dataclass(frozen=True)
class _ChunkResult:
    token: str
    indices: tuple[int, ...]
    values: np.ndarray
    failures: dict[int, tuple[str, str, str, BaseException | None]]
    worker: str
    busy_seconds: float


def _as_fitness(value: Any) -> tuple[float, str | None]:
    """(value as a float, None) or (nan, why it is not one real number)."""
    if isinstance(value, bool | numbers.Real):
        return float(value), None
    try:
        array = np.asarray(to_numpy(value))
    except Exception as error:  # arbitrary objects: anything may go wrong converting them
        return math.nan, f"fitness_fn returned {type(value).__name__}: {error}"
    if array.size != 1 or array.dtype.kind not in "biuf":
        return math.nan, (
            f"fitness_fn must return one real number, got {type(value).__name__} "
            f"of shape {array.shape} and dtype {array.dtype}"
        )
    return float(array.reshape(())), None


def _describe(error: BaseException, keep: bool) -> tuple[str, str, str, BaseException | None]:
    message = f"{type(error).__name__}: {error}"
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    if not keep:
        try:
            pickle.dumps(error)
        except Exception:  # an exception that cannot travel: keep its text only
            return "raised", message, text, None
        error = error.with_traceback(None)
    return "raised", message, text, error


def _run_chunk(handle: Any, indices: Sequence[int]) -> _ChunkResult:
    """The task a worker runs: rebuild each member of the chunk and call the fitness function.

    A fitness function that raises (``Exception`` or ``SystemExit``) or returns something that
    is not one real number fails its own member only. Values returned as CuPy scalars are read
    back together, in one transfer per chunk. A chunk whose generation is over (its job was
    stopped: threads past a deadline) stops before its next member and reports only the
    members it ran.
    """
    job = _open(handle)
    indices = tuple(indices)
    values = np.full(len(indices), math.nan)
    failures: dict[int, tuple[str, str, str, BaseException | None]] = {}
    on_device: dict[int, Any] = {}  # position: a fitness value returned as a device scalar
    start = time.perf_counter()
    ran = 0
    for position, (index, params) in enumerate(job.members(indices)):
        if job.stopped:
            break
        ran = position + 1
        try:
            value = job.fitness_fn(params)
        except (Exception, SystemExit) as error:
            failures[index] = _describe(error, job.local)
            continue
        if is_cupy_array(value) and value.size == 1 and value.dtype.kind in "biuf":
            on_device[position] = value.reshape(())
            continue
        fitness, problem = _as_fitness(value)
        if problem is None:
            values[position] = fitness
        else:
            failures[index] = ("invalid", problem, "", None)
    if on_device:
        values[list(on_device)] = host_values(list(on_device.values()))
    worker = _worker_id(threading.current_thread().name if job.local else None)
    busy = time.perf_counter() - start
    return _ChunkResult(job.token, indices[:ran], values[:ran], failures, worker, busy)


def _worker_id(thread: str | None = None) -> str:
    name = f"{socket.gethostname()}:{os.getpid()}"
    return name if thread is None else f"{name}:{thread}"
