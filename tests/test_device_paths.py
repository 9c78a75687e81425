"""The CuPy path without implicit host conversions (run on CuPy, or on the strict stand-in).

These are the ``gpu``-marked checks that a host-only run skips; CI runs them with
``EGGROLL_STRICT_CUPY=1`` (see ``docs/gpu.md``), where the stand-in refuses every implicit
conversion real CuPy refuses and counts device-to-host syncs.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import eggroll_opt as eo
from eggroll_opt import nn

from .conftest import make_backend

pytestmark = pytest.mark.gpu


@pytest.fixture
def cupy():
    make_backend("cupy")  # skips without CuPy
    return importlib.import_module("cupy")


def _syncs(cupy) -> int | None:
    audit = getattr(cupy, "_audit", None)
    return None if audit is None else audit.syncs


def _strategy(**options) -> eo.Eggroll:
    params = {"w": np.zeros((6, 5), np.float32), "b": np.zeros(5, np.float32)}
    return eo.Eggroll(params, popsize=8, sigma=0.1, learning_rate=0.01, seed=0, **options)


def test_tell_takes_a_list_of_device_scalars(cupy):
    # What `xp.sum(...)` per member returns on a GPU: the README's own loop.
    es, twin = _strategy(backend="cupy"), _strategy(backend="cupy")
    fitness = [cupy.sum(member.params()["w"] ** 2) + i for i, member in enumerate(es.ask())]
    fitness[3] = float("nan")
    stats = es.tell(fitness)
    twin.ask()
    host = [float(v) for v in fitness]
    assert twin.tell(host).best_index == stats.best_index
    np.testing.assert_array_equal(eo.to_numpy(es.params["w"]), eo.to_numpy(twin.params["w"]))


def test_per_member_device_fitness_comes_back_in_one_transfer(cupy):
    es = _strategy(backend="cupy")
    pop = es.ask()
    before = _syncs(cupy)
    evaluation = eo.evaluate(pop, lambda params: cupy.sum(params["w"] ** 2), None)
    if before is not None:
        assert _syncs(cupy) - before == 1
    expected = [float(cupy.sum(member.params()["w"] ** 2)) for member in pop]
    np.testing.assert_allclose(evaluation.fitness, expected, rtol=1e-6)
    vectorised = eo.evaluate(
        pop, lambda p: [cupy.sum(m.params()["w"] ** 2) for m in p], None, vectorized=True
    )
    np.testing.assert_allclose(vectorised.fitness, expected, rtol=1e-6)


def test_tell_reads_back_once(cupy):
    es = _strategy(backend="cupy")
    es.ask()
    es.tell(np.arange(8.0))
    es.ask()
    before = _syncs(cupy)
    es.tell(np.arange(8.0)[::-1])
    if before is not None:
        assert _syncs(cupy) - before == 1


def test_tell_launches_one_fused_step_per_leaf_and_one_mean_norm_per_dtype(cupy):
    audit = getattr(cupy, "_audit", None)
    if audit is None:
        pytest.skip("launch counts need the strict CuPy stand-in")
    es = _strategy(backend="cupy")
    es.ask()
    es.tell(np.arange(8.0))
    es.ask()
    audit.reset()
    es.tell(np.arange(8.0)[::-1])
    calls = {name: count for (kind, name), count in audit.calls.items() if kind == "launches"}
    assert calls == {
        "multiply": 1,  # the low-rank leaf's weights times its left factors
        "matmul": 1,  # its gradient
        "tensordot": 1,  # the full leaf's gradient
        "norm": 3,  # each gradient's, and one for the float32 mean
        "empty": 1,  # the new mean's buffer (an allocation, no kernel, on CuPy)
        "fuse:eggroll_adam_scale_add_update": 2,  # Adam and `mean + update`, per leaf
        "stack": 1,  # the norms, for the one read-back
    }  # was 12: a separate `add` per leaf and a mean norm per leaf
    assert audit.syncs == 1


def test_params_layers_move_a_host_input_to_the_device(cupy):
    es = eo.Eggroll(
        {"c": {"w": np.zeros((4, 1, 3, 3), np.float32)}, "out": {"w": np.zeros((3, 144))}},
        popsize=8,
        seed=0,
        backend="cupy",
    )
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    layers = nn.ParamsLayers(es.params)
    out = layers.dense("out", layers.flatten(nn.relu(layers.conv2d("c", x, padding=1))))
    assert isinstance(out, cupy.ndarray) and out.shape == (2, 3)


def test_an_overflowing_tell_on_the_device_changes_nothing(cupy):
    es = _strategy(backend="cupy", fitness_shaping="raw")
    es.ask()
    es.tell(np.arange(8.0))
    es.ask()
    before = {k: eo.to_numpy(v) for k, v in es.params.items()}
    with pytest.raises(eo.NonFiniteStepError):
        es.tell([1e25, 0, 1, 2, 3, 4, 5, 6])
    for key, value in es.params.items():
        np.testing.assert_array_equal(eo.to_numpy(value), before[key])
