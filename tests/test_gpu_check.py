"""benchmarks/gpu_check.sh: its dry run on the strict stand-in, and its guards.

The check proper needs a GPU; ``--dry-run`` runs the same code on the stand-in at tiny sizes,
so a broken section shows up here before it costs a GPU run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent
HEADER = "| section | case | measured | beside | ratio | note |"


def test_the_dry_run_prints_one_table_and_writes_the_json(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "EGGROLL_STRICT_CUPY"}
    completed = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**env, "OUT": str(tmp_path)},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert out.count(HEADER) == 1 and "Dry run on the strict CuPy stand-in" in out
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert {row["section"] for row in rows} == {"noise", "strategy", "forward", "counts", "tests"}
    assert not [row for row in rows if row["measured"] == "error"]
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1  # the header, then every row
    by_case = {row["case"]: row for row in rows}
    assert by_case["arrays: Philox words, 3 counters x 64 blocks"]["measured"] == "bits equal"
    assert by_case["kernel generator"]["measured"] == "skipped"  # the stand-in has no RawKernel
    assert "GEMM" in by_case["Eggroll 32² popsize 32"]["beside"]
    assert "of plain throughput" in by_case["MLP 4x16² popsize 8 batch 2, shared input"]["ratio"]
    assert by_case["calibration, -, float((x * 2 + 1).sum())"]["measured"] == (
        "launches 3 · syncs 1 · copies 0"
    )
    assert (tmp_path / "gpu_check.md").read_text().count(HEADER) == 1


def _check(budget: float) -> gpu_check.Check:
    return gpu_check.Check(
        xp=np, sizes=gpu_check.DRY, out=None, deadline=time.perf_counter() + budget
    )


def test_a_failing_row_becomes_an_error_row_and_the_rest_go_on():
    check = _check(60)

    def broken() -> None:
        raise MemoryError("out of memory allocating 68719476736 bytes")

    check.guarded("strategy", "OpenES 1024² popsize 32768", broken)
    check.guarded("strategy", "next", lambda: check.add("strategy", "next", "1 ms"))
    first, second = check.rows
    assert first["measured"] == "error" and "MemoryError: out of memory" in first["note"]
    assert second == {"section": "strategy", "case": "next", "measured": "1 ms"}


def test_rows_past_the_budget_are_skipped_and_repeats_fit_the_share():
    check = _check(10)
    assert check.repeats(seconds=4.0, rows_left=1) == 2
    assert check.repeats(seconds=100.0, rows_left=1) == 1  # at least one
    assert check.repeats(seconds=1e-6, rows_left=1) == gpu_check.DRY.max_repeats
    spent = _check(-1)
    spent.guarded("forward", "MLP", lambda: spent.add("forward", "MLP", "measured"))
    (row,) = spent.rows
    assert (row["measured"], row["note"]) == ("skipped", "the time budget is spent")
