"""Optimizers: each one minimizes toy problems; state round-trips; weight decay and steps."""

from __future__ import annotations

import numpy as np
import pytest

from eggroll_opt import optim

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
