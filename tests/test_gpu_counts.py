"""benchmarks.gpu_counts: launches and syncs per ask, tell and forward, on the strict stand-in.

The stand-in is imported as ``cupy`` for this module only (the fixture of
``tests/test_strict_cupy.py``). The CUPTI path needs a GPU; its bookkeeping (:class:`ApiTally`)
is checked here with the call sequences CUPTI reports.
"""

from __future__ import annotations

import sys
import threading
import types

import numpy as np
import pytest

from benchmarks import gpu_counts
from benchmarks.gpu_counts import ApiTally
from eggroll_opt import _noise
from eggroll_opt._backend import Backend

from .test_strict_cupy import cupy  # noqa: F401  (the stand-in as `cupy`, for this module)

DRIVER, RUNTIME = 1, 2


@pytest.fixture(scope="module")
def result(cupy):  # noqa: F811
    return gpu_counts.run(popsize=gpu_counts.POPSIZE, repeats=1)


def _row(result, workload, generator, step):
    (row,) = [
        row
        for row in result["rows"]
        if (row["workload"], row["generator"], row["step"]) == (workload, generator, step)
    ]
    return row


def test_the_stand_in_counts_each_step_of_both_workloads(result):
    assert result["platform"] == "stand-in" and "cupy._audit" in result["source"]
    calibration = _row(result, "calibration", "-", "float((x * 2 + 1).sum())")
    assert (calibration["launches"], calibration["syncs"], calibration["copies"]) == (3, 1, 0)
    for workload in ("1024² leaf", "10-leaf MLP"):
        for generator in ("arrays", "kernel (modelled)"):
            for step in gpu_counts.STEPS:
                row = _row(result, workload, generator, step)
                assert all(isinstance(row[kind], int) for kind in gpu_counts.KINDS), row
    # The array-operation Philox is hundreds of launches per leaf; the kernel one per leaf.
    assert _row(result, "1024² leaf", "arrays", "ask")["launches"] > 300
    assert _row(result, "1024² leaf", "kernel (modelled)", "ask")["launches"] <= 2
    assert _row(result, "10-leaf MLP", "kernel (modelled)", "ask")["launches"] <= 20
    for workload in ("1024² leaf", "10-leaf MLP"):
        assert _row(result, workload, "kernel (modelled)", "ask")["syncs"] == 0
        assert _row(result, workload, "kernel (modelled)", "forward")["syncs"] == 0
        assert _row(result, workload, "kernel (modelled)", "tell (host fitness)")["syncs"] == 1


def test_targets_are_judged_on_the_kernel_rows(result):
    checks = {check["check"]: check for check in result["checks"]}
    assert set(checks) == {
        f"{workload}, {step}: {kind}" for workload, step, kind in gpu_counts.TARGETS
    }
    for name in ("1024² leaf, ask: launches", "10-leaf MLP, ask: launches"):
        assert checks[name]["met"] is True
    text = gpu_counts.markdown(result)
    assert "| 1024² leaf | kernel (modelled) | ask |" in text
    assert "| target (kernel generator) | measured | target | met |" in text


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [8, 1000])
def test_the_modelled_kernel_writes_what_the_numpy_generator_makes(cupy, dtype, size):  # noqa: F811
    numpy_backend, kernel = Backend("numpy", np), Backend("cupy", cupy, generator="kernel")
    key = _noise.leaf_key(5, "w")
    cupy._audit.reset()
    with gpu_counts.modelled_kernel(cupy):
        normals = _noise.normals(kernel, key, 2**64 - 3, 7, 5, size, dtype)
        words = _noise.raw_words(kernel, key, 11, 2**40 - 3, 6)
    normals_kernel = f"RawKernel eggroll_philox_normals_f{np.dtype(dtype).itemsize * 8}"
    assert cupy._audit.calls[("launches", normals_kernel)] == 1
    assert cupy._audit.calls[("launches", "RawKernel eggroll_philox_words")] == 1
    expected = _noise.normals(numpy_backend, key, 2**64 - 3, 7, 5, size, dtype)
    np.testing.assert_array_equal(normals.get(), expected)
    expected_words = _noise.raw_words(numpy_backend, key, 11, 2**40 - 3, 6)
    np.testing.assert_array_equal(words.get(), expected_words)


def test_without_a_counter_every_count_reads_n_a(cupy, monkeypatch):  # noqa: F811
    reason = "n/a: CUPTI could not be used (libcupti.so: not found)"
    monkeypatch.setattr(gpu_counts, "counter_for", lambda module: (None, reason))
    result = gpu_counts.run(popsize=8, repeats=1)
    assert result["source"] == reason
    assert all(row[kind] is None for row in result["rows"] for kind in gpu_counts.KINDS)
    assert result["checks"] and all(check["met"] is None for check in result["checks"])
    assert "| n/a | n/a | n/a |" in gpu_counts.markdown(result)


def test_the_command_line_writes_the_report(cupy, tmp_path, capsys):  # noqa: F811
    assert gpu_counts.main(["--popsize", "8", "--repeats", "1", "--out", str(tmp_path)]) == 0
    assert "| workload | generator | step | launches | syncs | copies |" in capsys.readouterr().out
    assert (tmp_path / "gpu_counts.md").exists() and (tmp_path / "gpu_counts.json").exists()


def test_another_cupy_already_imported_is_refused(monkeypatch):
    real = types.ModuleType("cupy")
    real.__file__ = "/site-packages/cupy/__init__.py"
    monkeypatch.setitem(sys.modules, "cupy", real)
    with pytest.raises(ValueError, match="`cupy` is already imported from '/site-packages"):
        gpu_counts.use_stand_in()


# -- the CUPTI bookkeeping -------------------------------------------------------------------
def _calls(tally: ApiTally, *calls: tuple[int, str]) -> None:
    """Each (domain, name) entered then left, in order."""
    for domain, name in calls:
        tally.record(domain, True, name)
        tally.record(domain, False, name)


def test_a_runtime_call_and_the_driver_calls_it_makes_count_once():
    tally = ApiTally()
    tally.record(RUNTIME, True, "cudaLaunchKernel")
    _calls(tally, (DRIVER, "cuLaunchKernel"), (DRIVER, "cuCtxGetCurrent"))
    tally.record(RUNTIME, False, "cudaLaunchKernel")
    _calls(tally, (DRIVER, "cuLaunchKernel"), (DRIVER, "cuLaunchKernelEx"))
    assert tally.counts == {"launches": 3, "syncs": 0, "copies": 0}
    assert tally.calls == {"cudaLaunchKernel": 1, "cuLaunchKernel": 1, "cuLaunchKernelEx": 1}


def test_api_calls_by_kind():
    tally = ApiTally()
    _calls(
        tally,
        (DRIVER, "cuLaunchHostFunc"),  # a host callback, not a kernel
        (DRIVER, "cuMemsetD32Async"),  # device work: counted as a launch
        (RUNTIME, "cudaMemcpyAsync"),  # a copy that does not block
        (RUNTIME, "cudaMemcpy"),  # a copy that blocks
        (DRIVER, "cuStreamSynchronize"),
        (RUNTIME, "cudaDeviceSynchronize"),
        (DRIVER, "cuModuleLoadData"),
    )
    assert tally.counts == {"launches": 1, "syncs": 3, "copies": 2}
    tally.reset()
    assert tally.counts == {"launches": 0, "syncs": 0, "copies": 0} and not tally.calls


def test_each_thread_has_its_own_runtime_depth():
    tally = ApiTally()
    tally.record(RUNTIME, True, "cudaStreamSynchronize")  # in progress on this thread
    other = threading.Thread(target=_calls, args=(tally, (DRIVER, "cuLaunchKernel")))
    other.start()
    other.join()
    _calls(tally, (DRIVER, "cuLaunchKernel"))  # made by the runtime call: skipped
    tally.record(RUNTIME, False, "cudaStreamSynchronize")
    tally.record(RUNTIME, False, "cudaMemcpy")  # an exit without its entry changes nothing
    _calls(tally, (DRIVER, "cuLaunchKernel"))
    assert tally.counts == {"launches": 2, "syncs": 1, "copies": 0}


def test_a_missing_cupti_is_a_reason_not_an_error(tmp_path):
    missing = str(tmp_path / "libcupti.so")
    counts, reason = gpu_counts.CuptiCounts.subscribe([missing])
    assert counts is None and reason.startswith(f"{missing}: ")
    assert gpu_counts.cupti_candidates()[-1] == "libcupti.so"
