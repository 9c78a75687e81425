"""The black-box benchmark: its BBOB functions equal ioh's, its bookkeeping, its quick run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import blackbox

BBOB = ("f1", "f2", "f8", "f10", "f15")
SMALL_DIMS = (2, 10, 20, 40, 64)


def _points(problem: blackbox.Problem, rng: np.random.Generator) -> np.ndarray:
    """Random points in the search box, points near the optimum, and the optimum itself."""
    d = problem.dim
    return np.vstack(
        [
            rng.uniform(-5, 5, (6, d)),
            problem.x_opt + 1e-3 * rng.standard_normal((3, d)),
            problem.x_opt[None, :],
        ]
    )


def _compare_with_ioh(name: str, dim: int, seed: int) -> None:
    problem = blackbox.make_problem(name, dim)
    reference = blackbox.ioh_problem(int(name[1:]), dim)
    points = _points(problem, np.random.default_rng(seed))
    ours = problem.value(points)
    theirs = np.array([reference(x) for x in points])
    np.testing.assert_allclose(ours, theirs, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dim", SMALL_DIMS)
@pytest.mark.parametrize("name", BBOB)
def test_vectorised_functions_equal_ioh(name, dim):
    pytest.importorskip("ioh")
    _compare_with_ioh(name, dim, seed=dim)


@pytest.mark.parametrize("dim", SMALL_DIMS)
@pytest.mark.parametrize("name", BBOB)
def test_generator_gives_ioh_optimum(name, dim):
    pytest.importorskip("ioh")
    reference = blackbox.ioh_problem(int(name[1:]), dim)
    problem = blackbox.make_problem(name, dim, check_ioh=False)
    np.testing.assert_array_equal(problem.x_opt, np.asarray(reference.optimum.x))
    assert problem.f_opt == reference.optimum.y
    assert problem.gap(problem.x_opt)[0] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["f10", "f15"])
def test_rotated_functions_equal_ioh_at_1024(name):
    pytest.importorskip("ioh")  # building ioh's problem takes about 25 s at d = 1024
    _compare_with_ioh(name, 1024, seed=3)


def test_rotation_is_orthogonal_and_deterministic():
    rotation = blackbox.bbob_rotation(10015, 30)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(30), atol=1e-12)
    np.testing.assert_array_equal(rotation, blackbox.bbob_rotation.__wrapped__(10015, 30))
    assert not rotation.flags.writeable


def test_uniform_generator_is_the_shuffled_lehmer_stream():
    u = blackbox.bbob_uniform(5000, 123)
    assert u.shape == (5000,) and 0 < u.min() and u.max() <= 1
    np.testing.assert_array_equal(u[:100], blackbox.bbob_uniform(100, 123))
    assert abs(u.mean() - 0.5) < 0.02


def test_layout_and_ellrc_conditioning_is_row_times_column():
    assert blackbox.matrix_shape(10) == (2, 5)
    assert blackbox.matrix_shape(1024) == (32, 32)
    problem = blackbox.make_problem("ellrc", 100)
    np.testing.assert_array_equal(problem.x_opt, blackbox.make_problem("f2", 100).x_opt)
    unit = np.eye(100)
    coefficients = problem.gap(problem.x_opt + unit).reshape(10, 10)  # c_i, row-major
    logs = np.log10(coefficients)
    outer = logs[:, :1] + logs[:1, :] - logs[0, 0]
    np.testing.assert_allclose(logs, outer, atol=1e-10)
    assert logs.max() - logs.min() == pytest.approx(6.0)


def test_trace_counts_evaluations_to_target_exactly():
    trace = blackbox.Trace([1, 2, 3, 5, 10], target=1e-8)
    trace.record(np.array([5.0, 3.0, np.nan]), mean_gap=4.0, sigma=1.0)
    assert trace.hit is None and trace.best_at == [5.0, 3.0, 3.0]
    assert not trace.done
    trace.record(np.array([2.0, 1e-9, 0.5]), mean_gap=0.1, sigma=0.5)
    assert trace.hit == 5  # the fifth evaluation is the first at or below 1e-8
    assert trace.best_at == [5.0, 3.0, 3.0, 1e-9]
    assert trace.mean_at == [4.0, 4.0, 4.0, 0.1]
    assert trace.done and trace.evaluations == 6
    trace.finish(mean_gap=0.01, sigma=0.2)
    assert trace.best_at[-1] == 1e-9 and trace.mean_at[-1] == 0.01
    assert len(trace.best_at) == len(trace.grid)


def test_trace_ignores_evaluations_beyond_the_budget():
    trace = blackbox.Trace([1, 4])
    counted = trace.record(np.array([3.0, 2.0, 1.0, 0.5, 1e-12, 1e-12]))
    assert counted == 4 and trace.evaluations == 4
    assert trace.hit is None and trace.best == 0.5 and trace.done
    assert trace.crosses(1) is False


def test_log_grid_holds_the_budgets():
    grid = blackbox.log_grid(100_000, [10_000, 100_000])
    assert grid[0] == 1 and grid[-1] == 100_000 and 10_000 in grid
    assert grid == sorted(set(grid))
    assert sum(10_000 <= g <= 100_000 for g in grid) == 11  # ten per decade


def test_run_one_reaches_the_sphere_target_and_says_when():
    pytest.importorskip("cmaes")
    problem = blackbox.make_problem("f1", 4, check_ioh=False)
    row = blackbox.run_one(problem, "sepcma", seed=0, budgets=(100, 5000))
    assert row["error"] is None and row["stopped"] == "target"
    hit = row["evals_to_target"]
    assert hit is not None and hit <= row["evaluations"] < hit + row["popsize"]
    for count, gap in zip(row["grid"], row["best_gap"], strict=True):
        assert (gap <= 1e-8) == (count >= hit)
    assert row["final_best_gap"] <= 1e-8
    assert row["ms_per_generation"] > 0


@pytest.mark.parametrize("method", ["eggroll-scales", "openes"])
def test_es_methods_run_on_the_matrix_layout(method):
    problem = blackbox.make_problem("ellrc", 10, check_ioh=False)
    row = blackbox.run_one(problem, method, seed=1, budgets=(50, 200))
    assert row["error"] is None and row["evaluations"] == 200
    assert row["shape"] == [2, 5] and row["popsize"] == 10
    assert row["best_gap"][-1] <= row["best_gap"][0]
    assert all(math.isfinite(g) for g in row["best_gap"])


def _check_quick_run(tmp_path, methods):
    data = json.loads((tmp_path / "blackbox.json").read_text())
    rows = data["rows"]
    assert len(rows) == 2 * 2 * len(methods)  # d = 10, 100; f1, ellrc; one seed
    assert {row["method"] for row in rows} == set(methods)
    assert all(row["error"] is None for row in rows)
    assert {row["dim"] for row in rows} == {10, 100}
    assert data["machine"]["cpus"]
    assert data["settings"]["blas_threads"].startswith(("limited to 1", "not limited"))
    text = (tmp_path / "blackbox.md").read_text()
    assert "### f1 sphere, d = 100 (10x10)" in text and "eggroll-scales" in text
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (tmp_path / "blackbox.png").stat().st_size > 0
    sphere = [r for r in rows if r["function"] == "f1" and r["method"] == "sepcma"]
    assert all(r["evals_to_target"] is not None for r in sphere)
    assert blackbox.main(["--report", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "blackbox.md").read_text() == text


def test_quick_run_without_cma_writes_json_markdown_and_plot(tmp_path):
    pytest.importorskip("cmaes")
    methods = [m for m in blackbox.METHODS if m != "cma"]  # full CMA-ES is most of the time
    assert blackbox.main(["--quick", "--methods", ",".join(methods), "--out", str(tmp_path)]) == 0
    _check_quick_run(tmp_path, methods)


@pytest.mark.slow
def test_quick_run_writes_json_markdown_and_plot(tmp_path):
    pytest.importorskip("cmaes")  # about 20 s on two cores
    assert blackbox.main(["--quick", "--out", str(tmp_path)]) == 0
    _check_quick_run(tmp_path, blackbox.METHODS)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown function"):
        blackbox.make_problem("f99", 10)
    with pytest.raises(SystemExit):
        blackbox.main(["--methods", "nope", "--out", "unused"])
