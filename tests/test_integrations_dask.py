"""DaskExecutor on a real LocalCluster of worker processes (127.0.0.1): faults lose nothing.

One cluster of 2 single-thread worker processes serves the module; its scheduler has
``allowed-failures`` 0, so every worker death reaches ``evaluate`` (which owns the retries).
Tests that kill workers wait for the nanny to bring them back before returning.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
dask = pytest.importorskip("dask")

from eggroll_opt.integrations.dask import DaskExecutor, NoWorkersError  # noqa: E402

import eggroll_opt as eo  # noqa: E402
from eggroll_opt._worker import _Payload, _run_chunk  # noqa: E402

from .conftest import make_backend  # noqa: E402
from .test_evaluate import (  # noqa: E402
    KeyedFitness,
    device_sphere,
    make_strategy,
    marker_of,
    reference,
    rerun_members,
    slow_sphere,
    sphere,
)

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2


# Scheduler: every worker death reaches evaluate (it owns the retries). Cluster: keep the nanny
# of a worker that dies again and again; after `lost-worker-timeout` (15 s by default) a
# LocalCluster closes the nanny of a worker that is down at that moment, for good.
CLUSTER_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.deploy.lost-worker-timeout": "1h",
}


@pytest.fixture(scope="module")
def client():
    with dask.config.set(CLUSTER_CONFIG):
        cluster = distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server on a free local port
            silence_logs=logging.CRITICAL,
        )
        dask_client = distributed.Client(cluster)
        try:
            yield dask_client
        finally:
            dask_client.close(timeout=30)
            cluster.close(timeout=30)


def _all_workers(client):
    """Wait for the nannies to bring every worker back (after kills)."""
    try:
        client.wait_for_workers(WORKERS, timeout=90)
    except TimeoutError:  # a nanny went away: start the missing worker again
        client.cluster.scale(WORKERS)
        client.wait_for_workers(WORKERS, timeout=90)


@pytest.fixture
def executor(client):
    _all_workers(client)
    _wait_idle(client)
    dask_executor = DaskExecutor(client)
    try:
        yield dask_executor
    finally:
        dask_executor.shutdown(wait=True, cancel_futures=True)
        _all_workers(client)


def _wait_idle(client, seconds=60):
    deadline = time.monotonic() + seconds
    while any(client.processing().values()) and time.monotonic() < deadline:
        time.sleep(0.05)


def _kill_when_busy(client, killed, delay=0.1, seconds=60):
    """Kill (SIGKILL, by pid) the first worker seen running a chunk of the generation."""
    pids = client.run(os.getpid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        busy = sorted(
            address
            for address, keys in client.processing().items()
            if any("run_chunk" in str(key) for key in keys)
        )
        if busy:
            time.sleep(delay)
            os.kill(pids[busy[0]], signal.SIGKILL)
            killed.append(busy[0])
            return
        time.sleep(0.005)


def _accounting(result, expected, poison=()):
    """(lost, duplicated, wrong) member counts of an evaluation against the reference."""
    ok = np.ones(len(expected), dtype=bool)
    ok[list(poison)] = False
    has_value = ~np.isnan(result.fitness)
    lost = int(np.sum(~has_value & ~np.isin(np.arange(len(expected)), list(result.failures))))
    wrong = int(np.sum(result.fitness[ok] != expected[ok]))
    wrong += len(set(result.failures) - set(poison))
    return lost, result.duplicates, wrong


# -- the basics --------------------------------------------------------------------------------


def _base_transfers(dask_worker):
    """Incoming transfers of eggroll keys on this worker: [(key, nbytes)], then forget them."""
    entries = [
        (str(key), int(nbytes))
        for entry in dask_worker.transfer_incoming_log
        for key, nbytes in entry["keys"].items()
        if str(key).startswith("eggroll-")
    ]
    dask_worker.transfer_incoming_log.clear()
    return entries


def test_values_match_and_the_base_travels_once_per_worker(client, executor):
    es = eo.Eggroll(
        {"w": np.zeros((256, 256), np.float32), "b": np.zeros(256, np.float32)},
        popsize=64,
        sigma=0.1,
        learning_rate=0.05,
        seed=0,
        backend="numpy",  # the reference below computes on the host
    )
    base_bytes = 256 * 256 * 4 + 256 * 4
    client.run(_base_transfers)
    for _ in range(3):
        pop = es.ask()
        result = eo.evaluate(pop, sphere, executor, timeout=120)
        np.testing.assert_array_equal(result.fitness, reference(pop))
        assert result.failures == {} and result.tasks == WORKERS
        assert len(result.workers) == WORKERS  # one chunk on each worker
        assert 2 * base_bytes < result.bytes_sent < 2 * base_bytes + 8_000
        transfers = [entry for log in client.run(_base_transfers).values() for entry in log]
        # Measured by Dask: only the base moved between workers, at most once per worker.
        assert all(key.startswith("eggroll-base-") for key, _ in transfers)
        assert len(transfers) <= WORKERS - 1
        assert all(base_bytes <= nbytes < base_bytes + 8_000 for _, nbytes in transfers)
        es.tell(result.fitness)


@pytest.mark.gpu
def test_workers_rebuild_members_with_cupy_when_asked(executor):
    """``worker_backend="cupy"``: Dask workers hand the fitness CuPy members (``device_sphere``
    fails a member rebuilt on the host) with the in-process values of a CuPy strategy; the
    default still gives them NumPy members (``device_sphere`` then fails every member)."""
    make_backend("cupy")  # skips without CuPy (its workers get the stand-in through PYTHONPATH)
    es = make_strategy(popsize=12, backend="cupy")
    pop = es.ask()
    here = [float(device_sphere(member.params())) for member in pop]
    result = eo.evaluate(pop, device_sphere, executor, worker_backend="cupy", timeout=120)
    assert result.failures == {} and len(result.workers) == WORKERS
    np.testing.assert_array_equal(result.fitness, here)
    default = eo.evaluate(pop, device_sphere, executor, timeout=120)
    assert sorted(default.failures) == list(range(12))
    assert "members rebuilt on the host" in default.failures[0].message


def test_it_is_an_executor(client, executor):
    assert executor.workers == WORKERS and executor.client is client
    assert executor.scheduler_allowed_failures() == 0
    assert executor.submit(pow, 2, 10).result(timeout=60) == 1024
    failing = executor.submit(int, "not a number")
    with pytest.raises(ValueError, match="invalid literal"):
        failing.result(timeout=60)
    futures = [executor.submit(pow, i, 2) for i in range(20)]
    assert [f.result(timeout=60) for f in futures] == [i * i for i in range(20)]
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)
    with pytest.raises(TypeError, match=r"`client` must be a distributed\.Client, got int"):
        DaskExecutor(3)
    assert DaskExecutor(client).worker_wait == 60.0
    for wrong in (0, -1.0, "1", True):
        with pytest.raises(ValueError, match=rf"`worker_wait` must be .* got {wrong!r}"):
            DaskExecutor(client, worker_wait=wrong)


def test_docstring_examples():
    import doctest

    import eggroll_opt.integrations.dask as module

    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


def test_failures_are_classified(executor):
    killed = distributed.scheduler.KilledWorker
    chunk = killed("eggroll-run_chunk-abc", None, 3)
    base = killed("eggroll-base-abc-1", None, 0)
    assert executor.classify_failure(chunk) == "worker_lost"
    assert executor.lost_attempts(chunk) == 4  # the scheduler already ran it 4 times
    assert executor.classify_failure(base) == "data_lost"
    assert executor.lost_attempts(base) == 1
    cancelled = concurrent.futures.CancelledError("gone")
    assert executor.classify_failure(cancelled) == "data_lost"
    assert executor.classify_failure(ValueError("bug")) == "error"


def test_fitness_errors_come_back(executor):
    pop = make_strategy().ask()
    result = eo.evaluate(pop, KeyedFitness(marker_of(pop, 4), "raise"), executor, timeout=120)
    assert list(result.failures) == [4] and result.failures[4].reason == "raised"
    assert isinstance(result.failures[4].error, ArithmeticError)
    others = np.delete(np.arange(16), 4)
    np.testing.assert_array_equal(result.fitness[others], reference(pop)[others])


def test_optimize_on_dask_improves(executor):
    es = eo.Eggroll({"w": np.zeros((4, 5))}, popsize=16, sigma=0.1, learning_rate=0.05, seed=0)

    def loss(params):
        return float(np.sum((params["w"] - 0.5) ** 2))

    initial = loss(es.params)
    result = eo.optimize(es, loss, 15, executor=executor, progress=False, timeout=120)
    assert result.generations == 15 and result.num_failed == 0
    assert loss(es.params) < 0.8 * initial


# -- faults ------------------------------------------------------------------------------------


def _kill_run(client, executor):
    pop = make_strategy(popsize=64).ask()
    expected = reference(pop)
    killed = []
    killer = threading.Thread(target=_kill_when_busy, args=(client, killed))
    killer.start()
    try:
        result = eo.evaluate(pop, slow_sphere, executor, timeout=180)
    finally:
        killer.join()
    assert killed, "no worker was killed during the generation"
    return result, expected


def _poison_run(executor, max_retries):
    pop = make_strategy(popsize=32).ask()
    poison = KeyedFitness(marker_of(pop, 5), "kill")
    result = eo.evaluate(pop, poison, executor, max_retries=max_retries, timeout=300)
    return result, reference(pop)


def _assert_only_the_dead_chunk_reran(result):
    """A worker killed while both run their chunk of 32: its chunk, and nothing else, runs again."""
    rerun = rerun_members(result)
    print(
        f"Dask, one worker killed: {len(rerun)} of 64 members re-run, {result.tasks} tasks, "
        f"{result.lost_tasks} lost"
    )
    assert result.lost_tasks == 1
    assert rerun in (list(range(0, 32)), list(range(32, 64)))


def test_a_worker_killed_mid_generation_loses_nothing(client, executor):
    result, expected = _kill_run(client, executor)
    np.testing.assert_array_equal(result.fitness, expected)
    assert result.failures == {} and result.duplicates == 0
    assert _accounting(result, expected) == (0, 0, 0)
    _assert_only_the_dead_chunk_reran(result)


def test_a_poison_member_is_isolated(executor):
    result, expected = _poison_run(executor, max_retries=0)
    assert list(result.failures) == [5]
    assert result.failures[5].reason == "worker_lost"
    assert result.failures[5].attempts == 3  # its chunk, alone in parallel, alone
    assert _accounting(result, expected, poison=[5]) == (0, 0, 0)


def test_the_base_is_computed_again_when_its_workers_die(client, executor):
    pop = make_strategy().ask()
    payload = _Payload("recompute-test", pop.spec(0), sphere, eo.to_numpy(pop.base))
    broadcast = executor.broadcast(payload)
    key = broadcast.handle.key
    deadline = time.monotonic() + 60
    while not client.who_has([broadcast.handle]).get(key) and time.monotonic() < deadline:
        time.sleep(0.01)
    holders = client.who_has([broadcast.handle])[key]
    assert len(holders) == 1
    pids = client.run(os.getpid)
    os.kill(pids[holders[0]], signal.SIGKILL)
    while holders[0] in client.nthreads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert holders[0] not in client.nthreads()  # the only copy is gone
    chunk = executor.submit(_run_chunk, broadcast.handle, range(0, 4))
    result = chunk.result(timeout=120)
    np.testing.assert_array_equal(result.values, reference(pop)[:4])
    # The scheduler computed the base again from the task it keeps (a scatter would be lost).
    rebuilt = client.who_has([broadcast.handle]).get(key)
    assert rebuilt and holders[0] not in rebuilt
    executor.release(broadcast)


def test_deadline_on_dask(client, executor):
    pop = make_strategy().ask()
    stuck = KeyedFitness(marker_of(pop, 2), "sleep", seconds=2.0)
    start = time.perf_counter()
    result = eo.evaluate(pop, stuck, executor, timeout=0.5)
    assert time.perf_counter() - start < 2.0
    assert 2 in result.failures and result.failures[2].reason == "timeout"
    assert {f.reason for f in result.failures.values()} == {"timeout"}
    _wait_idle(client)
    again = eo.evaluate(pop, sphere, executor, timeout=120)
    np.testing.assert_array_equal(again.fitness, reference(pop))


@pytest.mark.slow
@pytest.mark.parametrize("repeat", range(10))
def test_faults_repeated(client, executor, repeat):
    """The kill and poison runs, ten times each: nothing lost, nothing twice."""
    result, expected = _kill_run(client, executor)
    kill_counts = _accounting(result, expected)
    _all_workers(client)
    _wait_idle(client)
    poisoned, expected = _poison_run(executor, max_retries=1)
    poison_counts = _accounting(poisoned, expected, poison=[5])
    print(
        f"fault run {repeat}: kill lost/duplicated/wrong={kill_counts} "
        f"(lost tasks {result.lost_tasks}, {result.seconds:.1f} s); poison "
        f"lost/duplicated/wrong={poison_counts} (failed {poisoned.failed}, attempts "
        f"{poisoned.failures[5].attempts if 5 in poisoned.failures else None}, "
        f"{poisoned.seconds:.1f} s)"
    )
    assert kill_counts == (0, 0, 0)
    _assert_only_the_dead_chunk_reran(result)
    assert poison_counts == (0, 0, 0) and poisoned.failed == [5]
    assert poisoned.failures[5].attempts == 2 + 2  # chunk, parallel single, alone twice


# -- a cluster without workers -----------------------------------------------------------------


@pytest.fixture
def lone_worker():
    """A cluster of one in-process worker (it starts in milliseconds), for tests that empty it."""
    cluster = distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    )
    dask_client = distributed.Client(cluster)
    try:
        yield cluster, dask_client
    finally:
        dask_client.close(timeout=30)
        cluster.close(timeout=30)


def test_an_empty_cluster_fails_clearly(lone_worker):
    """Every worker gone and none coming back: NoWorkersError after `worker_wait`, with or
    without a deadline (before: no deadline waited forever, a deadline failed every member as
    "timeout", generation after generation)."""
    cluster, client = lone_worker
    executor = DaskExecutor(client, worker_wait=1.0)
    pop = make_strategy().ask()
    slow = KeyedFitness(math.nan, "everyone-sleeps", seconds=0.1)  # 1.6 s for the population
    try:
        stopper = threading.Timer(0.5, cluster.scale, (0,))
        stopper.start()
        start = time.perf_counter()
        with pytest.raises(NoWorkersError, match=r"no workers for [0-9.]+ s \(`worker_wait`=1\)"):
            eo.evaluate(pop, slow, executor)  # the worker goes away mid-generation
        mid_generation = time.perf_counter() - start
        stopper.join()
        start = time.perf_counter()
        with pytest.raises(eo.EvaluationError, match="no workers"):  # NoWorkersError is one
            eo.optimize(make_strategy(), slow, 3, executor=executor, timeout=30, progress=False)
        at_start = time.perf_counter() - start
        print(f"NoWorkersError {mid_generation:.1f} s into the call, {at_start:.1f} s at start")
        assert mid_generation < 10 and at_start < 10
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _kill_workers_for(cluster, seconds, killed):
    """SIGKILL every worker process that is up, again and again, for ``seconds``."""
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        for nanny in list(cluster.workers.values()):
            pid = getattr(nanny, "pid", None)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        time.sleep(0.5)


@pytest.mark.slow
def test_repeated_kills_with_default_settings_finish_or_fail_clearly():
    """Default Dask settings (`allowed-failures` 3, `lost-worker-timeout` 15 s), workers killed
    every 0.5 s for 20 s: optimize either finishes or raises an EvaluationError that says why,
    within the kills plus `worker_wait` (60 s) plus a margin; it never stalls."""
    cluster = distributed.LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
    )
    dask_client = distributed.Client(cluster)
    killed = []
    killer = threading.Thread(target=_kill_workers_for, args=(cluster, 20, killed), daemon=True)
    outcome = "finished"
    start = time.perf_counter()
    try:
        executor = DaskExecutor(dask_client)
        stop_at = time.monotonic() + 30

        def after_the_kills(report):
            return time.monotonic() > stop_at

        killer.start()
        try:
            result = eo.optimize(
                make_strategy(),
                slow_sphere,
                10_000,
                executor=executor,
                callbacks=[after_the_kills],
                progress=False,
            )
            outcome = f"finished: {result.generations} generations, {result.num_failed} failed"
        except eo.EvaluationError as error:
            outcome = f"{type(error).__name__}: {error}"
            assert "no workers" in str(error) or "members failed" in str(error)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        elapsed = time.perf_counter() - start
        print(f"{len(killed)} kills; after {elapsed:.0f} s: {outcome[:300]}")
        assert killed and elapsed < 20 + 60 + 60
    finally:
        killer.join()
        dask_client.close(timeout=30)
        cluster.close(timeout=30)


# -- the example -------------------------------------------------------------------------------


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "eggroll_example_distributed", ROOT / "examples" / "distributed.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _load_example().main(["--help"])
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_example_quick_improves():
    """Run as a user would (a separate process with its own cluster); it must improve."""
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "distributed.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    ratio = float(re.search(r"ratio ([0-9.eE+-]+)", completed.stdout).group(1))
    assert ratio < 0.5, completed.stdout
    assert "0 failed evaluations" in completed.stdout
