"""Step-size adaptation: the statistics' fast paths, scaled members, the rules, state and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eggroll_opt as eo
from eggroll_opt import adaptation
from tests.conftest import host


# -- the statistics: fast path against materialised noise -----------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 9),
    columns=st.integers(1, 9),
    rank=st.integers(1, 4),
    draws=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_lowrank_statistics_equal_the_materialised_reference(rows, columns, rank, draws, seed):
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((draws, rows, rank))
    right = rng.standard_normal((draws, columns, rank))
    weights = rng.standard_normal(draws)
    total, row_stat, column_stat = adaptation._lowrank_statistics((left, right), weights, True)
    dense = left @ right.transpose(0, 2, 1) / math.sqrt(rank)  # (K, m, n)
    squares = dense**2
    np.testing.assert_allclose(
        total, weights @ (squares.mean(axis=(1, 2)) - 1), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        row_stat, weights @ (squares.mean(axis=2) - 1), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_allclose(
        column_stat, weights @ (squares.mean(axis=1) - 1), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize(("rows", "columns", "rank"), [(3, 4, 1), (5, 2, 2), (6, 6, 3)])
def test_lowrank_variance_matches_sampling(rows, columns, rank):
    rng = np.random.default_rng(rows * 100 + columns * 10 + rank)
    left = rng.standard_normal((200_000, rows, rank))
    right = rng.standard_normal((200_000, columns, rank))
    gram = (left.transpose(0, 2, 1) @ left) * (right.transpose(0, 2, 1) @ right)
    statistic = gram.sum(axis=(1, 2)) / (rank * rows * columns)
    expected = adaptation.lowrank_variance(rows, columns, rank)
    assert statistic.mean() == pytest.approx(1.0, abs=0.02)
    assert statistic.var() == pytest.approx(expected, rel=0.05)
    # Rows: Var(‖Ê_a‖²/n) = 2/r + 2(r+2)/(r n).
    row = ((left @ (right.transpose(0, 2, 1) @ right)) * left).sum(axis=2)[:, 0]
    assert (row / (rank * columns)).var() == pytest.approx(
        adaptation._row_variance(columns, rank), rel=0.05
    )


# -- members with noise scales --------------------------------------------------------------------
def _adapted(backend, shapes, generations=4, **kwargs):
    """A strategy whose σ and scales have moved away from their starting values."""
    rng = np.random.default_rng(1)
    params = {name: rng.standard_normal(shape) for name, shape in shapes.items()}
    targets = {name: rng.standard_normal(shape) * 3 for name, shape in shapes.items()}
    settings_ = dict(popsize=8, sigma=0.3, seed=2, backend=backend, sigma_adaptation="scales")
    settings_.update(kwargs)
    es = eo.Eggroll(params, **settings_)
    for _ in range(generations):
        members = [member.params() for member in es.ask()]
        es.tell(
            [sum(float(np.sum((host(m[k]) - targets[k]) ** 2)) for k in shapes) for m in members]
        )
    return es


def test_scaled_members_follow_the_definition(backend):
    es = _adapted(backend, {"w": (5, 4), "conv": (3, 2, 2), "b": (5,)}, rank=2)
    scales, sigmas = es.noise_scales, es.sigmas
    assert set(scales) == {"w", "conv", "b"} and len(set(sigmas.values())) == 3
    pop = es.ask()
    base = host(es.params)
    rows, columns = scales["w"]
    assert not np.allclose(rows, 1) and abs(np.log(rows).mean()) < 1e-12
    left, right = (host(x) for x in pop.factors("w", unit=True))
    eps = host(pop.factors("b", unit=True))
    for i in range(len(pop)):
        k, s = i // 2, (1 if i % 2 == 0 else -1)
        member = host(pop[i].params())
        unit = left[k] @ right[k].T / math.sqrt(2)
        expected = base["w"] + s * sigmas["w"] * rows[:, None] * unit * columns[None, :]
        np.testing.assert_allclose(member["w"], expected, rtol=1e-9, atol=1e-12)
        expected_b = base["b"] + s * sigmas["b"] * scales["b"] * eps[k]
        np.testing.assert_allclose(member["b"], expected_b, rtol=1e-9, atol=1e-12)
        spec_member = host(pop[i].spec.params(es.params))
        for path in ("w", "conv", "b"):
            np.testing.assert_allclose(spec_member[path], member[path], rtol=1e-9, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    columns=st.integers(1, 6),
    rank=st.integers(1, 3),
    batch=st.integers(1, 3),
    shared=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_forward_with_scales_equals_materialised_members(rows, columns, rank, batch, shared, seed):
    rank = min(rank, rows, columns)
    es = _adapted("numpy", {"w": (rows, columns)}, generations=2, rank=rank, seed=seed)
    pop = es.ask()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, columns) if shared else (len(pop), batch, columns))
    out = pop.linear("w", x)
    columns_out = pop.matmul("w", np.swapaxes(x, -1, -2))
    stacked = pop.stacked("w")
    for i in range(len(pop)):
        weight = pop[i].params()["w"]
        np.testing.assert_allclose(stacked[i], weight, rtol=1e-10, atol=1e-12)
        xi = x if shared else x[i]
        np.testing.assert_allclose(out[i], xi @ weight.T, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(columns_out[i], weight @ xi.T, rtol=1e-9, atol=1e-10)


def test_remote_workers_rebuild_scaled_members():
    es = _adapted("numpy", {"w": (6, 5), "b": (6,)}, generations=3)

    def loss(params):
        return float(np.sum(params["w"] ** 3) + np.sum(np.sin(params["b"])))

    pop = es.ask()
    here = eo.evaluate(pop, loss, None)
    threads = eo.evaluate(pop, loss, "threads")
    np.testing.assert_allclose(threads.fitness, here.fitness, rtol=1e-12)


# -- the rules ------------------------------------------------------------------------------------
def _sphere_evaluations(method, shape, budget, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    target = rng.uniform(-4, 4, shape)
    coefficients = kwargs.pop("coefficients", np.ones(shape))
    es = eo.Eggroll(
        {"x": np.zeros(shape)},
        sigma=2.0,
        sigma_adaptation=method,
        seed=seed,
        backend="numpy",
        **kwargs,
    )
    evaluations = 0
    while evaluations < budget:
        members = es.ask().stacked("x")
        es.tell(np.sum(coefficients * (members - target) ** 2, axis=(1, 2)))
        evaluations += es.popsize
        if np.sum(coefficients * (es.params["x"] - target) ** 2) < 1e-8:
            return evaluations
    return None


def test_adaptation_reaches_1e_8_on_the_sphere_where_fixed_sigma_cannot():
    evaluations = _sphere_evaluations("auto", (10, 10), 11_000)
    assert evaluations is not None  # SepCMA needs about 11,000 here
    assert _sphere_evaluations(None, (10, 10), 11_000) is None


def test_row_column_scales_solve_a_row_times_column_ellipsoid():
    coefficients = (1e6 ** np.linspace(0, 1, 100)).reshape(10, 10)
    with_scales = _sphere_evaluations("scales", (10, 10), 15_000, coefficients=coefficients)
    assert with_scales is not None  # SepCMA: about 49,000
    assert _sphere_evaluations("leaf", (10, 10), 15_000, coefficients=coefficients) is None


def test_sigma_shrinks_when_smaller_steps_win_and_respects_its_bounds():
    es = eo.Eggroll(
        {"w": np.zeros((4, 4))},
        sigma=1.0,
        sigma_adaptation="leaf",
        sigma_bounds=(0.5, 2.0),
        popsize=16,
        seed=0,
        backend="numpy",
    )
    history = []
    for _ in range(200):
        pop = es.ask()
        history.append(es.tell(np.sum(pop.stacked("w") ** 2, axis=(1, 2))))
    assert history[0].sigma == {"w": 1.0}  # stats report the σ a generation was sampled with
    assert history[-1].sigma_range[0] < 0.6  # σ went down ...
    assert min(stats.sigma["w"] for stats in history) >= 0.5 - 1e-12  # ... never past the bound
    assert es.sigmas["w"] == pytest.approx(0.5)  # pinned at its lower bound


@pytest.mark.parametrize(("method", "grows"), [("scales", True), ("csa", True), ("nes", False)])
def test_sigma_grows_on_a_slope_with_the_path_term(method, grows):
    # Far from the optimum the objective is a slope: mirrored pairs share ‖ε‖², so the log-σ
    # gradient alone ("nes") cannot ask for a larger σ; the path term can.
    es = eo.OpenES(
        {"w": np.zeros(20)}, sigma=0.01, sigma_adaptation=method, seed=0, backend="numpy"
    )
    for _ in range(30):
        pop = es.ask()
        es.tell(np.sum((pop.stacked("w") - 50.0) ** 2, axis=1))
    assert (es.sigmas["w"] > 0.1) is grows


# -- state ----------------------------------------------------------------------------------------
def test_checkpoint_resumes_an_adaptive_run_bit_identically(tmp_path):
    es = _adapted("numpy", {"w": (6, 5), "b": (6,)}, generations=3)
    path = tmp_path / "run.ckpt"
    es.save(path)
    resumed = eo.Eggroll.load(path, backend="numpy")
    assert resumed.sigma_adaptation == "scales" and resumed.sigmas == es.sigmas
    for strategy in (es, resumed):
        for _ in range(3):
            pop = strategy.ask()
            strategy.tell(np.sum(pop.stacked("w") ** 2, axis=(1, 2)) + pop.stacked("b").sum(1))
    for path_ in ("w", "b"):
        assert np.array_equal(es.params[path_], resumed.params[path_])
        assert np.array_equal(
            np.asarray(es.noise_scales[path_][0] if path_ == "w" else es.noise_scales[path_]),
            np.asarray(
                resumed.noise_scales[path_][0] if path_ == "w" else resumed.noise_scales[path_]
            ),
        )
    assert es.sigmas == resumed.sigmas


def test_adaptive_checkpoint_refused_by_a_fixed_sigma_strategy(tmp_path):
    es = _adapted("numpy", {"w": (3, 3)}, generations=1)
    path = tmp_path / "run.ckpt"
    es.save(path)
    fixed = eo.Eggroll({"w": np.zeros((3, 3))}, popsize=8, sigma=0.3, seed=2, backend="numpy")
    with pytest.raises(ValueError, match=r"sigma_adaptation='scales'.*fixed σ"):
        fixed.restore(path)


def test_custom_adaptation_must_be_given_again(tmp_path):
    custom = adaptation.leaf_sigma(sigma_rate=0.05)
    es = eo.Eggroll(
        {"w": np.zeros((3, 3))},
        popsize=8,
        sigma=0.3,
        seed=2,
        backend="numpy",
        sigma_adaptation=custom,
    )
    path = tmp_path / "run.ckpt"
    es.save(path)
    with pytest.raises(ValueError, match="custom sigma_adaptation"):
        eo.Eggroll.load(path)
    assert eo.Eggroll.load(path, sigma_adaptation=custom).sigma_adaptation is custom


def test_a_failing_adaptation_leaves_the_strategy_as_it_was():
    def broken_update(state, observed):
        raise RuntimeError("broken")

    good = adaptation.leaf_sigma()
    es = eo.Eggroll(
        {"w": np.ones((3, 3))},
        popsize=8,
        sigma=0.3,
        seed=2,
        backend="numpy",
        sigma_adaptation=adaptation.SigmaAdaptation(good.init, broken_update),
    )
    pop = es.ask()
    mean, sigmas = es.params["w"].copy(), es.sigmas
    with pytest.raises(RuntimeError, match="broken"):
        es.tell(np.arange(8.0))
    assert np.array_equal(es.params["w"], mean) and es.sigmas == sigmas
    assert es.generation == 0 and es.ask() is pop  # the same tell can be retried


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"sigma_adaptation": "cma"}, ValueError, r"`sigma_adaptation` must be .*'cma'"),
        ({"sigma_adaptation": "leaf", "sigma_bounds": (2.0, 3.0)}, ValueError, "sigma_bounds"),
        ({"sigma_adaptation": "leaf", "sigma_bounds": (0.0, 3.0)}, ValueError, "sigma_bounds"),
        ({"sigma_adaptation": "leaf", "sigma_bounds": 3.0}, ValueError, "sigma_bounds"),
        ({"sigma_bounds": (0.1, 10.0)}, ValueError, "needs a `sigma_adaptation`"),
        ({"sigma": -1.0, "sigma_adaptation": "auto"}, ValueError, "`sigma` must be"),
    ],
)
def test_bad_adaptation_arguments_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        eo.Eggroll({"w": np.zeros((3, 3))}, backend="numpy", **options)


def test_nonfinite_initial_parameters_are_refused():
    with pytest.raises(ValueError, match="leaf 'w' holds NaN or inf"):
        eo.Eggroll({"w": np.array([[1.0, np.nan]])}, backend="numpy")


# -- defaults and restarts ------------------------------------------------------------------------
def test_defaults_follow_the_documented_rules():
    es = eo.Eggroll({"w": np.full((10, 10), 2.0), "b": np.zeros(10)}, backend="numpy")
    assert es.popsize == eo.default_popsize(110) == 18
    rms = math.sqrt(400 / 110)
    assert es.sigma == pytest.approx(0.1 * rms)
    assert es.learning_rate == pytest.approx(es.sigma / 2)  # Adam, fixed σ
    adaptive = eo.Eggroll({"w": np.zeros((10, 10))}, sigma_adaptation="auto", backend="numpy")
    assert adaptive.sigma == 0.1 and adaptive.learning_rate == 3.0
    assert eo.default_popsize(5, even=False) == 8


def test_restart_resets_sigma_and_grows_the_population(tmp_path):
    es = _adapted("numpy", {"w": (4, 4)}, generations=3)
    sigma0 = es.sigma
    assert es.sigmas["w"] != sigma0
    es.restart(popsize=16)
    assert es.sigmas["w"] == pytest.approx(sigma0) and es.noise_scales["w"][0].tolist() == [1.0] * 4
    assert es.popsize == 16 and es.restarts == 1 and es.generation == 3
    assert len(es.ask()) == 16
    es.save(tmp_path / "run.ckpt")
    loaded = eo.Eggroll.load(tmp_path / "run.ckpt", backend="numpy")
    assert loaded.restarts == 1 and loaded.popsize == 16
    with pytest.raises(ValueError, match="popsize"):
        es.restart(popsize=7)
    with pytest.raises(ValueError, match="leaf 'w' has shape"):
        es.restart({"w": np.zeros((2, 2))})
    assert es.restarts == 1


def test_optimize_restarts_a_stagnating_run_and_keeps_the_best():
    rng = np.random.default_rng(0)
    shift = rng.uniform(-3, 3, 20)

    def rastrigin(params):
        x = params["x"] - shift
        return float(10 * x.size + np.sum(x**2 - 10 * np.cos(2 * np.pi * x)))

    es = eo.OpenES({"x": np.zeros(20)}, sigma=1.0, sigma_adaptation="auto", seed=1, backend="numpy")
    result = es.optimize(rastrigin, 400, restarts=3, restart_patience=15, progress=False)
    assert 1 <= len(result.restarts) <= 3 and es.restarts == len(result.restarts)
    assert es.popsize > eo.default_popsize(20)
    assert rastrigin(result.best_params) == pytest.approx(result.best_fitness)
    assert result.best_fitness == min(s.best_fitness for s in result.history)
    assert "restarts=" in repr(result) and len(repr(result)) < 300
