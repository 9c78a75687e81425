"""A vectorised fitness in parts on threads: the same values as one call, every member once."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

import eggroll_opt as eo
from eggroll_opt import _parts
from eggroll_opt._population import chunk_ranges


def strategy(popsize=16, *, mirrored=True, seed=0):
    params = {"w": np.linspace(-1, 1, 12).reshape(3, 4), "b": np.zeros(3)}
    return eo.Eggroll(
        params,
        popsize=popsize,
        sigma=0.1,
        learning_rate=0.05,
        mirrored=mirrored,
        seed=seed,
        backend="numpy",
    )


def member_sums(population):
    """One value per member, from the population's own arrays (no BLAS: exact everywhere)."""
    return population.stacked("w").reshape(len(population), -1).sum(axis=1)


def blas_threads():
    return max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")


def indices(population):
    """Each member's own index in the population it came from."""
    return population.first + np.arange(len(population), dtype=float)


@pytest.mark.parametrize("mirrored", [True, False])
@pytest.mark.parametrize("popsize", [2, 14, 16, 30])
@pytest.mark.parametrize("chunks_per_worker", [1, 3])
def test_parts_cover_every_member_once_in_order(mirrored, popsize, chunks_per_worker):
    pop = strategy(popsize, mirrored=mirrored).ask()
    seen = []
    lock = threading.Lock()

    def fitness(part):
        with lock:
            seen.append((part.first, len(part)))
        return indices(part)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        result = eo.evaluate(
            pop, fitness, pool, vectorized=True, chunks_per_worker=chunks_per_worker
        )
    np.testing.assert_array_equal(result.fitness, np.arange(popsize))
    assert sum(size for _, size in seen) == popsize and len(seen) == result.tasks
    assert result.tasks <= 2 * chunks_per_worker
    if mirrored:  # pairs stay together
        assert all(first % 2 == 0 and size % 2 == 0 for first, size in seen)
    assert not result.failures and (result.attempts == 1).all()
    np.testing.assert_array_equal(
        eo.evaluate(pop, member_sums, "threads", vectorized=True).fitness,
        eo.evaluate(pop, member_sums, vectorized=True).fitness,
    )


def test_a_sub_population_is_evaluated_in_its_own_order():
    part = strategy(16).ask().split(8)[1]
    result = eo.evaluate(part, indices, "threads", vectorized=True, chunks_per_worker=2)
    np.testing.assert_array_equal(result.fitness, np.arange(8, 16))


def test_threads_give_the_in_process_values_and_the_same_step():
    def loss(population):  # a BLAS product, so the limit applies
        x = np.linspace(0, 1, 40).reshape(4, 10)
        hidden = population.stacked("w") @ x[:, :4].T
        return (hidden**2).sum(axis=(1, 2)) + population.stacked("b").sum(axis=1)

    a, b = strategy(32), strategy(32)
    in_process = eo.optimize(a, loss, 4, vectorized=True, progress=False)
    on_threads = eo.optimize(b, loss, 4, vectorized=True, executor="threads", progress=False)
    np.testing.assert_allclose(b.params["w"], a.params["w"], rtol=1e-12)
    assert on_threads.best_fitness == pytest.approx(in_process.best_fitness, rel=1e-12)


def test_blas_is_shared_while_parts_run_and_restored_after():
    before = blas_threads()
    inside = []

    def fitness(part):
        inside.append(blas_threads())
        return member_sums(part)

    pop = strategy().ask()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        eo.evaluate(pop, fitness, pool, vectorized=True)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        eo.evaluate(pop, fitness, pool, vectorized=True)
    assert inside == [max(1, before // 2)] * 2 + [before]
    assert blas_threads() == before

    def stop(report):
        inside.append(blas_threads())
        return report.generation == 1

    inside.clear()
    eo.optimize(
        strategy(), fitness, 5, vectorized=True, executor="threads", progress=False,
        callbacks=stop,
    )  # fmt: skip
    workers = eo.RemoteExecutor().workers  # "threads" has a thread per CPU
    assert set(inside) == {max(1, before // workers)}  # held between evaluations too
    assert blas_threads() == before


def test_a_limit_already_held_is_not_divided_again():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(4, user_api="blas"):
        if blas_threads() != 4:
            pytest.fail(f"BLAS did not take 4 threads here (it has {blas_threads()})")
        with _parts.blas_shared_by(2):
            outer = blas_threads()
            with _parts.blas_shared_by(2):  # evaluate inside optimize
                inner = blas_threads()
            after_inner = blas_threads()
        assert (outer, inner, after_inner) == (2, 2, 2)
        assert blas_threads() == 4


def test_a_raising_part_raises_and_names_its_members():
    def fitness(part):
        if part.first >= 8:
            raise ArithmeticError("bad part")
        return member_sums(part)

    pop = strategy(16).ask()
    with pytest.raises(eo.EvaluationError, match=r"ArithmeticError on the part of members 8-15"):
        eo.evaluate(pop, fitness, "threads", vectorized=True)
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        eo.evaluate(pop, lambda part: np.zeros(3), "threads", vectorized=True)
    with pytest.raises(TypeError, match="real numbers"):
        eo.evaluate(pop, lambda part: ["x"] * len(part), "threads", vectorized=True)


def test_a_part_past_the_deadline_fails_its_members_with_timeout():
    release = threading.Event()

    def fitness(part):
        if part.first >= 8:
            release.wait(30)
        return member_sums(part)

    pop = strategy(16).ask()
    start = time.perf_counter()
    try:
        result = eo.evaluate(pop, fitness, "threads", vectorized=True, timeout=0.5)
    finally:
        release.set()
    assert time.perf_counter() - start < 10
    assert result.failed == list(range(8, 16))
    assert {f.reason for f in result.failures.values()} == {"timeout"}
    assert np.isnan(result.fitness[8:]).all() and np.isfinite(result.fitness[:8]).all()


def test_what_cannot_run_a_vectorised_fitness_is_refused():
    pop = strategy().ask()
    with pytest.raises(ValueError, match=r"`vectorized`=True .* got `executor`='processes'"):
        eo.evaluate(pop, member_sums, "processes", vectorized=True)
    with eo.ProcessPool(1) as pool, pytest.raises(ValueError, match="`executor`=<"):
        eo.evaluate(pop, member_sums, pool, vectorized=True)
    with pytest.raises(ValueError, match=r"`worker_backend`='numpy' applies to members rebuilt"):
        eo.evaluate(pop, member_sums, "threads", vectorized=True, worker_backend="numpy")
    es = strategy()
    with pytest.raises(ValueError, match="`executor`='processes'"):
        eo.optimize(es, member_sums, 1, vectorized=True, executor="processes")
    assert es.generation == 0


@given(size=st.integers(0, 600), chunks=st.integers(1, 70), mirrored=st.booleans())
def test_chunk_ranges_cover_the_members_in_balanced_runs(size, chunks, mirrored):
    size += size % 2 if mirrored else 0
    ranges = chunk_ranges(size, chunks, mirrored)
    assert [i for members in ranges for i in members] == list(range(size))
    assert all(len(members) > 0 for members in ranges) and len(ranges) <= chunks
    lengths = [len(members) for members in ranges]
    if mirrored:  # pairs stay together
        assert all(members.start % 2 == 0 and len(members) % 2 == 0 for members in ranges)
        assert not lengths or max(lengths) - min(lengths) <= 2
    else:
        assert len(ranges) == min(size, chunks)
        assert not lengths or max(lengths) - min(lengths) <= 1
