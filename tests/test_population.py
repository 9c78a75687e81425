"""Populations: members, specs, storage, and the batched linear forward pass."""

from __future__ import annotations

import importlib
import math
import pickle
import tracemalloc
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eggroll_opt as eo
from eggroll_opt import _population
from tests.conftest import host, make_backend


def _strategy(backend, shapes, **kwargs):
    rng = np.random.default_rng(0)
    params = {
        name: rng.standard_normal(shape).astype(kwargs.pop(f"{name}_dtype", np.float32))
        for name, shape in shapes.items()
    }
    settings_ = dict(popsize=6, sigma=0.1, learning_rate=0.1, seed=3, backend=backend)
    settings_.update(kwargs)
    return eo.Eggroll(params, **settings_)


def test_population_is_a_sequence_of_members(backend):
    es = _strategy(backend, {"w": (5, 4), "b": (5,)})
    pop = es.ask()
    assert len(pop) == 6 and len(list(pop)) == 6 and pop[-1].index == 5
    assert [m.index for m in pop[1:4]] == [1, 2, 3]
    assert es.ask() is pop  # same generation, same population
    with pytest.raises(IndexError, match="out of range"):
        pop[6]
    with pytest.raises(TypeError, match="population index must be an int"):
        pop["0"]  # type: ignore[call-overload]
    assert "generation=0" in repr(pop[0])


def test_member_params_follow_the_definition(backend):
    es = _strategy(backend, {"w": (5, 4), "conv": (3, 2, 2, 2), "b": (5,)}, rank=2)
    pop = es.ask()
    base = host(es.params)
    left, right = (host(x) for x in pop.factors("w"))
    eps = host(pop.factors("b"))
    for i in range(len(pop)):
        k, s = i // 2, (1 if i % 2 == 0 else -1)
        member = host(pop[i].params())
        expected_w = base["w"] + s * 0.1 / math.sqrt(2) * left[k] @ right[k].T
        np.testing.assert_allclose(member["w"], expected_w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(member["b"], base["b"] + s * 0.1 * eps[k], rtol=1e-6)
        assert member["conv"].shape == (3, 2, 2, 2)
    lc, rc = pop.factors("conv")
    assert lc.shape == (3, 3, 2) and rc.shape == (3, 8, 2)  # (K, m, r), (K, n, r)


def test_mirrored_pairs_are_antithetic(backend):
    es = _strategy(backend, {"w": (4, 3)})
    pop = es.ask()
    base = host(es.params)["w"]
    plus, minus = host(pop[2].params())["w"], host(pop[3].params())["w"]
    np.testing.assert_allclose(plus - base, -(minus - base), rtol=1e-5, atol=1e-7)


def test_ask_allocates_only_factors():
    es = eo.Eggroll(
        {"w": np.zeros((4096, 4096), np.float32)},
        popsize=1024,
        sigma=0.1,
        learning_rate=0.1,
        rank=1,
        seed=0,
        backend="numpy",
    )
    tracemalloc.start()
    try:
        pop = es.ask()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    left, right = pop.factors("w")
    stored = left.nbytes + right.nbytes
    assert stored == 512 * (4096 + 4096) * 4  # K·r·(m+n) float32 numbers, K = 512 draws
    # The factors plus the generator's temporaries, bounded by its chunk (2**20 normals).
    assert peak < stored + 16 * 2**20
    assert peak < 1024 * 4096 * 4096 * 4 // 1000  # O(N·m·n) would be 1000x more


def test_spec_rebuilds_the_member_alone_and_pickles(backend):
    es = _strategy(backend, {"w": (6, 5), "b": (6,), "s": ()}, rank=2, noise_kinds={"s": "frozen"})
    for _ in range(2):
        es.ask()
        es.tell(np.arange(6.0))
    pop = es.ask()
    spec = pickle.loads(pickle.dumps(pop[5].spec))
    assert (spec.generation, spec.index, spec.noise_index, spec.sign) == (2, 5, 2, -1.0)
    rebuilt = host(spec.params(host(es.params)))
    direct = host(pop[5].params())
    for name in direct:
        np.testing.assert_allclose(rebuilt[name], direct[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="`base` lacks the leaves"):
        spec.params({"w": np.zeros((6, 5))})


@pytest.mark.parametrize("mirrored", [True, False])
def test_stacked_matches_member_params(backend, mirrored):
    es = _strategy(
        backend,
        {"w": (3, 2, 2), "b": (3,), "f": (2,)},
        noise_kinds={"f": "frozen"},
        mirrored=mirrored,
    )
    pop = es.ask()
    for name in ("w", "b", "f"):
        stacked = host(pop.stacked(name))
        for i in range(len(pop)):
            np.testing.assert_allclose(
                stacked[i], host(pop[i].params()[name]), rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("kind", ["lowrank", "full", "frozen"])
@pytest.mark.parametrize("per_member", [False, True])
def test_matmul_is_linear_on_columns(backend, kind, per_member):
    es = _strategy(backend, {"w": (5, 4, 3), "b": (5,)}, rank=2, noise_kinds={"w": kind})
    pop = es.ask()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((len(pop), 7, 12) if per_member else (7, 12)).astype(np.float32)
    rows = host(pop.linear("w", x))
    columns = host(pop.matmul("w", np.ascontiguousarray(np.swapaxes(x, -1, -2))))
    assert columns.shape == (len(pop), 5, 7)
    np.testing.assert_allclose(columns, np.swapaxes(rows, -1, -2), rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    columns=st.integers(1, 9),
    batch=st.integers(1, 4),
    half_popsize=st.integers(1, 4),
    rank=st.integers(1, 3),
    kind=st.sampled_from(["lowrank", "full", "frozen"]),
    mirrored=st.booleans(),
    per_member=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    backend_name=st.sampled_from(["numpy", "numpy-arrays"]),
    materialise=st.sampled_from([None, True, False]),
)
def test_linear_and_matmul_equal_materialised_members(
    rows,
    columns,
    batch,
    half_popsize,
    rank,
    kind,
    mirrored,
    per_member,
    dtype,
    backend_name,
    materialise,
):
    """Both ways to a per-member input (each member's own matrix, or the mean's product plus
    the low-rank corrections; None: the size rule picks) equal the materialised members."""
    rank = min(rank, rows, columns)
    popsize = 2 * half_popsize
    es = eo.Eggroll(
        {
            "w": np.random.default_rng(1).standard_normal((rows, columns)).astype(dtype),
            "other": np.ones(2, dtype),
        },
        popsize=popsize,
        sigma=0.3,
        learning_rate=0.1,
        rank=rank,
        mirrored=mirrored,
        seed=rows,
        noise_kinds={"w": kind},
        backend=make_backend(backend_name),
    )
    pop = es.ask()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((popsize, batch, columns) if per_member else (batch, columns))
    x = x.astype(dtype)
    rule = _population.use_member_matrices
    forced = rule if materialise is None else lambda shape, length: materialise
    with mock.patch.object(_population, "use_member_matrices", forced):
        out = host(pop.linear("w", x))
        columns_out = host(pop.matmul("w", np.ascontiguousarray(np.swapaxes(x, -1, -2))))
        # The same rows, stored column by column (a flattened convolution's output).
        by_columns = np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
        out_by_columns = host(pop.linear("w", by_columns))
    assert out.shape == (popsize, batch, rows) and out.dtype == dtype
    tolerance = 1e-4 if dtype == np.float32 else 1e-10
    np.testing.assert_allclose(out_by_columns, out, rtol=tolerance, atol=tolerance)
    assert columns_out.shape == (popsize, rows, batch) and columns_out.dtype == dtype
    for i in range(popsize):
        w = host(pop[i].params()["w"])
        expected = (x[i] if per_member else x) @ w.T
        np.testing.assert_allclose(out[i], expected, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(columns_out[i], expected.T, rtol=tolerance, atol=tolerance)


def test_linear_rejects_bad_shapes():
    es = eo.Eggroll(
        {"w": np.zeros((3, 4)), "b": np.zeros(3)},
        popsize=4,
        sigma=0.1,
        learning_rate=0.1,
        seed=0,
        backend="numpy",
    )
    pop = es.ask()
    with pytest.raises(ValueError, match=r"`x` must have shape \(batch, 4\)"):
        pop.linear("w", np.zeros((2, 3)))
    with pytest.raises(ValueError, match="is not a matrix leaf"):
        pop.linear("b", np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"`x` must have shape \(4, L\) or \(4, 4, L\)"):
        pop.matmul("w", np.zeros((3, 2)))
    with pytest.raises(ValueError, match="is not a matrix leaf"):
        pop.matmul("b", np.zeros((3, 2)))
    for scalar in (np.float32(1), np.zeros(4)):
        with pytest.raises(ValueError, match=r"`x` must have shape"):
            pop.linear("w", scalar)
        with pytest.raises(ValueError, match=r"`x` must have shape"):
            pop.matmul("w", scalar)


@pytest.mark.parametrize("kind", ["lowrank", "full"])
def test_integer_inputs_keep_the_noise(kind):
    """Integer inputs (raw pixels) are promoted with the leaf, never the noise to integers."""
    es = eo.Eggroll(
        {"w": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)},
        popsize=4,
        sigma=0.3,
        learning_rate=0.1,
        seed=0,
        noise_kinds={"w": kind},
        backend="numpy",
    )
    pop = es.ask()
    pixels = np.random.default_rng(1).integers(0, 255, (2, 4)).astype(np.uint8)
    as_float = pixels.astype(np.float32)
    np.testing.assert_allclose(pop.linear("w", pixels), pop.linear("w", as_float), rtol=1e-6)
    np.testing.assert_allclose(pop.matmul("w", pixels.T), pop.matmul("w", as_float.T), rtol=1e-6)
    assert np.abs(pop.linear("w", pixels)[0] - pop.linear("w", pixels)[1]).max() > 1
    with pytest.raises(KeyError, match="no leaf 'nope'"):
        pop.linear("nope", np.zeros((2, 4)))


def test_split_parts_match_the_whole_population(backend):
    es = _strategy(backend, {"w": (5, 4), "b": (5,)}, popsize=10)
    pop = es.ask()
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    whole = host(pop.linear("w", x))
    parts = pop.split(4)
    assert [(p.first, len(p)) for p in parts] == [(0, 4), (4, 4), (8, 2)]
    joined = np.concatenate([host(p.linear("w", x)) for p in parts])
    np.testing.assert_allclose(joined, whole, rtol=1e-6)
    assert parts[1][1].spec.index == 5 and parts[1][1].spec.sign == -1.0
    np.testing.assert_allclose(host(parts[2][1].params()["b"]), host(pop[9].params()["b"]))
    with pytest.raises(ValueError, match="`size` must be even"):
        pop.split(3)
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        pop.split(0)


# Launches of a repeated call on the strict stand-in, as measured (rank 1, one shared input);
# the first call of a population also makes its signs on the device (at most 3 more).
LAUNCHES = {
    ("lowrank", "linear"): 5,
    ("lowrank", "matmul"): 5,
    ("lowrank", "stacked"): 4,
    ("full", "linear"): 4,
    ("full", "matmul"): 4,
    ("full", "stacked"): 2,
}


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["lowrank", "full"])
@pytest.mark.parametrize("mirrored", [True, False])
def test_forward_passes_copy_nothing_to_the_device(kind, mirrored):
    """Signs are made on the device once per population: no host copy in any call."""
    make_backend("cupy")  # skips without CuPy
    cupy = importlib.import_module("cupy")
    audit = getattr(cupy, "_audit", None)
    if audit is None:
        pytest.skip("counts need the strict CuPy stand-in")
    es = eo.Eggroll(
        {"w": np.zeros((32, 16), np.float32)},
        popsize=8,
        rank=1,
        mirrored=mirrored,
        noise_kinds={"w": kind},
        seed=0,
        backend="cupy",
    )
    pop = es.ask()
    rows = cupy.ones((4, 16), dtype=cupy.float32)
    columns = cupy.ones((16, 4), dtype=cupy.float32)
    calls = {
        "linear": lambda: pop.linear("w", rows),
        "matmul": lambda: pop.matmul("w", columns),
        "stacked": lambda: pop.stacked("w"),
    }
    for name, call in calls.items():
        for attempt in ("first", "again"):
            audit.reset()
            call()
            counts = audit.snapshot()
            assert counts["host_to_device"] == 0 and counts["syncs"] == 0, (name, counts)
            extra = 3 if attempt == "first" else 0
            assert counts["launches"] <= LAUNCHES[kind, name] + extra, (name, attempt, counts)
        made = {name for kind_, name in audit.calls if kind_ == "launches"}
        assert not {"full", "setitem"} & made  # the signs are kept, not made again
