"""Backend choice, host conversion, and NumPy/CuPy agreement (the latter on a GPU only)."""

from __future__ import annotations

import numpy as np
import pytest

import eggroll_opt as eo
from eggroll_opt._backend import Backend, cupy_available, get_backend, is_cupy_array
from tests.conftest import host


def test_auto_picks_numpy_without_a_gpu():
    backend = get_backend("auto")
    assert backend.name == ("cupy" if cupy_available() else "numpy")
    assert get_backend("numpy").xp is np


@pytest.mark.skipif(cupy_available(), reason="a GPU is present")
def test_cupy_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="`backend`='cupy' needs CuPy and an NVIDIA GPU"):
        eo.Eggroll({"w": np.zeros((2, 2))}, popsize=2, sigma=0.1, learning_rate=0.1, backend="cupy")


def test_to_numpy_on_trees_and_arrays():
    tree = {"a": {"b": np.ones(2)}, "c": 3.0}
    out = eo.to_numpy(tree)
    assert isinstance(out["a"]["b"], np.ndarray) and out["c"] == 3.0
    assert not is_cupy_array(np.ones(1))


def test_strategy_arrays_live_on_its_backend(backend):
    es = eo.Eggroll(
        {"w": np.zeros((4, 3), np.float32), "b": [0.0, 1.0]},
        popsize=4,
        sigma=0.1,
        learning_rate=0.1,
        seed=0,
        backend=backend,
    )
    pop = es.ask()
    assert isinstance(es.params["w"], backend.xp.ndarray)
    assert isinstance(pop[0].params()["b"], backend.xp.ndarray)
    fitness = backend.xp.asarray([1.0, 2.0, 3.0, 4.0])  # fitness on the strategy's device
    es.tell(fitness)
    assert es.backend == backend.name


@pytest.mark.gpu
def test_numpy_and_cupy_runs_agree():
    """The same run on both backends: same noise bits, parameters equal to float rounding."""
    if not cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    runs = {}
    for name in ("numpy", "cupy"):
        es = eo.Eggroll(
            {"w": np.zeros((64, 32), np.float32), "b": np.zeros(64, np.float32)},
            popsize=16,
            sigma=0.1,
            learning_rate=0.05,
            seed=0,
            backend=name,
            optimizer="sgd",
        )
        for _ in range(5):
            pop = es.ask()
            es.tell(host(((pop.stacked("w") - 1) ** 2).sum(axis=(1, 2))))
        runs[name] = host(es.params)
    np.testing.assert_allclose(runs["cupy"]["w"], runs["numpy"]["w"], rtol=0, atol=1e-4)


def test_a_backend_built_directly_picks_the_generator_of_its_array_library():
    import types

    assert Backend("numpy", np).generator == "numpy"
    fake_cupy = types.ModuleType("cupy")
    assert Backend("cupy", fake_cupy).generator == "arrays"  # no RawKernel: array operations
    fake_cupy.RawKernel = object  # type: ignore[attr-defined]
    assert Backend("cupy", fake_cupy).generator == "kernel"
    assert Backend("cupy", fake_cupy, generator="arrays").generator == "arrays"
