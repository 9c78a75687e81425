"""The strategies: the update equals its definition, conventions, errors, convergence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eggroll_opt as eo
from eggroll_opt.shaping import centered_rank
from tests.conftest import host, make_backend


def _small(params=None, **overrides):
    """A tiny NumPy strategy: popsize 4, sigma 0.1, learning rate 0.1, seed 0, unless told."""
    settings = dict(popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy")
    settings.update(overrides)
    return eo.Eggroll({"w": np.zeros((2, 2))} if params is None else params, **settings)


def _sgd_step_equals_gradient(es, pop, fitness):
    """With sgd(learning_rate=1) the step is exactly the ascent estimate g."""
    before = host(es.params)
    es.tell(fitness)
    after = host(es.params)
    return {name: after[name] - before[name] for name in before}


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=3).map(tuple),
    rank=st.integers(1, 3),
    half_popsize=st.integers(1, 6),
    mirrored=st.booleans(),
    maximize=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    kind=st.sampled_from(["lowrank", "full"]),
    backend_name=st.sampled_from(["numpy", "numpy-arrays"]),
    data=st.data(),
)
def test_update_equals_explicit_sum_over_materialised_members(
    shape, rank, half_popsize, mirrored, maximize, dtype, kind, backend_name, data
):
    """g = 1/(N σ) Σ z_i (x_i - μ)/σ, computed from dense members, equals the fast update."""
    rows, columns = shape[0], math.prod(shape[1:])
    rank = min(rank, rows, columns)
    popsize, sigma = 2 * half_popsize, 0.25
    es = eo.Eggroll(
        {
            "w": np.random.default_rng(0).standard_normal(shape).astype(dtype),
            "b": np.zeros(3, dtype),
        },
        popsize=popsize,
        sigma=sigma,
        rank=rank,
        learning_rate=1.0,
        optimizer="sgd",
        mirrored=mirrored,
        maximize=maximize,
        seed=data.draw(st.integers(0, 2**32)),
        noise_kinds={"w": kind},
        backend=make_backend(backend_name),
    )
    pop = es.ask()
    fitness = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=popsize, max_size=popsize)))
    base = host(es.params)
    z = centered_rank(fitness if maximize else -fitness)
    expected = {
        name: sum(z[i] * (host(pop[i].params()[name]) - base[name]) / sigma for i in range(popsize))
        / (popsize * sigma)
        for name in base
    }
    step = _sgd_step_equals_gradient(es, pop, fitness)
    tolerance = 2e-4 if dtype == np.float32 else 1e-9
    for name in base:
        scale = max(1.0, float(np.abs(expected[name]).max()))
        np.testing.assert_allclose(step[name], expected[name], rtol=0, atol=tolerance * scale)
        assert step[name].dtype == dtype


def test_constant_fitness_gives_no_step(backend):
    es = _small(
        {"w": np.ones((6, 5)), "b": np.ones(6)}, popsize=8, optimizer="sgd", backend=backend
    )
    es.ask()
    stats = es.tell(np.full(8, 3.0))
    assert stats.gradient_norm == 0.0
    np.testing.assert_array_equal(host(es.params)["w"], np.ones((6, 5)))


def test_mirrored_pairs_cancel_for_equal_pair_fitness(backend):
    """Members 2k and 2k+1 with equal fitness contribute nothing, whatever other pairs do."""
    es = _small(
        {"w": np.zeros((4, 4))},
        popsize=8,
        learning_rate=1.0,
        optimizer="sgd",
        seed=1,
        backend=backend,
        fitness_shaping="raw",
    )
    pop = es.ask()
    fitness = np.array([1.0, 1.0, 5.0, 5.0, -2.0, -2.0, 0.0, 3.0])  # only pair 3 differs
    step = _sgd_step_equals_gradient(es, pop, fitness)["w"]
    left, right = (host(f) for f in pop.factors("w"))
    # Pair 3: utility -0 - (-3) = 3 -> g = 3 A_3 B_3^T / (N σ)
    np.testing.assert_allclose(step, 3 * left[3] @ right[3].T / (8 * 0.1), atol=1e-9)


def test_update_is_invariant_to_monotone_fitness_transforms(backend):
    steps = []
    for transform in (lambda f: f, lambda f: np.exp(f / 3) + 100):
        es = _small({"w": np.zeros((5, 3))}, popsize=10, seed=4, backend=backend)
        pop = es.ask()
        fitness = transform(np.linspace(-3, 3, 10)[::-1])
        steps.append(_sgd_step_equals_gradient(es, pop, fitness)["w"])
    np.testing.assert_allclose(steps[0], steps[1], rtol=1e-12)


def test_maximize_flips_the_direction():
    steps = {}
    for maximize in (False, True):
        es = _small(
            {"w": np.zeros((3, 3))},
            popsize=6,
            learning_rate=1.0,
            optimizer="sgd",
            maximize=maximize,
            seed=2,
        )
        assert es.maximize is maximize
        pop = es.ask()
        steps[maximize] = _sgd_step_equals_gradient(es, pop, np.arange(6.0))["w"]
    np.testing.assert_allclose(steps[True], -steps[False])


def test_noise_reuse_keeps_noise_for_r_generations():
    es = _small({"w": np.zeros((4, 3))}, noise_reuse=3)
    factors = []
    for _ in range(4):
        factors.append(es.ask().factors("w")[0].copy())
        es.tell(np.arange(4.0))
    np.testing.assert_array_equal(factors[0], factors[2])
    assert not np.array_equal(factors[2], factors[3])
    fresh = eo.Eggroll(
        {"w": np.zeros((4, 3))}, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy"
    )
    first = fresh.ask().factors("w")[0].copy()
    fresh.tell(np.arange(4.0))
    assert not np.array_equal(first, fresh.ask().factors("w")[0])


def test_same_seed_same_run_and_different_seed_different_run():
    def run(seed):
        es = _small({"w": np.zeros((5, 4))}, popsize=8, seed=seed)
        for _ in range(3):
            pop = es.ask()
            es.tell([float(np.sum(m.params()["w"] ** 2 - m.params()["w"])) for m in pop])
        return es.params["w"]

    np.testing.assert_array_equal(run(5), run(5))
    assert not np.array_equal(run(5), run(6))
    assert (
        eo.Eggroll(
            {"w": np.zeros((2, 2))}, popsize=2, sigma=0.1, learning_rate=0.1, backend="numpy"
        ).seed
        >= 0
    )


def test_nan_ranks_worst_and_inf_at_the_ends():
    es = _small({"w": np.zeros((3, 2))}, learning_rate=1.0, optimizer="sgd")
    pop = es.ask()
    step_nan = _sgd_step_equals_gradient(es, pop, [np.nan, 1.0, -np.inf, 2.0])["w"]
    es2 = _small({"w": np.zeros((3, 2))}, learning_rate=1.0, optimizer="sgd")
    pop2 = es2.ask()
    # Minimizing: -inf is best, NaN worse than anything: same ranks as [9, 1, -9, 2].
    step_ref = _sgd_step_equals_gradient(es2, pop2, [9.0, 1.0, -9.0, 2.0])["w"]
    np.testing.assert_allclose(step_nan, step_ref)


def test_stats_report_the_generation():
    es = _small({"w": np.zeros((3, 2))}, popsize=6, maximize=True)
    es.ask()
    stats = es.tell([1.0, np.nan, 7.0, -np.inf, 3.0, 5.0])
    assert (stats.generation, stats.best_fitness, stats.best_index) == (0, 7.0, 2)
    assert stats.worst_fitness == -np.inf and stats.num_failed == 1
    assert stats.mean_fitness == pytest.approx(4.0) and stats.gradient_norm > 0
    assert es.generation == 1


@pytest.mark.parametrize(
    "fitness",
    [
        [1, 2, 3, 4],
        np.array([1, 0, 1, 1], dtype=bool),
        np.arange(4, dtype=np.float32),
        (0.5, 1.5, 2.5, 3.5),
    ],
)
def test_fitness_accepts_real_sequences(fitness):
    es = eo.Eggroll(
        {"w": np.zeros((2, 2))}, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy"
    )
    es.ask()
    assert es.tell(fitness).generation == 0


@pytest.mark.parametrize(
    ("fitness", "error", "match"),
    [
        ([1.0, 2.0, 3.0], ValueError, r"`fitness` must have shape \(4,\).*got shape \(3,\)"),
        (np.zeros((4, 1)), ValueError, r"`fitness` must have shape \(4,\)"),
        (np.ones(4) * 1j, TypeError, "`fitness` must be real, got complex"),
        (["a", "b", "c", "d"], TypeError, "`fitness` must hold real numbers"),
        ([None, 1.0, 2.0, object()], TypeError, "`fitness` must hold real numbers"),
        ({"a": 1.0}, TypeError, "`fitness` must be a sequence of 4 real numbers"),
        ("1234", TypeError, "`fitness` must be a sequence"),
        ([np.nan] * 4, ValueError, "NaN for every member"),
    ],
)
def test_bad_fitness_is_refused_clearly(fitness, error, match):
    es = eo.Eggroll(
        {"w": np.zeros((2, 2))}, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy"
    )
    es.ask()
    with pytest.raises(error, match=match):
        es.tell(fitness)
    assert es.generation == 0  # nothing was applied
    assert es.tell([1.0, 2.0, 3.0, 4.0]).generation == 0  # the population is still pending


def test_nan_policy_raise():
    es = _small({"w": np.zeros((2, 2))}, nan_policy="raise")
    es.ask()
    with pytest.raises(ValueError, match=r"NaN for members \[2\]"):
        es.tell([1.0, 2.0, np.nan, 3.0])


def test_ask_tell_order_is_enforced():
    es = eo.Eggroll(
        {"w": np.zeros((2, 2))}, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy"
    )
    with pytest.raises(eo.AskTellError, match="tell\\(\\) called before ask\\(\\)"):
        es.tell(np.zeros(4))
    es.ask()
    es.tell(np.arange(4.0))
    with pytest.raises(eo.AskTellError, match="already called for generation 0"):
        es.tell(np.arange(4.0))
    assert isinstance(eo.AskTellError("x"), ValueError)


def test_shaping_callable_output_is_checked():
    es = _small({"w": np.zeros((2, 2))}, fitness_shaping=lambda u: u[:2])
    es.ask()
    with pytest.raises(ValueError, match="`fitness_shaping` must return 4 finite values"):
        es.tell(np.arange(4.0))


PARAMS = {"w": np.zeros((4, 3))}


@pytest.mark.parametrize(
    ("params", "kwargs", "error", "match"),
    [
        (PARAMS, {"popsize": 5}, ValueError, "`popsize` must be even with mirrored sampling"),
        (PARAMS, {"popsize": 1, "mirrored": False}, ValueError, "`popsize` must be at least 2"),
        (PARAMS, {"popsize": 4.0}, TypeError, "`popsize` must be an int"),
        (PARAMS, {"sigma": 0.0}, ValueError, "`sigma` must be finite and > 0, got 0.0"),
        (PARAMS, {"sigma": -1}, ValueError, "`sigma` must be finite and > 0"),
        (PARAMS, {"sigma": float("nan")}, ValueError, "`sigma` must be finite"),
        (PARAMS, {"learning_rate": 0}, ValueError, "`learning_rate` must be finite and > 0"),
        (PARAMS, {"weight_decay": -0.1}, ValueError, "`weight_decay` must be finite and >= 0"),
        (PARAMS, {"rank": 0}, ValueError, "`rank` must be at least 1, got 0"),
        (PARAMS, {"seed": -1}, ValueError, "`seed` must be at least 0"),
        (PARAMS, {"seed": 1.5}, TypeError, "`seed` must be an int"),
        (PARAMS, {"noise_reuse": -1}, ValueError, "`noise_reuse` must be at least 0"),
        (PARAMS, {"nan_policy": "ignore"}, ValueError, "`nan_policy` must be one of"),
        (PARAMS, {"optimizer": "lion"}, ValueError, "`optimizer` must be one of"),
        (PARAMS, {"optimizer": 3}, TypeError, "`optimizer` must be a name"),
        (PARAMS, {"fitness_shaping": "rank"}, ValueError, "`fitness_shaping` must be one of"),
        (PARAMS, {"backend": "torch"}, ValueError, "`backend` must be one of"),
        (PARAMS, {"maximize": "yes"}, TypeError, "`maximize` must be a bool"),
        (PARAMS, {"noise_kinds": {"v": "full"}}, ValueError, r"do not exist: \['v'\]"),
        (PARAMS, {"noise_kinds": {"w": "dense"}}, ValueError, r"`noise_kinds`\['w'\] must be"),
        (PARAMS, {"noise_kinds": {"w": "frozen"}}, ValueError, "freezes every leaf"),
        ({"b": np.zeros(3)}, {"noise_kinds": {"b": "lowrank"}}, ValueError, ">= 2 dimensions"),
        ({"w": np.zeros((3, 2), dtype=int)}, {}, TypeError, "leaf 'w' must be a float array"),
        ({"w": np.zeros((3, 2), dtype=complex)}, {}, TypeError, "must be a float array"),
        ({"w": np.zeros((3, 0))}, {}, ValueError, r"leaf 'w' has a zero-size dimension"),
        ({"w": np.zeros((3, 2), dtype=bool)}, {}, TypeError, "must be a float array"),
        ({"w": np.zeros((3, 2), dtype=np.float16)}, {}, TypeError, "float32 or float64"),
        ([np.zeros(3)], {}, TypeError, "`params` must be a dict"),
    ],
)
def test_bad_configuration_is_refused_clearly(params, kwargs, error, match):
    settings_ = dict(popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy")
    settings_.update(kwargs)
    with pytest.raises(error, match=match):
        eo.Eggroll(params, **settings_)


def test_params_are_copied_and_keep_their_tree():
    user = {"enc": {"w": np.zeros((3, 2), np.float32)}, "scale": np.float32(1.0)}
    es = eo.Eggroll(user, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy")
    user["enc"]["w"][:] = 7
    assert float(es.params["enc"]["w"].max()) == 0.0
    assert es.noise_kinds == {"enc/w": "lowrank", "scale": "full"}
    assert es.params["scale"].shape == () and es.num_params == 7
    es.ask()
    es.tell(np.arange(4.0))
    assert es.params["enc"]["w"].dtype == np.float32


def test_openes_is_eggroll_with_full_noise():
    es = eo.OpenES(
        {"w": np.zeros((4, 3)), "b": np.zeros(4)},
        popsize=4,
        sigma=0.1,
        learning_rate=0.1,
        seed=0,
        backend="numpy",
    )
    assert es.noise_kinds == {"w": "full", "b": "full"}
    assert es.ask().factors("w").shape == (2, 4, 3)
    assert isinstance(es, eo.Eggroll)


def _parameter_matching(cls, generations, **kwargs):
    rng = np.random.default_rng(0)
    target = rng.standard_normal((64, 64)).astype(np.float32) * 0.5
    es = cls(
        {"w": np.zeros((64, 64), np.float32)},
        popsize=128,
        sigma=0.05,
        learning_rate=0.05,
        seed=1,
        backend="numpy",
        **kwargs,
    )
    start = float(np.mean(target**2))
    for _ in range(generations):
        pop = es.ask()
        es.tell(np.mean((pop.stacked("w") - target) ** 2, axis=(1, 2)))
    return float(np.mean((es.params["w"] - target) ** 2)) / start


@pytest.mark.parametrize("cls", [eo.Eggroll, eo.OpenES])
def test_both_strategies_solve_parameter_matching(cls):
    """64x64 matching: the squared error falls below 25% of its start in 150 generations."""
    assert _parameter_matching(cls, 150) < 0.25


@pytest.mark.slow
@pytest.mark.parametrize("cls", [eo.Eggroll, eo.OpenES])
def test_both_strategies_solve_parameter_matching_closely(cls):
    """With a larger budget and SGD the error falls below 10% of its start."""
    assert _parameter_matching(cls, 1000, optimizer="sgd") < 0.1


@pytest.mark.parametrize("cls", [eo.Eggroll, eo.OpenES])
def test_both_strategies_solve_a_non_differentiable_objective(cls):
    """Count of wrongly signed weights after rounding: a piecewise-constant fitness."""
    rng = np.random.default_rng(3)
    target = np.sign(rng.standard_normal((16, 16)))
    es = cls(
        {"w": np.zeros((16, 16))}, popsize=64, sigma=0.5, learning_rate=0.1, seed=0, backend="numpy"
    )
    for _ in range(100):
        pop = es.ask()
        es.tell(np.sum(np.sign(np.round(pop.stacked("w"), 1)) != target, axis=(1, 2)))
    wrong = int(np.sum(np.sign(np.round(es.params["w"], 1)) != target))
    assert wrong <= 3  # from 256 wrong at the start


def test_tell_never_modifies_arrays_the_user_holds():
    es = _small({"w": np.ones((4, 3)), "b": np.ones(4)}, weight_decay=0.1)
    held = es.params
    pop = es.ask()
    member = pop[1].params()
    es.tell(np.arange(4.0))
    np.testing.assert_array_equal(held["w"], np.ones((4, 3)))
    np.testing.assert_array_equal(pop[1].params()["w"], member["w"])  # its base is kept
    assert not np.array_equal(es.params["w"], held["w"])


# -- rank: a cap per leaf, or a mapping by leaf ---------------------------------------------
RANK_PARAMS = {
    "hidden": {"w": np.zeros((8, 24))},
    "out": {"w": np.zeros((1, 24))},
    "b": np.zeros(3),
}


def test_rank_is_a_cap_per_leaf():
    es = eo.Eggroll(RANK_PARAMS, popsize=8, sigma=0.1, rank=2, seed=0, backend="numpy")
    assert es.rank == 2
    assert es.ranks == {"hidden/w": 2, "out/w": 1}
    pop = es.ask()
    assert pop.factors("out/w")[0].shape == (4, 1, 1)
    assert pop.factors("hidden/w")[1].shape == (4, 24, 2)
    for index in (0, 3, 6):  # every path to a member agrees with the materialised one
        dense = pop.stacked("out/w")[index]
        np.testing.assert_allclose(pop[index].params()["out"]["w"], dense)
        np.testing.assert_allclose(pop[index].spec.params(es.params)["out"]["w"], dense)
    es.tell(np.arange(8.0))
    assert np.isfinite(es.params["out"]["w"]).all()


def test_rank_by_leaf_with_adaptation_and_checkpoint(tmp_path):
    es = eo.Eggroll(
        RANK_PARAMS,
        popsize=8,
        rank={"hidden/w": 4},
        seed=0,
        sigma_adaptation="auto",
        backend="numpy",
    )
    assert es.ranks == {"hidden/w": 4, "out/w": 1} and es.rank == {"hidden/w": 4}
    for _ in range(2):
        es.ask()
        es.tell(np.arange(8.0))
    es.save(tmp_path / "ranks.npz")
    loaded = eo.Eggroll.load(tmp_path / "ranks.npz", backend="numpy")
    assert loaded.ranks == es.ranks
    for strategy in (es, loaded):
        strategy.ask()
        strategy.tell(np.arange(8.0)[::-1])
    np.testing.assert_array_equal(loaded.params["hidden"]["w"], es.params["hidden"]["w"])


@pytest.mark.parametrize(
    ("rank", "error", "match"),
    [
        ({"nope": 2}, ValueError, r"`rank` names leaves that do not exist: \['nope'\]"),
        ({"b": 2}, ValueError, r"`rank` names leaves without low-rank noise: \['b'\]"),
        ({"hidden/w": 0}, ValueError, r"`rank\['hidden/w'\]` must be at least 1, got 0"),
        ({"hidden/w": 1.5}, TypeError, r"`rank\['hidden/w'\]` must be an int, got 1.5"),
        ({1: 2}, TypeError, r"`rank` keys must be leaf paths \(str\), got 1"),
        (0, ValueError, r"`rank` must be at least 1, got 0"),
    ],
)
def test_rank_errors_name_the_argument(rank, error, match):
    with pytest.raises(error, match=match):
        eo.Eggroll(RANK_PARAMS, rank=rank, backend="numpy")
