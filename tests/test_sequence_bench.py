"""The sequence-model scale benchmark: quick mode, the model it measures, its memory model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import eggroll_opt as eo
from benchmarks import bench, sequence
from eggroll_opt import nn
from eggroll_opt._backend import get_backend

NUMPY = get_backend("numpy")
TOY = {"vocab": 32, "width": 48, "batch": 2, "length": 4, "chunk": None, "backend": NUMPY}


def test_quick_mode_runs_in_seconds_and_writes_the_table(tmp_path, capsys):
    section = sequence.main(["--quick", "--out", str(tmp_path)])
    assert section["seconds"] < 60
    rows = section["rows"]
    assert [(r["strategy"], r["popsize"], r["chunk"]) for r in rows] == [
        ("Eggroll", 16, None),
        ("OpenES", 16, None),
        ("Eggroll", 64, None),
        ("OpenES", 64, None),
        ("Eggroll", 64, 16),
    ]
    for row in rows:
        assert row["seconds"]["generation"]["median"] > 0
        assert row["peak_bytes"]["generation"] > 0
    for row in rows[:4]:
        assert row["throughput_vs_plain"] > 0
    checks = {check["check"] for check in section["checks"]}
    assert "Eggroll N=64: generation peak memory" in checks
    assert "Eggroll N=64: population forward / plain inference throughput (wall)" in checks
    table = (tmp_path / "sequence.md").read_text()
    assert "| strategy | popsize | forward chunk | generation s |" in table
    assert "| Eggroll | 64 | 16 |" in table and "7,904 float32 parameters" in table
    assert json.loads((tmp_path / "sequence.json").read_text())["params"] == 7904
    assert "language model of 7,904 parameters" in capsys.readouterr().out


def test_the_full_model_has_over_a_million_parameters():
    params = sequence.language_model_params(sequence.FULL["vocab"], sequence.FULL["width"])
    # 256·640 + (1280·640 + 1280) + 2·640 + (256·640 + 256)
    assert sequence.parameter_count(params) == 1_149_696


def test_plain_inference_and_the_population_forward_run_the_same_model():
    workload = sequence.SequenceWorkload(eo.Eggroll, 8, **TOY)
    logits = workload.population_forward()
    assert logits.shape == (8, 2, 4, 32)
    population = workload._population
    assert population is not None
    for index in (0, 5):
        member = sequence.language_model(
            nn.ParamsLayers(population[index].params()), workload.inputs
        )
        np.testing.assert_allclose(logits[index], member, rtol=1e-4, atol=1e-5)
    plain = workload.plain_forward()  # the mean on 8 copies of the batch: 8·2 sequences
    assert plain.shape == (16, 4, 32)
    mean = sequence.language_model(nn.ParamsLayers(workload._held.params), workload.inputs)
    np.testing.assert_allclose(
        plain.reshape(8, 2, 4, 32), np.broadcast_to(mean, (8, 2, 4, 32)), rtol=1e-4, atol=1e-5
    )


def test_a_chunked_forward_gives_the_same_losses_with_a_lower_peak():
    whole = sequence.SequenceWorkload(eo.Eggroll, 64, **TOY)
    chunked = sequence.SequenceWorkload(eo.Eggroll, 64, **{**TOY, "chunk": 16})
    population = whole.strategy.ask()
    np.testing.assert_allclose(chunked.losses(population), whole.losses(population), rtol=1e-5)
    peaks = [sequence.peak_bytes(lambda w=w: w.losses(population), np) for w in (whole, chunked)]
    assert peaks[1] < 0.6 * peaks[0]


def test_predicted_peak_tracks_the_measured_one():
    settings = {"vocab": 64, "width": 64, "batch": 2, "length": 8, "popsizes": [128]}
    section = sequence.section_sequence(
        True, overrides={**settings, "chunked": [(128, 32)]}, progress=None
    )
    for row in section["rows"]:
        ratio = row["peak_bytes"]["generation"] / row["predicted_peak_bytes"]
        assert 0.5 < ratio < 2, (row["strategy"], row["chunk"], ratio)


def test_rows_over_the_memory_cap_are_reported_not_run():
    section = sequence.section_sequence(
        True, memory_cap=0.5 * sequence.MB, overrides={"chunked": []}, progress=None
    )
    openes = [row for row in section["rows"] if row["strategy"] == "OpenES"]
    assert openes and all("needs about" in row["skipped"] for row in openes[1:])
    assert all("seconds" not in row for row in section["rows"] if "skipped" in row)
    assert "not run: needs about" in sequence.markdown_sequence(section)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch": 0}, "`batch` must be a positive int, got 0"),
        ({"length": 2.5}, "`length` must be a positive int, got 2.5"),
        ({"popsizes": []}, "`popsizes` must name at least one popsize"),
        ({"chunked": [(64,)]}, r"`chunked` entries must be \(popsize, chunk\) pairs"),
    ],
)
def test_bad_settings_name_the_argument(overrides, message):
    with pytest.raises(ValueError, match=message):
        sequence.section_sequence(True, overrides=overrides, progress=None)


def test_bench_runs_the_sequence_section(tmp_path):
    assert bench.main(["--quick", "--sections", "sequence", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## Sequence model: a 0.01M-parameter character language model" in report
    assert "sequence" in json.loads((tmp_path / "results.json").read_text())["sections"]
