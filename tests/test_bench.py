"""The benchmark program's sections run at toy sizes and report consistent rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench
from eggroll_opt._backend import get_backend

NUMPY = get_backend("numpy")


def test_scale_rows_measure_and_predict_memory():
    rows = bench.section_scale(
        NUMPY, [64], popsize=16, repeats=2, memory_cap=8 * bench.GB, big_popsize=None
    )
    by_name = {row["strategy"]: row for row in rows}
    for row in rows:
        measured = row["generation"]["peak_bytes"]
        assert 0.3 < measured / row["predicted_peak_bytes"] < 3  # the formula tracks reality
        assert row["generation"]["seconds"]["median"] > 0
    assert (
        by_name["OpenES"]["generation"]["peak_bytes"]
        > by_name["Eggroll"]["generation"]["peak_bytes"]
    )


def test_configurations_over_the_cap_are_reported_not_run():
    rows = bench.section_scale(
        NUMPY, [256], popsize=16, repeats=2, memory_cap=2 * bench.MB, big_popsize=None
    )
    openes = next(row for row in rows if row["strategy"] == "OpenES")
    assert "skipped" in openes and "needs about" in openes["skipped"]
    assert "generation" not in openes


def test_gradient_of_the_matching_task_is_right():
    task = bench.MatchingTask(width=6, samples=5)
    grads = task.gradient(task.student)
    w = task.student["l1"]["w"]
    step = 1e-3
    for index in [(0, 0), (2, 3)]:
        shifted = {
            k: {n: v.astype(np.float64).copy() for n, v in layer.items()}
            for k, layer in task.student.items()
        }
        shifted["l1"]["w"][index] += step
        plus = task.loss(shifted)
        shifted["l1"]["w"][index] -= 2 * step
        minus = task.loss(shifted)
        assert grads["l1"]["w"][index] == pytest.approx(
            (plus - minus) / (2 * step), rel=1e-2, abs=1e-6
        )
    assert w.shape == (6, 6)


def _result(sections: dict) -> dict:
    """A report of ``sections`` as ``bench.main`` assembles it."""
    return {
        "backend": "numpy",
        "mode": "test",
        "command": "test",
        "machine": bench.machine(),
        "total_seconds": 0.0,
        "sections": sections,
    }


def test_convergence_and_forward_sections_and_report(tmp_path):
    result = _result(
        {
            "convergence": bench.section_convergence(NUMPY, width=8, generations=40, popsize=32),
            "forward": bench.section_forward(NUMPY, width=32, popsize=8, batch=4, repeats=2),
            "rank": bench.section_rank(
                NUMPY, width=32, popsize=8, repeats=2, match_width=8, generations=5
            ),
        }
    )
    methods = [row["method"] for row in result["sections"]["convergence"]]
    assert methods == ["Eggroll r=1", "Eggroll r=2", "OpenES", "gradient descent"]
    for row in result["sections"]["convergence"]:
        assert row["final_loss_fraction"] < 1.0  # every method made progress
    text = bench.markdown(result)
    assert "## Convergence" in text and "throughput vs plain" in text and "## Rank" in text
    json.dumps(result, default=float)


def test_command_line_help(capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--help"])
    assert stop.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_core_benchmark_runs_at_toy_size():
    from benchmarks import core

    result = core.run("numpy", size=64, popsize=16, rank=1, repeats=2, big_size=128, big_popsize=32)
    names = [check["check"] for check in result["checks"]]
    assert "OpenES / Eggroll time (adam)" in names
    assert result["rows"]["Eggroll ask+tell (sgd)"]["median"] > 0
    assert "| check |" in core.markdown(result)


def test_blackbox_section_is_part_of_the_report():
    pytest.importorskip("cmaes")
    section = bench.section_blackbox(
        True,
        dims=[10],
        functions=["f1"],
        methods=["eggroll-scales", "sepcma"],
        seeds=[0],
        budget_scale=0.1,
        progress=None,
    )
    text = bench.markdown(_result({"blackbox": section}))
    assert "Black-box benchmark" in text and "eggroll-scales" in text and "sepcma" in text


def test_cnn_profile_times_every_layer_of_both_passes(tmp_path):
    from benchmarks import cnn_profile

    result = cnn_profile.profile(
        popsize=4, batch=8, chunk=2, inference_chunks=[8, 16], generations=2
    )
    generation, inference = result["generation"], result["inference"]
    for step in ("ask", *cnn_profile.LAYERS, "tell"):
        assert generation[step]["wall"] > 0 and generation[step]["cpu"] >= 0
    assert generation["generation"]["wall"] >= generation["conv c2"]["wall"]
    assert set(inference) == {8, 16} and all(
        rows["total"]["wall"] > 0 for rows in inference.values()
    )
    text = cnn_profile.markdown(result)
    assert "| conv c2 |" in text and "Forward / inference throughput" in text
    assert cnn_profile.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "cnn_profile.md").exists() and (tmp_path / "cnn_profile.json").exists()


def test_optimizer_step_benchmark_runs_both_ways(capsys):
    from benchmarks import optimizer_step

    assert optimizer_step.step_seconds("adam", 64, 16, repeats=1) > 0
    assert optimizer_step.main(["--sizes", "6", "--repeats", "1"]) == 0
    text = capsys.readouterr().out
    assert "| adam | 2^6 |" in text and "| sgd | 2^6 |" in text
