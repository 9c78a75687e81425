"""The HPO benchmark: quick mode end to end, the mixed problem's failures, budget bookkeeping."""

from __future__ import annotations

import json
import os

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("sklearn")
pytest.importorskip("ioh")

from benchmarks import hpo  # noqa: E402

MIXED_OPTIMUM = {
    **{f"x{i}": target for i, target in enumerate(hpo.MIXED_FLOATS)},
    **{f"lr{i}": target for i, target in enumerate(hpo.MIXED_LOGS)},
    **{f"n{i}": target for i, target in enumerate(hpo.MIXED_INTS)},
    "width": hpo.MIXED_LOG_INT,
    **{f"s{i}": round(index * 0.1, 1) for i, index in enumerate(hpo.MIXED_STEPS)},
    "optimizer": hpo.MIXED_CHOICE,
    "dropout": hpo.MIXED_DROPOUT,
}


def test_quick_mode_runs_saves_every_run_and_resumes(tmp_path, capsys):
    out = str(tmp_path)
    argv = ["--quick", "--out", out, "--problems", "int-sphere30,mixed"]
    assert hpo.main(argv) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 2 * len(hpo.SAMPLERS)
    assert "mixed-eggroll-fixed-seed0.json" in runs
    for name in ("hpo.json", "hpo.md"):
        assert (tmp_path / name).stat().st_size > 0
    pytest.importorskip("matplotlib")
    assert (tmp_path / "hpo.png").stat().st_size > 0

    document = json.loads((tmp_path / "hpo.json").read_text())
    assert len(document["runs"]) == len(runs)
    run = next(r for r in document["runs"] if r["problem"] == "int-sphere30")
    assert run["trials"] == max(hpo.QUICK_BUDGETS)
    assert len(run["best"]) == len(run["seconds"]) == len(run["sampler_ms"]) == run["trials"]
    assert run["source"] == hpo.source_fingerprint()
    text = (tmp_path / "hpo.md").read_text()
    assert "## mixed" in text and "| eggroll-fixed |" in text and "best @30" in text

    # A second call finds every run saved and runs nothing; --report rebuilds the same table.
    before = {name: os.path.getmtime(tmp_path / "runs" / name) for name in runs}
    capsys.readouterr()
    assert hpo.main(argv) == 0
    assert " seed 0: " not in capsys.readouterr().out
    assert before == {name: os.path.getmtime(tmp_path / "runs" / name) for name in runs}
    assert hpo.main(["--report", "--out", out]) == 0
    assert (tmp_path / "hpo.md").read_text() == text


def test_mixed_problem_has_failed_pruned_and_complete_trials():
    problem = hpo.problems()["mixed"]
    run = hpo.run_one(problem, "random", seed=0, plan=hpo.Plan(60), log_every=10**9)
    assert set(run["states"]) == {"C", "F", "P"}
    for state, value in zip(run["states"], run["values"], strict=True):
        assert (value is None) == (state != "C")
    complete = [v for v in run["values"] if v is not None]
    assert run["best"][-1] == min(complete)


def test_mixed_problem_optimum_is_zero_and_its_regions_fail_and_prune():
    objective = hpo.problems()["mixed"].make_objective("tpe")
    assert objective(optuna.trial.FixedTrial(MIXED_OPTIMUM)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="diverged"):
        objective(optuna.trial.FixedTrial({**MIXED_OPTIMUM, "dropout": 0.95}))
    with pytest.raises(optuna.TrialPruned):
        objective(optuna.trial.FixedTrial({**MIXED_OPTIMUM, "x0": -4.0}))


def test_binary_problems_give_cmaes_floats_and_others_choices():
    onemax = hpo.problems()["onemax120"]
    bits = {f"b{i:03d}": i % 2 for i in range(120)}
    assert onemax.make_objective("eggroll")(optuna.trial.FixedTrial(bits)) == 60
    floats = {name: 0.2 + 0.6 * bit for name, bit in bits.items()}
    assert onemax.make_objective("cmaes")(optuna.trial.FixedTrial(floats)) == 60
    sphere = hpo.problems()["int-sphere30"].make_objective("random")
    assert sphere(optuna.trial.FixedTrial({f"k{i:02d}": 7 for i in range(30)})) == 0


def _toy_run(sampler, seed, values, direction="minimize"):
    return {
        "problem": "int-sphere30",
        "sampler": sampler,
        "seed": seed,
        "trials": len(values),
        "states": "".join("F" if v is None else "C" for v in values),
        "values": values,
        "best": hpo.best_so_far(values, direction),
        "seconds": [0.5 * (i + 1) for i in range(len(values))],
        "sampler_ms": [1.0] * len(values),
        "stopped_by_time": False,
        "note": "",
    }


def test_best_so_far_and_best_at_budget():
    values = [None, 5.0, 3.0, None, 4.0, 1.0]
    assert hpo.best_so_far(values, "minimize") == [None, 5.0, 3.0, 3.0, 3.0, 1.0]
    assert hpo.best_so_far(values, "maximize") == [None, 5.0, 5.0, 5.0, 5.0, 5.0]
    assert hpo.best_so_far([float("nan"), 2.0], "minimize") == [None, 2.0]
    run = _toy_run("random", 0, values)
    assert hpo.best_at(run, 1) is None  # only a failed trial so far
    assert hpo.best_at(run, 2) == 5.0
    assert hpo.best_at(run, 5) == 3.0
    assert hpo.best_at(run, 6) == 1.0
    assert hpo.best_at(run, 7) is None  # budget not reached


def test_summary_takes_median_and_range_over_seeds_at_each_budget():
    problem = hpo.Problem("int-sphere30", "minimize", 0.0, (2, 4), "toy", lambda name: print)
    runs = [
        _toy_run("random", 0, [9.0, 8.0, 7.0, 6.0]),
        _toy_run("random", 1, [5.0, None, 4.0, 1.0]),
        _toy_run("random", 2, [3.0, 2.0]),  # stopped before the second budget
        _toy_run("eggroll", 0, [2.0, 1.0, 0.0, 0.0]),
    ]
    table = {problem.name: problem}
    rows = {row["sampler"]: row for row in hpo.summarize(runs, table)}
    assert list(rows) == ["eggroll", "random"]  # the benchmark's sampler order
    at2, at4 = rows["random"]["budgets"]["2"], rows["random"]["budgets"]["4"]
    assert (at2["seeds"], at2["median"], at2["min"], at2["max"]) == (3, 5.0, 2.0, 8.0)
    assert (at4["seeds"], at4["median"], at4["min"], at4["max"]) == (2, 3.5, 1.0, 6.0)
    assert at4["wall_s"] == 2.0
    assert rows["random"]["failed"] == pytest.approx(1 / 10)
    text = hpo.markdown(list(rows.values()), table, hpo.machine())
    assert "| random | 3 | 5 (2-8) | 3.5 (1-6) [2 seeds] |" in text
    assert "* random / eggroll: optimum 0 reached" in text


def test_plan_caps_tpe_and_cmaes_on_maxcut_only():
    table = hpo.problems()
    assert hpo.plan_for(table["int-sphere30"], "tpe") == hpo.Plan(1500)
    tpe = hpo.plan_for(table["maxcut-g1"], "tpe")
    assert (tpe.trials, tpe.seeds) == (hpo.MAXCUT_TPE_TRIALS, hpo.MAXCUT_SEEDS["tpe"])
    cmaes = hpo.plan_for(table["maxcut-g1"], "cmaes")
    assert (cmaes.trials, cmaes.max_seconds) == (5000, hpo.MAXCUT_CMAES_SECONDS)
    quick = hpo.problems(quick=True)["maxcut-g1"]
    assert hpo.plan_for(quick, "tpe", quick=True) == hpo.Plan(30)
