"""The strict CuPy stand-in (tests/strict_cupy) refuses what CuPy refuses and counts the rest.

These tests import the stand-in as ``cupy`` for this module only (unless the whole run uses
it: ``EGGROLL_STRICT_CUPY=1``), so the other tests still see the machine's own CuPy or none.
"""

from __future__ import annotations

import importlib
import json
import operator
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from eggroll_opt._backend import get_backend, is_cupy_array

from .conftest import STANDIN_PATH, STRICT_CUPY

NAMES = json.loads((Path(STANDIN_PATH) / "cupy_names.json").read_text())
ROOT = Path(__file__).resolve().parent.parent


def _cupy_modules() -> dict[str, ModuleType]:
    return {name: module for name, module in sys.modules.items() if name.split(".")[0] == "cupy"}


@pytest.fixture(scope="module")
def cupy() -> Iterator[Any]:
    """The stand-in as ``cupy``; afterwards ``sys.modules`` and ``sys.path`` as they were."""
    if STRICT_CUPY:
        yield importlib.import_module("cupy")
        return
    saved = _cupy_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, STANDIN_PATH)
    importlib.invalidate_caches()
    try:
        yield importlib.import_module("cupy")
    finally:
        sys.path.remove(STANDIN_PATH)
        for name in _cupy_modules():
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture
def counts(cupy: Any) -> Any:
    """The stand-in's audit, reset."""
    cupy._audit.reset()
    return cupy._audit


def test_the_stand_in_is_what_cupy_imports(cupy):
    assert Path(cupy.__file__).resolve().is_relative_to(Path(STANDIN_PATH))
    assert cupy.__version__ == NAMES["version"]
    assert cupy.cuda.runtime.getDeviceCount() == 1


def test_implicit_conversion_to_numpy_is_refused(cupy):
    device = cupy.arange(3.0)
    refusals = [
        lambda: np.asarray(device),
        lambda: np.array(device, dtype=np.float64),
        lambda: np.array([device[0], device[1]]),  # a list of 0-d device arrays
        lambda: np.testing.assert_allclose(device, np.arange(3.0)),
    ]
    for refusal in refusals:
        with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
            refusal()


@pytest.mark.parametrize(
    "mix",
    [
        lambda cp, d, h: d + h,
        lambda cp, d, h: h + d,
        lambda cp, d, h: d * np.asarray(2.0),  # a 0-d NumPy array is an array, not a scalar
        lambda cp, d, h: d == h,
        lambda cp, d, h: d.__iadd__(h),
        lambda cp, d, h: cp.add(d, h),
        lambda cp, d, h: np.add(d, h),
        lambda cp, d, h: np.add(d, d, out=h),
        lambda cp, d, h: cp.stack([d, h]),
        lambda cp, d, h: np.concatenate([d, h]),
        lambda cp, d, h: cp.where(d > 0, d, h),
        lambda cp, d, h: d.dot(h),
        lambda cp, d, h: cp.linalg.norm(h),
    ],
)
def test_numpy_operands_are_refused(cupy, mix):
    with pytest.raises(TypeError, match=r"Unsupported type <class 'numpy.ndarray'>"):
        mix(cupy, cupy.arange(3.0), np.arange(3.0))


def test_lists_are_not_operands_but_scalars_are(cupy):
    device = cupy.arange(3.0)
    with pytest.raises(TypeError, match="unsupported operand"):
        operator.add(device, [1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match=r"Unsupported type <class 'list'>"):
        cupy.multiply(device, [1.0, 2.0, 3.0])
    result = (device + 1) * np.float32(2) - 0.5
    assert is_cupy_array(result)
    np.testing.assert_array_equal(result.get(), (np.arange(3.0) + 1) * 2 - 0.5)


def test_numpy_functions_run_the_cupy_function_of_the_same_name(cupy):
    device = cupy.asarray([[3.0, -4.0], [0.0, 1.0]])
    for result in (np.sum(device), np.linalg.norm(device), np.isfinite(device)):
        assert is_cupy_array(result)
    assert float(np.linalg.norm(device)) == pytest.approx(np.sqrt(26.0))
    assert np.all(np.isfinite(device)).get()
    with pytest.raises(TypeError, match=r"no implementation found for 'numpy\.nanpercentile'"):
        np.nanpercentile(device, 50)  # NumPy has it, CuPy does not


def test_only_names_that_cupy_has_exist(cupy):
    def public(names: Any) -> set[str]:
        return {name for name in names if not name.startswith("_")}

    assert public(dir(cupy)) <= set(NAMES["namespace"])
    assert public(dir(cupy.linalg)) <= set(NAMES["linalg"])
    assert public(dir(cupy.random)) <= set(NAMES["random"])
    assert public(dir(cupy.ndarray)) <= set(NAMES["ndarray"])
    for missing in ("nanpercentile", "geomspace", "RawKernel", "ElementwiseKernel"):
        assert not hasattr(cupy, missing), missing
    device = cupy.zeros((2, 2))
    for numpy_only in ("resize", "setflags", "getfield", "ctypes", "__array_interface__"):
        assert not hasattr(device, numpy_only), numpy_only
    with pytest.raises(AttributeError):
        device.flags.writeable = False  # CuPy's flags are read-only and have no `writeable`


def test_indexing_gives_device_arrays_that_are_not_indices(cupy):
    device = cupy.arange(6).reshape(2, 3)
    element = device[1, 2]
    assert is_cupy_array(element) and element.shape == ()
    assert [row.shape for row in device] == [(3,), (3,)]
    with pytest.raises(TypeError):
        range(element)  # no __index__
    with pytest.raises(TypeError, match="unhashable"):
        hash(device)
    with pytest.raises(TypeError, match="iteration over a 0-d array"):
        list(element)


def test_results_stay_the_arrays_they_were(cupy):
    device = cupy.ones(3)
    assert cupy.asarray(device) is device
    assert device.astype(device.dtype, copy=False) is device
    same = device
    device += 1
    assert device is same
    out = cupy.empty(3)
    assert cupy.multiply(device, 2, out=out) is out
    np.testing.assert_array_equal(out.get(), [4.0, 4.0, 4.0])


def test_launches_syncs_and_copies_are_counted(cupy, counts):
    device = cupy.asarray(np.arange(6.0))
    assert counts.snapshot() == {"launches": 0, "syncs": 0, "host_to_device": 1}
    view = device.reshape(2, 3).T[0]  # views: no kernel
    assert cupy.asarray(view) is view
    assert counts.launches == 0
    total = (device * 2 + 1).sum()  # multiply, add, sum
    assert counts.snapshot() == {"launches": 3, "syncs": 0, "host_to_device": 1}
    float(total), total.item(), device.get(), device.tolist(), bool(total > 0), repr(total)
    assert counts.syncs == 6 and counts.launches == 4  # `total > 0` is one more kernel
    device[0] = 5.0
    device[1:3] = np.ones(2)  # host data: one more copy
    assert counts.snapshot() == {"launches": 6, "syncs": 6, "host_to_device": 2}
    cupy.nonzero(device > 1)  # the result's size is only known on the host
    assert counts.syncs == 7
    assert counts.calls[("syncs", "item")] == 1 and counts.calls[("launches", "setitem")] == 2


def test_a_fused_function_is_one_launch(cupy, counts):
    @cupy.fuse()
    def scaled_sum(x, y):
        return cupy.sum(x * y + 1)

    device = cupy.arange(4.0)
    assert float(scaled_sum(device, device)) == 18.0
    assert counts.launches == 2  # arange, then the fused function
    counts.reset()
    cupy.cuda.Device().synchronize()
    assert counts.snapshot() == {"launches": 0, "syncs": 1, "host_to_device": 0}


def test_pickling_goes_through_the_host(cupy, counts):
    device = cupy.arange(3.0)
    copy = pickle.loads(pickle.dumps(device))
    assert is_cupy_array(copy) and copy is not device
    np.testing.assert_array_equal(copy.get(), [0.0, 1.0, 2.0])
    assert counts.calls[("syncs", "pickle")] == 1
    assert counts.calls[("host_to_device", "unpickle")] == 1


def test_the_library_picks_it_and_generates_noise_with_array_operations(cupy):
    backend = get_backend("auto")
    assert backend.name == "cupy" and backend.xp is cupy
    assert backend.generator == "arrays"  # no RawKernel, so no compiled kernel
    assert cupy.get_array_module(cupy.zeros(1)) is cupy and cupy.get_array_module(1.0) is np


@pytest.mark.skipif(STRICT_CUPY, reason="the run already uses the stand-in")
def test_the_environment_variable_turns_it_on_here_and_in_child_processes():
    script = (
        "import os, subprocess, sys\n"
        "import tests.conftest\n"
        "from eggroll_opt._backend import get_backend\n"
        "child = 'import cupy; print(cupy.__file__)'\n"
        "print(get_backend('auto').name)\n"
        "print(subprocess.run([sys.executable, '-c', child], capture_output=True,\n"
        "                     text=True, check=True).stdout.strip())\n"
    )
    env = {"EGGROLL_STRICT_CUPY": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**_environment(), **env},
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    name, child_cupy = completed.stdout.split()
    assert name == "cupy"
    assert Path(child_cupy).resolve().is_relative_to(Path(STANDIN_PATH))


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "EGGROLL_STRICT_CUPY"}


def test_host_data_given_to_asarray_is_copied_not_shared(cupy):
    host = np.zeros(3)
    device = cupy.asarray(host)
    host[:] = 7  # the device copy must not see this
    assert float(device.sum()) == 0.0
