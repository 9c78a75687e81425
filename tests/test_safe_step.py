"""``tell`` never commits a non-finite mean or optimizer state (eggroll_opt._safe_step)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import eggroll_opt as eo
from eggroll_opt import shaping
from eggroll_opt._safe_step import NonFiniteStepError, leaf_norm, split_exponent
from eggroll_opt.optim import flatten_state


def _strategy(dtype: type = np.float32, optimizer: str = "adam", **options: object) -> eo.Eggroll:
    settings_: dict[str, object] = {
        "popsize": 8,
        "sigma": 0.1,
        "learning_rate": 0.01,
        "seed": 0,
        "fitness_shaping": "raw",
        "optimizer": optimizer,
        "backend": "numpy",
    }
    settings_.update(options)
    params = {"w": np.zeros((6, 5), dtype), "b": np.zeros(5, dtype)}
    return eo.Eggroll(params, **settings_)  # type: ignore[arg-type]


def _state(es: eo.Eggroll) -> dict[str, np.ndarray]:
    """Everything a tell could change, as plain arrays."""
    out = {f"param/{k}": np.array(v) for k, v in es.params.items()}
    out.update({f"opt/{k}": np.array(v) for k, v in flatten_state(es.optimizer_state)})
    out["generation"] = np.array(es.generation)
    return out


def _assert_same(left: dict[str, np.ndarray], right: dict[str, np.ndarray]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


# The reproductions: each silently made the mean NaN or inf before.
@pytest.mark.parametrize(
    ("dtype", "optimizer", "huge"),
    [(np.float32, "adam", 1e20), (np.float32, "sgd", 1e39), (np.float64, "adam", 1e155)],
)
def test_an_overflowing_tell_raises_and_changes_nothing(
    dtype: type, optimizer: str, huge: float
) -> None:
    es, twin = _strategy(dtype, optimizer), _strategy(dtype, optimizer)
    # One ordinary generation first, so that the optimizer state is not all zeros.
    for strategy in (es, twin):
        strategy.ask()
        strategy.tell(np.arange(8.0))
    population = es.ask()
    before = _state(es)
    with pytest.raises(NonFiniteStepError, match=r"`fitness` gives a non-finite .*unchanged"):
        es.tell([huge, 0, 1, 2, 3, 4, 5, 6])
    _assert_same(_state(es), before)
    assert es.ask() is population  # the same generation is still open
    # The same tell, retried with other fitness, gives what the twin gets.
    es.tell([7.0, 0, 1, 2, 3, 4, 5, 6])
    twin.ask()
    twin.tell([7.0, 0, 1, 2, 3, 4, 5, 6])
    _assert_same(_state(es), _state(twin))


def test_a_failed_step_restores_the_optimizer_state_it_updated_in_place() -> None:
    # Gradients of ~1e25 are finite in float32, but Adam's squared gradient is not: the state
    # was already being updated in place when the overflow showed.
    es = _strategy(np.float32, "adam")
    es.ask()
    es.tell(np.arange(8.0))
    es.ask()
    before = _state(es)
    with pytest.raises(NonFiniteStepError, match="non-finite step"):
        es.tell([1e25, 0, 1, 2, 3, 4, 5, 6])
    _assert_same(_state(es), before)


def test_huge_raw_fitness_is_summed_in_a_safe_scale() -> None:
    # SGD's step is linear in raw fitness: fitness times 2**900 with the learning rate divided
    # by 2**900 must give the same mean, bit for bit (the naive sum overflows float64).
    small = np.array([3.0, -1.0, 2.5, 0.0, 1.0, -2.0, 0.5, 4.0])
    plain = _strategy(np.float64, "sgd", learning_rate=1.0)
    scaled = _strategy(np.float64, "sgd", learning_rate=2.0**-900)
    for es, fitness in ((plain, small), (scaled, np.ldexp(small, 900))):
        es.ask()
        stats = es.tell(fitness)
        assert math.isfinite(stats.gradient_norm)
    for path in ("w", "b"):
        np.testing.assert_array_equal(plain.params[path], scaled.params[path])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum"])
def test_the_fused_apply_gives_what_update_then_the_sum_gives(optimizer: str) -> None:
    # The built-in optimizer writes the new mean itself (`apply`); the same optimizer without
    # `apply` takes `update` and then `mean + update` (and, being custom, the guarded path).
    params = {"w": np.zeros((6, 5), np.float32), "b": np.ones(5), "c": np.ones(3, np.float32)}
    settings_ = {"popsize": 8, "sigma": 0.1, "learning_rate": 0.05, "seed": 0, "backend": "numpy"}
    fused = eo.Eggroll(params, optimizer=optimizer, **settings_)  # type: ignore[arg-type]
    plain_optimizer = eo.optim.get_optimizer(optimizer, 0.05)._replace(apply=None)
    plain = eo.Eggroll(params, optimizer=plain_optimizer, **settings_)  # type: ignore[arg-type]
    rng = np.random.default_rng(1)
    for _ in range(3):
        fitness = rng.standard_normal(8)
        fused.ask()
        plain.ask()
        assert fused.tell(fitness).gradient_norm == plain.tell(fitness).gradient_norm
        _assert_same(_state(fused), _state(plain))
    assert {k: v.dtype for k, v in fused.params.items()} == {k: v.dtype for k, v in params.items()}


def test_the_old_mean_stays_valid_for_its_population() -> None:
    es = _strategy()
    es.ask()
    es.tell(np.arange(8.0))
    population = es.ask()
    old = {key: np.array(value) for key, value in population.base.items()}
    members = [np.array(member.params()["w"]) for member in population]
    es.tell(np.arange(8.0)[::-1])
    for key, value in population.base.items():
        np.testing.assert_array_equal(value, old[key])
        assert not np.shares_memory(value, es.params[key])
    for member, before in zip(population, members, strict=True):
        np.testing.assert_array_equal(member.params()["w"], before)


def test_a_mean_whose_squares_overflow_is_bounded_leaf_by_leaf() -> None:
    # One norm per dtype checks the new mean; the float32 one overflows in its squares (the
    # mean is finite), so each float32 leaf's max |mean| is read back instead.
    params = {"w": np.full((4, 3), 1e30, np.float32), "b": np.ones(3, np.float32)}
    es = eo.Eggroll(
        {**params, "d": np.ones(3), "e": np.ones(2)}, popsize=8, sigma=0.1, learning_rate=0.01
    )
    for _ in range(2):
        es.ask()
        assert math.isfinite(es.tell(np.arange(8.0)).gradient_norm)
    peaks = es._param_peaks
    assert peaks["w"] == float(np.abs(es.params["w"]).max()) and 1e29 < peaks["w"] < 1e31
    assert peaks["b"] == float(np.abs(es.params["b"]).max())
    # The float64 leaves share their dtype's norm: a bound on each one's max |mean|.
    both = np.concatenate([es.params["d"], es.params["e"]])
    assert peaks["d"] == peaks["e"] == float(np.linalg.norm(both))


def test_split_exponent_is_exact_and_leaves_normal_weights_alone() -> None:
    weights = np.array([0.5, -0.25, 3.0])
    assert split_exponent(weights)[1] == 0 and split_exponent(weights)[0] is weights
    huge = np.array([1.7e308, -1.7e308, 1.0])
    unit, exponent = split_exponent(huge)
    assert np.abs(unit).max() < 1
    np.testing.assert_array_equal(np.ldexp(unit, exponent), huge)


def test_leaf_norm_does_not_overflow() -> None:
    values = np.full(4, 1e300)
    assert leaf_norm(np, values) == pytest.approx(2e300)
    assert leaf_norm(np, np.full(3, np.float32(1e30))) == pytest.approx(math.sqrt(3) * 1e30)


def test_params_are_read_only_views_that_cannot_move_the_mean() -> None:
    es = _strategy()
    with pytest.raises(ValueError, match="read-only"):
        es.params["w"][:] = 5
    assert not np.any(es.params["w"])
    editable = np.array(es.params["w"])
    editable[:] = 5
    assert not np.any(es.params["w"])


def test_a_frozen_leaf_handed_to_a_fitness_cannot_be_edited() -> None:
    es = _strategy(noise_kinds={"b": "frozen"})
    member = es.ask()[0]
    with pytest.raises(ValueError, match="read-only"):
        member.params()["b"][:] = 1
    assert not np.any(es.params["b"])


_MAGNITUDES = st.sampled_from([0.0, 1e-300, 1e-30, 1.0, 1e10, 1e20, 1e39, 1e155, 1e300, 1.7e308])
_SPECIAL = st.sampled_from([np.nan, np.inf, -np.inf])


@st.composite
def _fitness(draw: st.DrawFn, size: int) -> np.ndarray:
    values = []
    for _ in range(size):
        if draw(st.integers(0, 9)) == 0:
            values.append(draw(_SPECIAL))
        else:
            sign = draw(st.sampled_from([-1.0, 1.0]))
            values.append(sign * draw(_MAGNITUDES) * draw(st.floats(0.5, 1.0)))
    if draw(st.booleans()):  # ties
        values[1] = values[0]
    fitness = np.array(values)
    if np.isnan(fitness).all():
        fitness[0] = 0.0
    dtype = draw(st.sampled_from(["float64", "float32", "list", "int64"]))
    if dtype == "list":
        return fitness.tolist()  # type: ignore[return-value]
    if dtype == "int64":
        return (
            np.nan_to_num(fitness, posinf=2**62, neginf=-(2**62))
            .clip(-(2**62), 2**62)
            .astype(np.int64)
        )
    with np.errstate(over="ignore"):
        return fitness.astype(dtype)


_SHAPINGS = ["centered_rank", "zscore", "raw", shaping.group_zscore(2)]


def _fuzz_tell(data: st.DataObject) -> None:
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    es = _strategy(
        dtype,
        data.draw(st.sampled_from(["adam", "sgd", "momentum"])),
        fitness_shaping=data.draw(st.sampled_from(_SHAPINGS)),
        maximize=data.draw(st.booleans()),
        sigma_adaptation=data.draw(st.sampled_from([None, "auto"])),
        learning_rate=data.draw(st.sampled_from([0.01, 1.0])),
    )
    for _ in range(2):
        es.ask()
        before = _state(es)
        try:
            stats = es.tell(data.draw(_fitness(8)))
        except NonFiniteStepError as error:
            assert "`fitness` gives a non-finite" in str(error)
            _assert_same(_state(es), before)
            continue
        assert math.isfinite(stats.gradient_norm)
        for key, value in _state(es).items():
            assert np.isfinite(value).all(), key


@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(st.data())
def test_fuzzed_tell_never_commits_a_non_finite_state(data: st.DataObject) -> None:
    _fuzz_tell(data)


@pytest.mark.slow
@pytest.mark.filterwarnings("error::RuntimeWarning")
@settings(
    max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
@given(st.data())
def test_fuzzed_tell_never_commits_a_non_finite_state_long(data: st.DataObject) -> None:
    _fuzz_tell(data)
