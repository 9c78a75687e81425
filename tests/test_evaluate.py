"""evaluate() and optimize(): every member gets one value or one recorded failure, anywhere.

Process tests use small ``eo.ProcessPool`` instances, always shut down in ``finally``/``with``;
each evaluation that could hang has a ``timeout``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import importlib
import math
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest

import eggroll_opt as eo
import eggroll_opt._worker as worker_module
from eggroll_opt._backend import is_cupy_array
from eggroll_opt._worker import _JOBS, _Job, _open, _Packed, _Payload, _run_chunk

from .conftest import make_backend

ROOT = Path(__file__).resolve().parent.parent

# -- fitness functions (module level, so worker processes can import them) ----------------------


def sphere(params):
    """Sum of squares over every leaf: depends on every parameter of the member."""
    return float(sum(np.sum(np.asarray(leaf, dtype=np.float64) ** 2) for leaf in _leaves(params)))


def _leaves(tree):
    for value in tree.values():
        if isinstance(value, dict):
            yield from _leaves(value)
        else:
            yield value


def slow_sphere(params):
    time.sleep(0.01)
    return sphere(params)


class KeyedFitness:
    """Behaves differently for the member whose first parameter equals ``marker``."""

    def __init__(self, marker: float, action: str, seconds: float = 0.0) -> None:
        self.marker = marker
        self.action = action
        self.seconds = seconds

    def __call__(self, params):
        if float(np.ravel(params["w"])[0]) == self.marker:
            if self.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.action == "raise":
                raise ArithmeticError("marked member")
            if self.action == "sleep":
                time.sleep(self.seconds)
            if self.action == "exit":
                raise SystemExit(3)
            if self.action == "string":
                return "not a number"
            if self.action == "pair":
                return np.ones(2)
            if self.action == "complex":
                return 1 + 2j
        if self.action == "everyone-sleeps":
            time.sleep(self.seconds)
        return sphere(params)


def _pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def rerun_members(result):
    """Members submitted more than once: the work that lost tasks cost the generation."""
    return [int(index) for index in np.flatnonzero(result.attempts >= 2)]


def marker_of(population, index):
    return float(np.ravel(population[index].params()["w"])[0])


def make_strategy(popsize=16, *, mirrored=True, seed=0, backend="numpy", **options):
    params = {
        "w": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6),
        "block": {"kernel": np.full((3, 2, 2), 0.5), "bias": np.zeros(3)},
        "scale": np.float64(2.0) * np.ones(()),
        "fixed": np.ones((2, 2), np.float32),
    }
    return eo.Eggroll(
        params,
        popsize=popsize,
        sigma=0.1,
        learning_rate=0.05,
        seed=seed,
        mirrored=mirrored,
        noise_kinds={"fixed": "frozen"},
        backend=backend,
        **options,
    )


def reference(population, fitness=sphere):
    return np.array([fitness(member.params()) for member in population])


@pytest.fixture(scope="module")
def pool():
    """Two worker processes, shared by the module's process tests."""
    executor = eo.ProcessPool(2)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def threads():
    executor = concurrent.futures.ThreadPoolExecutor(4)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# -- in process --------------------------------------------------------------------------------


def test_in_process_values_match_member_params():
    pop = make_strategy().ask()
    result = eo.evaluate(pop, sphere)
    np.testing.assert_array_equal(result.fitness, reference(pop))
    assert result.failures == {} and result.num_failed == 0
    assert result.generation == 0 and result.attempts.tolist() == [1] * 16


@pytest.mark.parametrize(
    ("action", "reason", "text"),
    [
        ("raise", "raised", "ArithmeticError: marked member"),
        ("exit", "raised", "SystemExit: 3"),
        ("string", "invalid", "str"),
        ("pair", "invalid", "shape (2,)"),
        ("complex", "invalid", "complex"),
    ],
)
def test_a_failing_member_fails_alone_with_its_reason(action, reason, text):
    pop = make_strategy().ask()
    fitness = KeyedFitness(marker_of(pop, 3), action)
    result = eo.evaluate(pop, fitness)
    assert list(result.failures) == [3]
    failure = result.failures[3]
    assert failure.reason == reason and text in failure.message
    assert np.isnan(result.fitness[3])
    others = np.delete(np.arange(16), 3)
    np.testing.assert_array_equal(result.fitness[others], reference(pop)[others])
    if action == "raise":
        assert isinstance(failure.error, ArithmeticError)
        assert "ArithmeticError" in failure.traceback and "__call__" in failure.traceback


def test_vectorized_fitness_gets_the_population():
    es = make_strategy()
    pop = es.ask()
    seen = []

    def batched(population):
        seen.append(population)
        return pop.stacked("w").reshape(16, -1).sum(axis=1)

    result = eo.evaluate(pop, batched, vectorized=True)
    assert seen == [pop]
    np.testing.assert_allclose(result.fitness, [m.params()["w"].sum() for m in pop], rtol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        eo.evaluate(pop, lambda p: np.zeros(3), vectorized=True)
    with pytest.raises(eo.EvaluationError, match="ZeroDivisionError"):
        eo.evaluate(pop, lambda p: 1 / 0, vectorized=True)
    with pytest.raises(ValueError, match="`vectorized`"):
        eo.evaluate(pop, batched, "processes", vectorized=True)


def test_argument_errors_name_the_argument():
    pop = make_strategy().ask()
    with pytest.raises(TypeError, match="`population`"):
        eo.evaluate([1, 2], sphere)
    with pytest.raises(TypeError, match="`fitness_fn`"):
        eo.evaluate(pop, 3)
    with pytest.raises(ValueError, match="`timeout` must be > 0 seconds, got 0"):
        eo.evaluate(pop, sphere, timeout=0)
    with pytest.raises(TypeError, match="`timeout`"):
        eo.evaluate(pop, sphere, timeout="1")
    with pytest.raises(ValueError, match="`max_retries` must be at least 0, got -1"):
        eo.evaluate(pop, sphere, max_retries=-1)
    with pytest.raises(ValueError, match="`chunks_per_worker` must be at least 1, got 0"):
        eo.evaluate(pop, sphere, chunks_per_worker=0)
    with pytest.raises(ValueError, match=r"`executor` must be .* got 'gpu'"):
        eo.evaluate(pop, sphere, "gpu")
    with pytest.raises(TypeError, match="`executor` must be"):
        eo.evaluate(pop, sphere, object())
    with pytest.raises(TypeError, match="`vectorized` must be a bool"):
        eo.evaluate(pop, sphere, vectorized="yes")

    class Client:  # looks like a Dask client
        def scheduler_info(self):
            return {}

    with pytest.raises(TypeError, match="DaskExecutor"):
        eo.evaluate(pop, sphere, Client())
    with pytest.raises(ValueError, match="`max_workers` must be at least 1, got 0"):
        eo.ProcessPool(0)
    with pytest.raises(ValueError, match=r"`worker_backend` must be None or one of .*'gpu'"):
        eo.evaluate(pop, sphere, "threads", worker_backend="gpu")
    with pytest.raises(ValueError, match=r"`worker_backend`='numpy' applies to an executor"):
        eo.evaluate(pop, sphere, worker_backend="numpy")


def test_threads_deadline_bounds_the_call():
    """A fitness far slower than the deadline: "threads" returns at the deadline.

    Before, the call waited for every chunk to finish (here 4 members of 1.5 s per thread on 2
    CPUs: 6 s); now the threads left running are daemon threads, and each stops at the end of
    the member it was running.
    """
    pop = make_strategy(popsize=8).ask()
    slow = KeyedFitness(math.nan, "everyone-sleeps", seconds=1.5)
    before = set(threading.enumerate())
    start = time.perf_counter()
    result = eo.evaluate(pop, slow, "threads", timeout=0.3)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.2
    assert sorted(result.failures) == list(range(8))
    assert {f.reason for f in result.failures.values()} == {"timeout"}
    left = [thread for thread in set(threading.enumerate()) - before if thread.is_alive()]
    assert left and all(thread.daemon for thread in left)
    for thread in left:  # one member each (1.5 s), not the rest of their chunk
        thread.join(timeout=4)
    assert not any(thread.is_alive() for thread in left)


def test_a_chunk_in_threads_stops_at_the_deadline(threads):
    """A caller's thread pool: the call returns at the deadline and the chunk stops after the
    member it was running, instead of running its remaining members for nothing."""
    pop = make_strategy(popsize=8).ask()
    calls = []

    def counted(params):
        calls.append(1)
        time.sleep(0.2)
        return sphere(params)

    with concurrent.futures.ThreadPoolExecutor(1) as one_thread:
        start = time.perf_counter()
        result = eo.evaluate(pop, counted, one_thread, timeout=0.3)
        assert time.perf_counter() - start < 1.0
        time.sleep(1.0)  # the 8-member chunk would have run 6 more members by now
    assert len(calls) <= 3 and result.num_failed >= 6


def test_a_hung_fitness_holds_neither_the_call_nor_the_exit():
    """In a fresh interpreter: "threads" and optimize return at the deadline with a fitness that
    never returns, and so does the interpreter's exit with a ProcessPool worker stuck in a task
    (a stdlib pool would wait for both at exit)."""
    script = """
import time, numpy as np, eggroll_opt as eo
def hang(params):
    time.sleep(3600)
es = eo.Eggroll({"w": np.zeros((2, 3))}, popsize=4, sigma=0.1, learning_rate=0.1, seed=0,
                backend="numpy")
start = time.perf_counter()
result = eo.evaluate(es.ask(), hang, "threads", timeout=0.5)
try:
    eo.optimize(es, hang, 3, executor="threads", timeout=0.5, progress=False)
except eo.EvaluationError as error:
    print("optimize raised:", str(error)[:40])
pool = eo.ProcessPool(1)
pool.submit(time.sleep, 3600)
print("returned", sorted({f.reason for f in result.failures.values()}),
      f"after {time.perf_counter() - start:.1f} s")
"""
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "returned ['timeout']" in completed.stdout
    assert "optimize raised: generation 0: 4 of 4 members failed" in completed.stdout
    returned_after = float(completed.stdout.split("after ")[1].split(" s")[0])
    assert returned_after < 3.0
    assert time.perf_counter() - start < 60


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_process_pool_workers_end_with_their_pool_process(tmp_path):
    """A pool's process killed outright (no exit handler runs): its workers exit too, instead of
    waiting forever on a pipe whose other end they hold themselves."""
    pid_file = tmp_path / "pids"
    script = f"""
import os, signal, eggroll_opt as eo
pool = eo.ProcessPool(2)
futures = [pool.submit(pow, 2, 3) for _ in range(4)]
assert [f.result() for f in futures] == [8] * 4
open({str(pid_file)!r}, "w").write(" ".join(map(str, pool.pids)))
os.kill(os.getpid(), signal.SIGKILL)
"""
    subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL, timeout=60, cwd=ROOT)
    workers = [int(pid) for pid in pid_file.read_text().split()]
    assert len(workers) == 2
    deadline = time.monotonic() + 10
    while any(map(_alive, workers)) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphans = [pid for pid in workers if _alive(pid)]
    for pid in orphans:  # leave nothing behind
        os.kill(pid, signal.SIGKILL)
    assert orphans == []


def test_in_process_deadline_marks_unstarted_members():
    pop = make_strategy().ask()
    fitness = KeyedFitness(marker_of(pop, 0), "sleep", seconds=0.3)
    result = eo.evaluate(pop, fitness, timeout=0.1)
    assert 0 not in result.failures and not np.isnan(result.fitness[0])
    assert {f.reason for f in result.failures.values()} == {"timeout"}
    assert sorted(result.failures) == list(range(1, 16))


# -- executors give the in-process values, bit for bit ------------------------------------------


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("chunks_per_worker", [1, 3])
def test_threads_and_processes_match_in_process(pool, threads, mirrored, chunks_per_worker):
    es = make_strategy(popsize=18, mirrored=mirrored)
    pop = es.ask()
    expected = reference(pop)
    for executor in (threads, pool):
        result = eo.evaluate(pop, sphere, executor, chunks_per_worker=chunks_per_worker, timeout=60)
        np.testing.assert_array_equal(result.fitness, expected)
        assert result.failures == {} and result.duplicates == 0
        assert result.attempts.tolist() == [1] * 18
    assert result.tasks == 2 * chunks_per_worker


def test_every_backend_sends_host_arrays(backend, threads):
    es = make_strategy(backend=make_backend(backend))
    pop = es.ask()
    kinds = []

    def record(params):
        kinds.append(type(params["w"]).__module__.split(".")[0])
        return sphere(eo.to_numpy(params))

    result = eo.evaluate(pop, record, threads, timeout=60)
    assert set(kinds) == {"numpy"}
    np.testing.assert_allclose(
        result.fitness, [sphere(eo.to_numpy(m.params())) for m in pop], rtol=1e-5
    )


def device_sphere(params):
    """:func:`sphere` on CuPy members, returned as a device scalar; refuses host members."""
    cupy = importlib.import_module("cupy")
    leaves = list(_leaves(params))
    host = [type(leaf).__name__ for leaf in leaves if not is_cupy_array(leaf)]
    if host:
        raise TypeError(f"members rebuilt on the host: {host}")
    return sum(cupy.sum(cupy.asarray(leaf, dtype=cupy.float64) ** 2) for leaf in leaves)


@pytest.mark.gpu
@pytest.mark.parametrize("strategy_backend", ["numpy", "cupy"])
def test_cupy_workers_rebuild_members_on_the_device(pool, threads, strategy_backend):
    """``worker_backend="cupy"``: threads and worker processes hand the fitness CuPy members,
    whatever the strategy's backend, with the values of the in-process evaluation (bit for bit
    from a CuPy strategy: the same generator on the same device; to rounding from a NumPy one,
    whose generator is NumPy's own)."""
    make_backend("cupy")  # skips without CuPy
    es = make_strategy(popsize=12, backend=strategy_backend, sigma_adaptation="auto")
    es.ask()
    es.tell(np.arange(12.0))  # learned noise scales travel in the template
    pop = es.ask()
    assert pop.spec(0).scales is not None
    expected = [float(sphere(eo.to_numpy(member.params()))) for member in pop]
    for executor in (threads, pool):
        result = eo.evaluate(pop, device_sphere, executor, worker_backend="cupy", timeout=60)
        assert result.failures == {}
        if strategy_backend == "cupy":
            here = [float(device_sphere(member.params())) for member in pop]
            np.testing.assert_array_equal(result.fitness, here)
        np.testing.assert_allclose(result.fitness, expected, rtol=1e-6)
    numpy_members = eo.evaluate(pop, sphere, threads, worker_backend="numpy", timeout=60)
    np.testing.assert_allclose(numpy_members.fitness, expected, rtol=1e-6)


@pytest.mark.gpu
def test_cupy_workers_copy_the_base_to_the_device_once_per_generation(threads):
    """Device work that does not grow with the population: the base and its noise scales reach
    the device once per generation (one copy per array), and each task's device fitness values
    come back in one transfer. Counted by the strict stand-in's audit (on real CuPy only the
    values are checked)."""
    make_backend("cupy")
    cupy = importlib.import_module("cupy")
    audit = getattr(cupy, "_audit", None)
    counts = {}
    for popsize in (8, 32):
        es = make_strategy(popsize=popsize, backend="cupy", sigma_adaptation="auto")
        es.ask()
        es.tell(np.arange(float(popsize)))
        pop = es.ask()
        if audit is not None:
            audit.reset()
        result = eo.evaluate(pop, device_sphere, threads, worker_backend="cupy", timeout=60)
        assert result.failures == {} and result.tasks == 4
        if audit is not None:
            counts[popsize] = (audit.host_to_device, audit.syncs)
        scales = [
            part
            for leaf_scales in pop.spec(0).scales
            if leaf_scales is not None
            for part in (leaf_scales if isinstance(leaf_scales, tuple) else (leaf_scales,))
        ]
    if audit is not None:
        # The 5 base arrays to the host (the broadcast) and back, each array of noise scales
        # (rows and columns of a low-rank leaf, entry scales of a full one) once, and one
        # read-back per task (4 threads: 4 tasks).
        assert len(scales) >= 4
        assert counts[8] == counts[32] == (5 + len(scales), 5 + 4)


def test_a_worker_without_the_asked_backend_fails_clearly(monkeypatch):
    """``worker_backend="cupy"`` where CuPy cannot be used: an error naming the argument, from
    a thread worker and from a worker process, not one failed member per member."""
    pop = make_strategy().ask()

    def no_gpu(name):
        raise ValueError(f"`backend`={name!r} needs CuPy and an NVIDIA GPU, and none was found")

    monkeypatch.setattr(worker_module, "get_backend", no_gpu)
    with pytest.raises(ValueError, match=r"`worker_backend`='cupy' cannot be used on worker"):
        eo.evaluate(pop, sphere, "threads", worker_backend="cupy", timeout=60)
    with eo.ProcessPool(1) as fresh:  # forked after the patch: its worker has no CuPy either
        with pytest.raises(eo.EvaluationError, match=r"`worker_backend`='cupy' cannot be used"):
            eo.evaluate(pop, sphere, fresh, worker_backend="cupy", timeout=60)


def test_plain_process_pool_executor_and_more_workers_than_members():
    pop = make_strategy(popsize=2).ask()
    with concurrent.futures.ProcessPoolExecutor(3) as executor:
        result = eo.evaluate(pop, sphere, executor, timeout=60)
    np.testing.assert_array_equal(result.fitness, reference(pop))
    assert result.tasks == 1  # a mirrored pair stays in one chunk


def _children():
    return {process.pid for process in multiprocessing.active_children()}


def _assert_no_new_children(before):
    deadline = time.monotonic() + 10
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children() - before == set()


def test_named_executors_are_made_and_shut_down():
    pop = make_strategy().ask()
    before = _children()
    for name in ("threads", "processes"):
        result = eo.evaluate(pop, sphere, name, timeout=60)
        np.testing.assert_array_equal(result.fitness, reference(pop))
    _assert_no_new_children(before)


def test_unpicklable_fitness_is_refused_by_name(pool):
    lock = threading.Lock()

    def locked(params):
        with lock:
            return sphere(params)

    with pytest.raises(TypeError, match=r"`fitness_fn` .* cannot be pickled"):
        eo.evaluate(make_strategy().ask(), locked, pool, timeout=60)


def test_busy_time_is_reported(pool, threads):
    pop = make_strategy().ask()
    here = eo.evaluate(pop, slow_sphere)
    assert here.busy_seconds == here.seconds >= 16 * 0.01
    for executor, workers in ((threads, 4), (pool, 2)):
        result = eo.evaluate(pop, slow_sphere, executor, timeout=60)
        assert 16 * 0.01 <= result.busy_seconds <= workers * result.seconds
        assert set(result.worker_seconds) == set(result.workers)
        assert sum(result.worker_seconds.values()) == pytest.approx(result.busy_seconds)
        assert max(result.worker_seconds.values()) <= result.seconds


def test_closures_travel_to_processes(pool):
    offset = 3.0
    pop = make_strategy().ask()
    result = eo.evaluate(pop, lambda params: sphere(params) + offset, pool, timeout=60)
    np.testing.assert_array_equal(result.fitness, reference(pop) + offset)


def test_errors_come_back_from_processes(pool):
    pop = make_strategy().ask()
    fitness = KeyedFitness(marker_of(pop, 5), "raise")
    result = eo.evaluate(pop, fitness, pool, timeout=60)
    assert list(result.failures) == [5]
    failure = result.failures[5]
    assert failure.reason == "raised" and isinstance(failure.error, ArithmeticError)
    assert "marked member" in failure.traceback


# -- transport ---------------------------------------------------------------------------------


def test_base_travels_once_per_worker_not_per_member(pool):
    """Bytes sent per generation: one copy of the base per worker that ran a task (two tasks,
    usually one on each worker; on a loaded machine one worker may take both), whatever N."""
    big = {"w": np.zeros((256, 256), np.float32), "b": np.zeros(256, np.float32)}
    base_bytes = 256 * 256 * 4 + 256 * 4
    sent, received, copies = {}, {}, {}
    for popsize in (16, 512):
        es = eo.Eggroll(big, popsize=popsize, sigma=0.1, learning_rate=0.1, seed=0)
        result = eo.evaluate(es.ask(), sphere, pool, timeout=120)
        assert result.tasks == 2 and result.failures == {}
        copies[popsize] = len(result.workers)
        assert copies[popsize] in (1, 2)
        sent[popsize] = result.bytes_sent - copies[popsize] * base_bytes
        received[popsize] = result.bytes_received
        assert 0 < sent[popsize] < 8_000
    # Member specs travel as index ranges: 496 more members add no bytes (a spec per member
    # would add at least 8 each, 3,968). A base copy's envelope (under 1,000 bytes) is the
    # difference when one worker took both tasks in one run and not in the other.
    envelope = 1_000 if copies[16] != copies[512] else 100
    assert abs(sent[512] - sent[16]) < envelope
    # Results: 8 bytes per member plus a fixed envelope per task.
    assert 8 * (512 - 16) <= received[512] - received[16] < 12 * (512 - 16)


def test_workers_copy_the_base_once_aligned_and_writable():
    pop = make_strategy().ask()
    raw = bytes(24 * 4 + 1)
    unaligned = np.frombuffer(raw, dtype=np.float32, count=24, offset=1).reshape(4, 6)
    assert not unaligned.flags.aligned and not unaligned.flags.writeable  # as a frame may give
    base = eo.to_numpy(pop.base)
    base["w"] = unaligned
    job = _Job.prepare(_Payload("token-a", pop.spec(0), sphere, base))
    for value in job.base.values():
        assert value.flags.aligned and value.flags.writeable and value.flags.c_contiguous
    packed = _Packed("token-b", pickle.dumps(_Payload("token-b", pop.spec(0), sphere, base)))
    _JOBS.clear()
    try:
        opened = _open(packed)
        assert all(value.flags.aligned for value in opened.base.values())
        assert _open(packed) is opened  # once per process and generation
        assert _open(_Packed("token-b", b"never unpickled")) is opened
        with pytest.raises(RuntimeError, match="never sent to this worker"):
            _open(_Packed("token-c", b""))  # a token only, for a payload this process lacks
        result = _run_chunk(packed, range(0, 4))
        assert result.token == "token-b" and result.indices == (0, 1, 2, 3)
    finally:
        _JOBS.clear()


def test_worker_rebuild_matches_population_members():
    pop = make_strategy(popsize=10, mirrored=False).ask()
    job = _Job.prepare(_Payload("t", pop.spec(0), sphere, eo.to_numpy(pop.base)))
    for index, params in job.members((7, 1, 2, 3, 9)):
        expected = pop[index].params()
        np.testing.assert_array_equal(params["w"], expected["w"])
        np.testing.assert_array_equal(params["block"]["kernel"], expected["block"]["kernel"])
        np.testing.assert_array_equal(params["fixed"], expected["fixed"])


# -- lost workers ------------------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_poison_member_is_isolated_on_a_process_pool(pool, max_retries):
    pop = make_strategy(popsize=24).ask()
    poison = KeyedFitness(marker_of(pop, 5), "kill")
    result = eo.evaluate(pop, poison, pool, max_retries=max_retries, timeout=120)
    assert list(result.failures) == [5]
    failure = result.failures[5]
    assert failure.reason == "worker_lost" and "died" in failure.message
    # one try in its chunk, one alone in parallel, then max_retries + 1 alone with nothing else
    assert failure.attempts == 2 + max_retries + 1
    others = np.delete(np.arange(24), 5)
    np.testing.assert_array_equal(result.fitness[others], reference(pop)[others])
    assert result.duplicates == 0 and result.lost_tasks >= 2 + max_retries


def test_a_worker_killed_mid_generation_loses_nothing(pool):
    """One of two workers is killed while both run their chunk of 32: only its chunk runs again.

    (Before, the whole stdlib pool broke: both chunks were lost, all 64 members ran again, in
    66 tasks.)
    """
    pop = make_strategy(popsize=64).ask()
    expected = reference(pop)
    warm = eo.evaluate(pop, sphere, pool, timeout=60)  # processes are up
    np.testing.assert_array_equal(warm.fitness, expected)
    pids = pool.pids
    restarts = pool.restarts
    assert len(pids) == 2
    killer = threading.Timer(0.1, os.kill, (pids[0], signal.SIGKILL))
    killer.start()
    try:
        result = eo.evaluate(pop, slow_sphere, pool, timeout=120)
    finally:
        killer.join()
    np.testing.assert_array_equal(result.fitness, expected)
    assert result.failures == {} and result.duplicates == 0
    rerun = rerun_members(result)
    print(
        f"process pool, one worker killed: {len(rerun)} of 64 members re-run, "
        f"{result.tasks} tasks, {result.lost_tasks} lost"
    )
    assert result.lost_tasks == 1
    assert rerun in (list(range(0, 32)), list(range(32, 64)))  # the dead worker's chunk only
    assert result.tasks == 2 + 32  # the two chunks, then its members one per task
    assert pool.restarts == restarts + 1 and pids[1] in pool.pids  # the other worker went on


def test_deadline_on_a_process_pool_stops_the_stuck_task(pool):
    pop = make_strategy().ask()
    eo.evaluate(pop, sphere, pool, timeout=60)  # processes are up
    pids, restarts = set(pool.pids), pool.restarts
    stuck = KeyedFitness(marker_of(pop, 2), "sleep", seconds=30)
    start = time.perf_counter()
    result = eo.evaluate(pop, stuck, pool, timeout=1.0)
    assert time.perf_counter() - start < 10
    assert result.failures and {f.reason for f in result.failures.values()} == {"timeout"}
    assert 2 in result.failures
    again = eo.evaluate(pop, sphere, pool, timeout=60)  # right away
    np.testing.assert_array_equal(again.fitness, reference(pop))
    # Only the process running the late chunk was ended; the other one goes on.
    deadline = time.monotonic() + 10
    while len(pids & set(pool.pids)) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)  # the pool notices the ended process
    survivors = pids & set(pool.pids)
    assert len(survivors) == 1
    eo.evaluate(pop, sphere, pool, timeout=60)  # two chunks: a new process joins the survivor
    assert pool.restarts == restarts + 1 and survivors < set(pool.pids)


def test_process_pool_loses_only_the_task_of_the_worker_that_died():
    with eo.ProcessPool(2) as pool:
        futures = [pool.submit(_pid_after, 0.6) for _ in range(4)]
        deadline = time.monotonic() + 30
        while len(pool.pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # both workers run a task; two tasks wait
        os.kill(pool.pids[0], signal.SIGKILL)
        errors = [future.exception(timeout=60) for future in futures]
        lost = [error for error in errors if error is not None]
        assert len(lost) == 1 and isinstance(lost[0], concurrent.futures.BrokenExecutor)
        assert "died (signal SIGKILL)" in str(lost[0])
        assert pool.restarts == 1 and len(pool.pids) == 2
        assert pool.submit(pow, 3, 2).result(timeout=60) == 9
        with pytest.raises(ValueError, match="invalid literal") as info:
            pool.submit(int, "x").result(timeout=60)
        assert "in worker process" in "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(pow, 2, 2)


def test_process_pool_sends_the_payload_once_per_worker():
    """Eight tasks on two workers carry the base parameters twice (before: eight times)."""
    big = {"w": np.zeros((256, 256), np.float32)}
    base_bytes = 256 * 256 * 4
    pop = eo.Eggroll(big, popsize=64, sigma=0.1, learning_rate=0.1, seed=0).ask()
    with eo.ProcessPool(2) as pool:
        result = eo.evaluate(pop, sphere, pool, chunks_per_worker=4, timeout=120)
        assert result.tasks == 8 and result.failures == {}
        assert 2 * base_bytes < result.bytes_sent < 2 * base_bytes + 8_000
        assert 2 * base_bytes < pool._bytes_sent < 2 * base_bytes + 8_000  # what the pipes carried


def test_late_results_change_nothing(threads):
    """A member past the deadline finishes during the next generation: it is ignored."""
    es = make_strategy()
    first = es.ask()
    late = KeyedFitness(marker_of(first, 0), "sleep", seconds=0.6)
    result = eo.evaluate(first, late, threads, timeout=0.2)
    assert result.failures[0].reason == "timeout"
    frozen = result.fitness.copy()
    es.tell(result.fitness)
    second = es.ask()
    following = eo.evaluate(second, late, threads, timeout=30)
    time.sleep(0.7)  # the late task has finished by now
    np.testing.assert_array_equal(result.fitness, frozen)
    np.testing.assert_array_equal(following.fitness, reference(second, late))
    assert following.failures == {} and following.duplicates == 0


# -- accounting with a scripted executor --------------------------------------------------------


class LostWorker(Exception):
    pass


class LostData(Exception):
    pass


class ScriptedExecutor(eo.RemoteExecutor):
    """Runs tasks in this thread; ``script(call_number, indices)`` may replace the outcome."""

    def __init__(self, script, attempts_per_loss=1):
        self.script = script
        self.calls = 0
        self.broadcasts = 0
        self.released = 0
        self.abandoned = []
        self.attempts_per_loss = attempts_per_loss

    @property
    def workers(self):
        return 2

    def broadcast(self, payload):
        self.broadcasts += 1
        return eo.Broadcast(_Job.prepare(payload, copy=False), 0, per_task=False)

    def release(self, broadcast):
        self.released += 1

    def classify_failure(self, error):
        if isinstance(error, LostWorker):
            return "worker_lost"
        if isinstance(error, LostData):
            return "data_lost"
        return "error"

    def lost_attempts(self, error):
        return self.attempts_per_loss

    def abandon(self, futures):
        self.abandoned.extend(futures)

    def submit(self, fn, /, *args, **kwargs):
        self.calls += 1
        future = Future()
        outcome = self.script(self.calls, tuple(args[1]))
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        elif outcome == "hang":
            future.set_running_or_notify_cancel()
        else:
            result = fn(*args, **kwargs)
            future.set_result(outcome(result) if callable(outcome) else result)
        return future


def test_lost_broadcast_is_sent_again():
    pop = make_strategy().ask()
    executor = ScriptedExecutor(lambda call, indices: LostData("gone") if call == 1 else None)
    result = eo.evaluate(pop, sphere, executor)
    np.testing.assert_array_equal(result.fitness, reference(pop))
    assert executor.broadcasts == 2 and executor.released == 2 and result.lost_tasks == 1


def test_broadcast_lost_for_good_fails_its_members():
    pop = make_strategy().ask()
    executor = ScriptedExecutor(lambda call, indices: LostData("gone") if 0 in indices else None)
    result = eo.evaluate(pop, sphere, executor, max_retries=1)
    assert set(result.failures) == set(range(8))  # the first chunk
    assert {f.reason for f in result.failures.values()} == {"data_lost"}
    assert executor.broadcasts == 2  # sent again max_retries times
    np.testing.assert_array_equal(result.fitness[8:], reference(pop)[8:])


def test_an_executor_error_raises_and_abandons_the_rest():
    pop = make_strategy().ask()

    def script(call, indices):
        return RuntimeError("cannot import fitness") if call == 2 else "hang"

    executor = ScriptedExecutor(script)
    with pytest.raises(eo.EvaluationError, match="cannot import fitness"):
        eo.evaluate(pop, sphere, executor)
    assert len(executor.abandoned) == 1 and executor.released == 1


def test_duplicate_and_foreign_results_are_ignored():
    pop = make_strategy().ask()

    def repeat_first(result):
        # The first member appears twice, a member of another task once.
        extra = result.indices[0], (result.indices[0] + 8) % 16
        return type(result)(
            result.token,
            (*result.indices, *extra),
            np.concatenate([result.values, [123.0, 456.0]]),
            result.failures,
            result.worker,
            result.busy_seconds,
        )

    executor = ScriptedExecutor(lambda call, indices: repeat_first if call <= 2 else None)
    result = eo.evaluate(pop, sphere, executor)
    np.testing.assert_array_equal(result.fitness, reference(pop))
    assert result.duplicates == 4 and result.failures == {}


def test_stale_result_runs_the_members_again():
    pop = make_strategy().ask()

    def stale(result):
        return type(result)("another-generation", *list(vars(result).values())[1:])

    executor = ScriptedExecutor(lambda call, indices: stale if call == 1 else None)
    result = eo.evaluate(pop, sphere, executor)
    np.testing.assert_array_equal(result.fitness, reference(pop))
    assert result.lost_tasks == 1 and result.attempts[:8].tolist() == [2] * 8


def test_engine_retries_count_against_the_same_budget():
    """An engine that reran a task 4 times itself exhausts max_retries=2 in one loss."""
    pop = make_strategy().ask()

    def script(call, indices):
        return LostWorker("killed") if 5 in indices else None

    once = ScriptedExecutor(script, attempts_per_loss=1)
    result = eo.evaluate(pop, sphere, once, max_retries=2)
    assert result.failures[5].attempts == 2 + 3
    engine = ScriptedExecutor(script, attempts_per_loss=4)
    result = eo.evaluate(pop, sphere, engine, max_retries=2)
    assert result.failures[5].attempts == 2 + 1
    assert result.failures[5].reason == "worker_lost"
    others = np.delete(np.arange(16), 5)
    np.testing.assert_array_equal(result.fitness[others], reference(pop)[others])


def test_members_run_alone_only_when_nothing_else_is_in_flight():
    """A member lost twice runs again only once every other task of the generation is done."""
    pop = make_strategy().ask()

    class Asynchronous(eo.RemoteExecutor):
        def __init__(self):
            self.threads = concurrent.futures.ThreadPoolExecutor(4)
            self.futures = []
            self.submissions = collections.Counter()
            self.busy_when_alone = []

        @property
        def workers(self):
            return 2

        def broadcast(self, payload):
            return eo.Broadcast(_Job.prepare(payload, copy=False), 0, per_task=False)

        def classify_failure(self, error):
            return "worker_lost" if isinstance(error, LostWorker) else "error"

        def submit(self, fn, /, *args, **kwargs):
            indices = tuple(args[1])
            for index in indices:
                self.submissions[index] += 1
            if len(indices) == 1 and self.submissions[indices[0]] >= 3:
                self.busy_when_alone.append(sum(not f.done() for f in self.futures))
            lose = any(i in (3, 4) and self.submissions[i] <= 2 for i in indices)

            def task():
                time.sleep(0.01)
                if lose:
                    raise LostWorker("died")
                return fn(*args, **kwargs)

            future = self.threads.submit(task)
            self.futures.append(future)
            return future

        def shutdown(self, wait=True, *, cancel_futures=False):
            self.threads.shutdown(wait=wait, cancel_futures=cancel_futures)

    with Asynchronous() as executor:
        result = eo.evaluate(pop, sphere, executor, timeout=60)
    np.testing.assert_array_equal(result.fitness, reference(pop))
    assert result.attempts.tolist() == [2, 2, 2, 3, 3, 2, 2, 2] + [1] * 8
    assert executor.busy_when_alone == [0, 0]


# -- optimize ----------------------------------------------------------------------------------


def _target_loss(params):
    return float(np.sum((params["w"] - 0.5) ** 2))


def small_strategy(**options):
    return eo.Eggroll(
        {"w": np.zeros((4, 5))},
        popsize=16,
        sigma=0.1,
        learning_rate=0.05,
        seed=0,
        backend="numpy",
        **options,
    )


@pytest.mark.parametrize("executor", [None, "threads", "processes"])
def test_optimize_improves_and_reports(executor):
    es = small_strategy()
    initial = _target_loss(es.params)
    reports = []
    result = eo.optimize(
        es, _target_loss, 40, executor=executor, callbacks=[reports.append], progress=False
    )
    assert result.generations == 40 == len(result.history) == len(reports) == es.generation
    assert result.stop_reason == "generations"
    assert _target_loss(es.params) < 0.5 * initial
    assert [r.generation for r in reports] == list(range(40))
    assert reports[-1].strategy is es and reports[-1].evaluation.fitness.shape == (16,)
    assert result.best_fitness == min(s.best_fitness for s in result.history)
    assert result.history[result.best_generation].best_fitness == result.best_fitness


def test_optimize_vectorized_matches_per_member():
    def batched(population):
        return np.array([_target_loss(m.params()) for m in population])

    a, b = small_strategy(), small_strategy()
    eo.optimize(a, _target_loss, 5, progress=False)
    eo.optimize(b, batched, 5, vectorized=True, progress=False)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])


def test_method_optimize_is_the_function():
    a, b = small_strategy(), small_strategy()
    by_function = eo.optimize(a, _target_loss, 6, progress=False, patience=3)
    by_method = b.optimize(_target_loss, 6, progress=False, patience=3)
    np.testing.assert_array_equal(a.params["w"], b.params["w"])
    assert by_method.generations == by_function.generations == b.generation
    assert by_method.best_fitness == by_function.best_fitness
    with pytest.raises(TypeError, match="unknown_option"):
        b.optimize(_target_loss, 2, unknown_option=1)


def test_optimize_stops_early():
    stopped = eo.optimize(
        small_strategy(),
        _target_loss,
        50,
        progress=False,
        callbacks=[lambda report: report.generation == 3],
    )
    assert stopped.stop_reason == "callback" and stopped.generations == 4
    reached = eo.optimize(small_strategy(), _target_loss, 200, target=4.0, progress=False)
    assert reached.stop_reason == "target" and reached.best_fitness <= 4.0
    assert reached.generations < 200
    flat = eo.optimize(small_strategy(), lambda p: 1.0, 50, patience=5, progress=False)
    assert flat.stop_reason == "patience" and flat.generations == 6
    maximizing = eo.optimize(
        small_strategy(maximize=True),
        lambda p: -_target_loss(p),
        200,
        target=-4.0,
        progress=False,
    )
    assert maximizing.stop_reason == "target" and maximizing.best_fitness >= -4.0


def test_optimize_checkpoints_and_resumes(tmp_path):
    path = tmp_path / "run.ckpt"
    es = small_strategy()
    saves = []
    original_save = es.save
    es.save = lambda p: (saves.append(es.generation), original_save(p))
    eo.optimize(es, _target_loss, 7, checkpoint=path, checkpoint_every=3, progress=False)
    assert saves == [3, 6, 7]
    resumed = eo.Eggroll.load(path, backend="numpy")
    assert resumed.generation == 7
    np.testing.assert_array_equal(resumed.params["w"], es.params["w"])
    eo.optimize(resumed, _target_loss, 3, progress=False)
    eo.optimize(es, _target_loss, 3, progress=False)
    np.testing.assert_array_equal(resumed.params["w"], es.params["w"])


def test_optimize_failure_policies():
    es = small_strategy()
    pop = es.ask()
    bad = KeyedFitness(float(np.ravel(pop[2].params()["w"])[0]), "raise")

    def loss(params):
        return bad(params)

    result = eo.optimize(es, loss, 1, progress=False)
    assert result.num_failed == 1 and result.history[0].num_failed == 1
    es = small_strategy()
    with pytest.raises(eo.EvaluationError, match="member 2: raised: ArithmeticError") as info:
        eo.optimize(es, loss, 3, failure_policy="raise", progress=False)
    assert info.value.evaluation.failed == [2] and es.generation == 0
    with pytest.raises(eo.EvaluationError, match="16 of 16 members failed"):
        eo.optimize(small_strategy(), lambda p: 1 / 0, 3, progress=False)


def test_optimize_argument_errors():
    es = small_strategy()
    with pytest.raises(TypeError, match="`strategy`"):
        eo.optimize("es", _target_loss, 3)
    with pytest.raises(ValueError, match="`generations` must be at least 1, got 0"):
        eo.optimize(es, _target_loss, 0)
    with pytest.raises(ValueError, match="`failure_policy`"):
        eo.optimize(es, _target_loss, 1, failure_policy="skip")
    with pytest.raises(TypeError, match="`callbacks` must hold callables"):
        eo.optimize(es, _target_loss, 1, callbacks=[1])
    with pytest.raises(ValueError, match="`checkpoint_every` must be at least 1"):
        eo.optimize(es, _target_loss, 1, checkpoint_every=0)
    with pytest.raises(TypeError, match="`target`"):
        eo.optimize(es, _target_loss, 1, target="low")
    with pytest.raises(ValueError, match="`vectorized`"):
        eo.optimize(es, _target_loss, 1, vectorized=True, executor="processes")
    with pytest.raises(ValueError, match=r"`worker_backend` must be None or one of .*'gpu'"):
        eo.optimize(es, _target_loss, 1, executor="threads", worker_backend="gpu")
    with pytest.raises(ValueError, match=r"`worker_backend`='cupy' applies to an executor"):
        eo.optimize(es, _target_loss, 1, worker_backend="cupy")
    assert es.generation == 0


def test_progress_bar_shows_generations(capsys):
    pytest.importorskip("tqdm")
    eo.optimize(small_strategy(), _target_loss, 3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "best=" in err
    eo.optimize(small_strategy(), _target_loss, 3, progress=False)
    assert capsys.readouterr().err == ""


def test_optimize_shuts_down_the_pool_it_made():
    before = _children()
    eo.optimize(small_strategy(), _target_loss, 2, executor="processes", progress=False)
    _assert_no_new_children(before)


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(10))
def test_process_pool_faults_repeated(pool, repeat):
    """The kill and poison runs on a process pool, ten times: nothing lost, nothing twice."""
    test_a_worker_killed_mid_generation_loses_nothing(pool)
    test_a_poison_member_is_isolated_on_a_process_pool(pool, max_retries=2)


def _capped_rank_fitness(params):
    return float(np.sum((params["out"]["w"] - 1) ** 2) + np.sum(params["hidden"]["w"] ** 2))


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_workers_rebuild_capped_rank_leaves_as_the_strategy_does(executor):
    # rank=3 caps the 1 x 24 leaf at rank 1: workers must use each leaf's own rank.
    params = {"hidden": {"w": np.zeros((8, 24))}, "out": {"w": np.zeros((1, 24))}}
    es = eo.Eggroll(params, popsize=8, sigma=0.1, rank=3, seed=0, backend="numpy")
    pop = es.ask()
    local = [_capped_rank_fitness(member.params()) for member in pop]
    evaluation = eo.evaluate(pop, _capped_rank_fitness, executor)
    np.testing.assert_allclose(evaluation.fitness, local, rtol=1e-12)
