"""Optimizers: each one minimizes toy problems; state round-trips; weight decay and steps.

The fused element-wise steps (:mod:`eggroll_opt._fused`) are checked against the reference
transforms on NumPy, and on CuPy (the strict stand-in in CI) for their results and launch counts.
"""

from __future__ import annotations

import copy
import importlib
import itertools
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eggroll_opt as eo
from eggroll_opt import _fused, optim

from .conftest import make_backend

QUADRATIC_TARGET = np.array([1.0, -2.0, 3.0])


def _quadratic(params):
    return {"x": 2 * (params["x"] - QUADRATIC_TARGET)}


def _rosenbrock(params):
    x, y = params["x"]
    return {"x": np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])}


@pytest.mark.parametrize(
    ("transform", "gradient", "start", "solution", "steps"),
    [
        (optim.sgd(0.1), _quadratic, np.zeros(3), QUADRATIC_TARGET, 200),
        (optim.momentum(0.05), _quadratic, np.zeros(3), QUADRATIC_TARGET, 300),
        (optim.momentum(0.05, nesterov=True), _quadratic, np.zeros(3), QUADRATIC_TARGET, 300),
        (optim.adam(0.1), _quadratic, np.zeros(3), QUADRATIC_TARGET, 500),
        (optim.adam(0.01), _rosenbrock, np.array([-1.0, 1.0]), np.ones(2), 8000),
    ],
    ids=["sgd", "momentum", "nesterov", "adam", "adam-rosenbrock"],
)
def test_optimizers_minimize(transform, gradient, start, solution, steps):
    params = {"x": start.copy()}
    state = transform.init(params)
    for _ in range(steps):
        updates, state = transform.update(gradient(params), state, params)
        params = {"x": params["x"] + updates["x"]}
    np.testing.assert_allclose(params["x"], solution, atol=2e-2)


def test_adam_first_step_is_learning_rate_against_the_gradient():
    opt = optim.adam(0.3)
    params = {"w": np.zeros(2)}
    updates, state = opt.update({"w": np.array([5.0, -0.01])}, opt.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.3, 0.3], rtol=1e-5)
    assert state[0]["count"] == 1


def test_weight_decay_is_decoupled_and_scaled_by_learning_rate():
    params = {"w": np.array([2.0])}
    for opt in (optim.sgd(0.1, weight_decay=0.5), optim.adam(0.1, weight_decay=0.5)):
        zero_grad = {"w": np.zeros(1)}
        updates, _ = opt.update(zero_grad, opt.init(params), params)
        np.testing.assert_allclose(updates["w"], [-0.1 * 0.5 * 2.0])


def test_state_flattens_and_rebuilds():
    opt = optim.adam(0.1)
    params = {"a/b": np.ones((2, 2)), "c": np.zeros(3)}
    state = opt.init(params)
    _, state = opt.update({"a/b": np.ones((2, 2)), "c": np.ones(3)}, state, params)
    leaves = dict(optim.flatten_state(state))
    assert "0/mu/a/b" in leaves and leaves["0/count"] == 1
    rebuilt = optim.unflatten_state(opt.init(params), leaves)
    assert rebuilt[0]["count"] == 1 and isinstance(rebuilt[0]["count"], int)
    np.testing.assert_array_equal(rebuilt[0]["nu"]["c"], state[0]["nu"]["c"])


def test_get_optimizer_errors_name_the_argument():
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        optim.get_optimizer("lion", 0.1)
    with pytest.raises(TypeError, match="`optimizer_options`"):
        optim.get_optimizer("sgd", 0.1, options={"b1": 0.9})
    opt = optim.get_optimizer("adam", 0.1, options={"b1": 0.5})
    assert isinstance(opt, optim.GradientTransformation)


# -- fused steps ------------------------------------------------------------------------------
FUSED_RUNS: list[str] = []


def _run_as_written(function):
    """A ``fuse`` for NumPy arrays: the composed step runs as written, and each call is logged."""

    def run(*arguments):
        FUSED_RUNS.append(function.__name__)
        function(*arguments)

    return run


def _build(name, learning_rate, weight_decay, b1, b2, decay):
    builders = {
        "adam": lambda: optim.adam(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay),
        "momentum": lambda: optim.momentum(
            learning_rate, momentum=decay, weight_decay=weight_decay
        ),
        "nesterov": lambda: optim.momentum(
            learning_rate, momentum=decay, nesterov=True, weight_decay=weight_decay
        ),
        "sgd": lambda: optim.sgd(learning_rate, weight_decay=weight_decay),
        "scale_by_adam": lambda: optim.scale_by_adam(b1, b2, eps=1e-6),
        "trace": lambda: optim.trace(decay),
        # An element-wise run broken by a transform of another kind (as in examples/mnist.py).
        "adam+custom": lambda: optim.chain(
            optim.scale_by_adam(b1, b2),
            optim.GradientTransformation(lambda p: {}, lambda g, s, p: ({**g}, s)),
            optim.add_decayed_weights(weight_decay),
            optim.scale(-learning_rate),
        ),
    }
    return builders[name]()


def _tree_arrays(tree):
    return {path: np.asarray(leaf) for path, leaf in optim.flatten_state(tree)}


# Optimizer settings and random trees that the fused paths are checked on.
_STEP_CASES = {
    "shapes": st.lists(st.lists(st.integers(0, 5), max_size=3).map(tuple), min_size=1, max_size=3),
    "dtype": st.sampled_from([np.float16, np.float32, np.float64]),
    "learning_rate": st.floats(1e-4, 2.0),
    "weight_decay": st.sampled_from([0.0, 0.01, 0.5]),
    "b1": st.floats(0.0, 0.99),
    "b2": st.floats(0.5, 0.9999),
    "decay": st.floats(0.0, 0.99),
    "steps": st.integers(1, 3),
    "seed": st.integers(0, 2**16),
    # Elements per block of the NumPy path: small ones split the leaves at odd places.
    "block": st.sampled_from([1, 3, 16, _fused.BLOCK]),  # (with WHOLE as small: see _check)
}


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(
        ["adam", "momentum", "nesterov", "sgd", "scale_by_adam", "trace", "adam+custom"]
    ),
    **_STEP_CASES,
)
def test_fused_steps_equal_the_reference(
    name, shapes, dtype, learning_rate, weight_decay, b1, b2, decay, steps, seed, block
):
    """The fused path, run on NumPy arrays, gives the reference's updates and state bit for bit
    (the reference running block by block, as on NumPy)."""
    with mock.patch.object(_fused, "BLOCK", block), mock.patch.object(_fused, "WHOLE", block):
        _check_fused_steps(
            name, shapes, dtype, learning_rate, weight_decay, b1, b2, decay, steps, seed
        )


def _check_fused_steps(
    name, shapes, dtype, learning_rate, weight_decay, b1, b2, decay, steps, seed
):
    rng = np.random.default_rng(seed)
    params = {
        f"leaf{i}": np.asarray(rng.standard_normal(shape), dtype) for i, shape in enumerate(shapes)
    }
    transform = _build(name, learning_rate, weight_decay, b1, b2, decay)
    reference_state = transform.init(params)
    fused_state = copy.deepcopy(reference_state)
    FUSED_RUNS.clear()
    for _ in range(steps):
        grads = {k: np.asarray(3 * rng.standard_normal(p.shape), dtype) for k, p in params.items()}
        fused_grads = copy.deepcopy(grads)
        # float16 moments may underflow to 0 (a division by zero): both paths must agree there too.
        with np.errstate(all="ignore"):
            expected, reference_state = transform.update(grads, reference_state, params)
            with mock.patch.object(_fused, "fuser", lambda arrays: _run_as_written):
                updates, fused_state = transform.update(fused_grads, fused_state, params)
        for key in params:
            assert updates[key].dtype == dtype
            np.testing.assert_array_equal(updates[key], expected[key])
        reference_leaves, fused_leaves = _tree_arrays(reference_state), _tree_arrays(fused_state)
        assert fused_leaves.keys() == reference_leaves.keys()
        for key, value in reference_leaves.items():
            np.testing.assert_array_equal(fused_leaves[key], value)
    kernels_per_update = 2 if name == "adam+custom" else 1
    assert len(FUSED_RUNS) == steps * len(params) * kernels_per_update


def _build_for_apply(name, learning_rate, weight_decay, b1, b2, decay):
    """The transforms of :func:`_build`, and chains whose last transform is not element-wise."""
    if name == "nested":  # the last transform is a chain that offers `apply`
        return optim.chain(
            optim.scale_by_adam(b1, b2), optim.chain(optim.trace(decay), optim.scale(0.5))
        )
    if name == "custom-last":  # the last transform offers no `apply`: neither does the chain
        return optim.chain(
            optim.scale_by_adam(b1, b2),
            optim.GradientTransformation(lambda p: {}, lambda g, s, p: ({**g}, s)),
        )
    return _build(name, learning_rate, weight_decay, b1, b2, decay)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(
        ["adam", "momentum", "nesterov", "sgd", "scale_by_adam", "trace", "adam+custom", "nested"]
    ),
    **_STEP_CASES,
)
def test_apply_equals_update_then_the_sum(
    name, shapes, dtype, learning_rate, weight_decay, b1, b2, decay, steps, seed, block
):
    """``apply`` (NumPy, and the fused path run on NumPy) gives ``params + update`` bit for bit."""
    with mock.patch.object(_fused, "BLOCK", block), mock.patch.object(_fused, "WHOLE", block):
        _check_apply(name, shapes, dtype, learning_rate, weight_decay, b1, b2, decay, steps, seed)


def _check_apply(name, shapes, dtype, learning_rate, weight_decay, b1, b2, decay, steps, seed):
    rng = np.random.default_rng(seed)
    params = {
        f"leaf{i}": np.asarray(rng.standard_normal(shape), dtype) for i, shape in enumerate(shapes)
    }
    transform = _build_for_apply(name, learning_rate, weight_decay, b1, b2, decay)
    assert transform.apply is not None
    reference_state = transform.init(params)
    states = [copy.deepcopy(reference_state), copy.deepcopy(reference_state)]
    FUSED_RUNS.clear()
    for _ in range(steps):
        grads = {k: np.asarray(3 * rng.standard_normal(p.shape), dtype) for k, p in params.items()}
        kept = copy.deepcopy(params)
        with np.errstate(all="ignore"):
            updates, reference_state = transform.update(
                copy.deepcopy(grads), reference_state, params
            )
            expected = {k: np.asarray(params[k] + updates[k], dtype=dtype) for k in params}
            results = []
            for index, fused in enumerate((False, True)):
                out = {k: np.full_like(p, np.nan) for k, p in params.items()}
                fuser = (lambda arrays: _run_as_written) if fused else _fused.fuser
                with mock.patch.object(_fused, "fuser", fuser):
                    new, states[index] = transform.apply(
                        copy.deepcopy(grads), states[index], params, out
                    )
                assert new is out
                results.append(new)
        for new in results:
            for key in params:
                assert new[key].dtype == dtype
                np.testing.assert_array_equal(new[key], expected[key])
                np.testing.assert_array_equal(params[key], kept[key])  # never modified
        reference_leaves = _tree_arrays(reference_state)
        for state in states:
            leaves = _tree_arrays(state)
            assert leaves.keys() == reference_leaves.keys()
            for key, value in reference_leaves.items():
                np.testing.assert_array_equal(leaves[key], value)
        params = expected
    kernels_per_apply = {"adam+custom": 2, "nested": 2}.get(name, 1)
    assert len(FUSED_RUNS) == steps * len(params) * kernels_per_apply


def test_apply_is_offered_where_the_sum_can_join_the_last_step():
    def custom():
        return optim.GradientTransformation(lambda p: {}, lambda g, s, p: (g, s))

    assert optim.adam(0.1).apply is not None and optim.scale(2.0).apply is not None
    assert optim.chain(custom(), optim.scale(2.0)).apply is not None
    assert optim.chain(optim.scale(2.0), custom()).apply is None
    assert optim.chain().apply is None and custom().apply is None


def test_numpy_runs_the_reference_steps_block_by_block():
    assert _fused.fuser([np.zeros(3)]) is _fused.blocked and _fused.fuser([]) is _fused.blocked
    assert _fused.compose((_fused.adam, _fused.scale)).__name__ == "eggroll_adam_scale"
    seen = []

    def step(g, velocity, factor):
        seen.append(g.size)
        velocity += g
        g *= factor

    g, velocity = np.arange(10.0), np.ones(10)
    with mock.patch.object(_fused, "BLOCK", 4), mock.patch.object(_fused, "WHOLE", 4):
        _fused.blocked(step)(g, velocity, 2.0)
        assert seen == [4, 4, 2]
        np.testing.assert_array_equal(g, 2 * np.arange(10.0))
        np.testing.assert_array_equal(velocity, 1 + np.arange(10.0))
        seen.clear()
        strided = np.ones(20)[::2]  # not contiguous: stepped whole, still in place
        _fused.blocked(step)(g, strided, 1.0)
        assert seen == [10]
        np.testing.assert_array_equal(strided, 1 + 2 * np.arange(10.0))
    seen.clear()
    with mock.patch.object(_fused, "BLOCK", 4), mock.patch.object(_fused, "WHOLE", 16):
        _fused.blocked(step)(g, velocity, 1.0)  # up to WHOLE elements: one call
        assert seen == [10]


@pytest.fixture
def cupy():
    make_backend("cupy")  # skips without CuPy
    return importlib.import_module("cupy")


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("name", "kernels_per_leaf"),
    [("adam", 1), ("momentum", 1), ("nesterov", 1), ("sgd", 1), ("adam+custom", 2)],
)
@pytest.mark.parametrize("method", ["update", "apply"])
def test_a_cupy_step_is_one_fused_kernel_per_leaf(cupy, name, kernels_per_leaf, method):
    """``update``, and ``apply`` with the sum into the new parameters: one launch per leaf."""
    rng = np.random.default_rng(0)
    host_params = {"w": rng.standard_normal((6, 5)), "b": rng.standard_normal(5)}
    transform = _build(name, 0.1, 0.01, 0.9, 0.999, 0.9)
    host_state = transform.init(host_params)
    params = {k: cupy.array(v, copy=True) for k, v in host_params.items()}
    state = transform.init(params)
    audit = getattr(cupy, "_audit", None)
    for _ in range(3):
        host_grads = {k: rng.standard_normal(v.shape) for k, v in host_params.items()}
        grads = {k: cupy.array(v, copy=True) for k, v in host_grads.items()}  # both in place
        expected, host_state = transform.update(host_grads, host_state, host_params)
        if method == "apply":
            expected = {k: host_params[k] + expected[k] for k in host_params}
            out = {k: cupy.empty_like(v) for k, v in params.items()}
        if audit is not None:
            audit.reset()
        if method == "apply":
            result, state = transform.apply(grads, state, params, out)
            assert result is out
        else:
            result, state = transform.update(grads, state, params)
        if audit is not None:  # the stand-in counts: one launch per leaf, nothing copied
            assert audit.snapshot() == {
                "launches": kernels_per_leaf * len(params),
                "syncs": 0,
                "host_to_device": 0,
            }
        for key in params:
            np.testing.assert_allclose(eo.to_numpy(result[key]), expected[key], rtol=1e-12)
    for key, value in _tree_arrays(host_state).items():
        fused = dict(optim.flatten_state(state))[key]
        fused = fused if isinstance(fused, int) else eo.to_numpy(fused)
        np.testing.assert_allclose(fused, value, rtol=1e-12)


@pytest.mark.gpu
def test_adam_in_a_tell_is_one_kernel_per_leaf(cupy):
    """The optimizer's share of a tell on a 10-leaf MLP: one fused launch per leaf."""
    audit = getattr(cupy, "_audit", None)
    if audit is None:
        pytest.skip("launch counts need the strict CuPy stand-in")
    sizes = [64, 256, 256, 256, 256, 10]
    params = {
        f"l{i}": {"w": np.zeros((m, n), np.float32), "b": np.zeros(m, np.float32)}
        for i, (n, m) in enumerate(itertools.pairwise(sizes))
    }
    es = eo.Eggroll(params, popsize=256, learning_rate=0.01, seed=0, backend="cupy")
    for generation in range(2):
        es.ask()
        audit.reset()
        es.tell(np.arange(256.0) * (-1) ** generation)
    calls = {name: count for (kind, name), count in audit.calls.items() if kind == "launches"}
    # Adam's step and `mean + update` in one kernel per leaf.
    assert calls.get("fuse:eggroll_adam_scale_add_update") == 10
    assert not {"sqrt", "divide", "subtract", "add"} & calls.keys()  # unfused operations
    # The new mean's norms: one per dtype (the gradients' ten, and one for the float32 mean).
    assert calls.get("norm") == 11 and calls.get("empty") == 1
    # Measured: 38 (was 56 with a separate sum and a norm per leaf; 176 unfused); of these,
    # `empty` is an allocation, a launch on the stand-in only.
    assert audit.launches == 38 and audit.syncs == 1


def test_a_chain_is_composed_once_for_every_optimizer_of_its_kind():
    """The composed step is cached on the steps: new optimizers reuse it, on NumPy as on CuPy."""
    params = {"w": np.ones(4)}

    def step_a_new_adam():
        transform = optim.adam(0.1, weight_decay=0.01)
        transform.apply({"w": np.ones(4)}, transform.init(params), params, {"w": np.empty(4)})

    step_a_new_adam()
    made = _fused.kernel.cache_info().currsize
    for _ in range(5):
        step_a_new_adam()
    assert _fused.kernel.cache_info().currsize == made


def test_an_elementwise_transform_has_both_steps_or_neither():
    with pytest.raises(ValueError, match="both `reference` and `step`"):
        optim._Elementwise(reference=_fused.scale)
