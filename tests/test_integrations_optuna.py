"""EggrollSampler: Optuna's own sampler conformance suites, the encoding, the storage contract,
threads, processes, restarts, failures, reproducibility, and the examples at their quick size."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

optuna = pytest.importorskip("optuna")

import eggroll_opt.integrations.optuna as integration  # noqa: E402
from eggroll_opt.integrations.optuna import (  # noqa: E402
    MEMBER_ATTR,
    SAMPLER_ATTR,
    EggrollSampler,
    _Encoding,
    _reflect,
    default_popsize,
)
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.testing.pytest_samplers import (  # noqa: E402
    BasicSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)
from optuna.trial import TrialState  # noqa: E402

from .conftest import make_backend  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
optuna.logging.set_verbosity(optuna.logging.WARNING)


# -- Optuna's conformance suites -----------------------------------------------------------------
def _factory(**options: Any):
    options.setdefault("warn_independent_sampling", False)
    return lambda: EggrollSampler(seed=0, **options)


class TestBasicConformance(BasicSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return _factory()


class TestRelativeConformance(RelativeSamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return _factory()


class TestRelativeConformanceSmallLowRank(RelativeSamplerTestCase):
    """Generations that complete inside the suite's few trials, low-rank categorical noise."""

    @pytest.fixture
    def sampler(self):
        return _factory(popsize=2, rank=1)


class TestSingleObjectiveOnly(SingleOnlySamplerTestCase):
    @pytest.fixture
    def sampler(self):
        return _factory()


# -- helpers -------------------------------------------------------------------------------------
def _members(study) -> dict[int, tuple[str, int, int]]:
    """{trial number: (run, generation, member)} for every member trial."""
    return {
        t.number: tuple(t.system_attrs[MEMBER_ATTR])
        for t in study.get_trials(deepcopy=False)
        if MEMBER_ATTR in t.system_attrs
    }


def _study_attrs(study) -> dict[str, Any]:
    return study._storage.get_study_system_attrs(study._study_id)


def _run_state(sampler: EggrollSampler, study):
    state = sampler._studies[(id(study._storage), study._study_id)]
    (run,) = [run for run in state.runs.values() if run.strategy is not None]
    return run


def _mixed_objective(trial) -> float:
    x = trial.suggest_float("x", -3.0, 3.0)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    n = trial.suggest_int("n", 0, 40)
    width = trial.suggest_int("width", 1, 512, log=True)
    step = trial.suggest_float("step", 0.0, 1.0, step=0.25)
    kind = trial.suggest_categorical("kind", ["a", "b", "c", "d", "e", "f", "g", "h"])
    return (
        (x - 1.0) ** 2
        + abs(math.log10(lr) + 3.0)
        + abs(n - 29) / 4
        + abs(math.log2(width) - 6)
        + abs(step - 0.75)
        + 2.0 * (kind != "f")
    )


def _study(sampler: EggrollSampler, **kwargs: Any):
    return optuna.create_study(sampler=sampler, **kwargs)


def _params(study) -> list[dict[str, Any]]:
    return [t.params for t in study.get_trials(deepcopy=False)]


# -- construction --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"popsize": 1}, ValueError, r"`popsize` must be at least 2, got 1"),
        ({"popsize": 8.0}, TypeError, r"`popsize` must be an int, got 8.0"),
        ({"sigma": 0.0}, ValueError, r"`sigma` must be finite and > 0, got 0.0"),
        ({"sigma": "big"}, TypeError, r"`sigma` must be a real number, got 'big'"),
        ({"learning_rate": -1.0}, ValueError, r"`learning_rate` must be finite and > 0"),
        ({"rank": 0}, ValueError, r"`rank` must be at least 1, got 0"),
        ({"optimizer": "lbfgs"}, ValueError, r"`optimizer` must be None or one of .*'lbfgs'"),
        ({"seed": -3}, ValueError, r"`seed` must be at least 0, got -3"),
        ({"seed": True}, TypeError, r"`seed` must be an int, got True"),
        ({"independent_sampler": "random"}, TypeError, r"`independent_sampler` must be"),
        ({"warn_independent_sampling": 1}, TypeError, r"`warn_independent_sampling` must be"),
        ({"backend": "gpu"}, ValueError, r"`backend` must be one of .* got 'gpu'"),
        ({"backend": None}, TypeError, r"`backend` must be 'numpy', 'cupy' or 'auto', got None"),
    ],
)
def test_bad_arguments_name_the_argument(options, error, match):
    with pytest.raises(error, match=match):
        EggrollSampler(**options)


def test_missing_optuna_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(integration, "_OPTUNA_ERROR", ImportError("No module named 'optuna'"))
    with pytest.raises(ImportError, match=r'pip install "eggroll_opt\[optuna\]"'):
        EggrollSampler()


def test_multi_objective_studies_are_refused_with_a_clear_message():
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=EggrollSampler())
    with pytest.raises(ValueError, match=r"single objective.*2 directions"):
        study.optimize(lambda t: (t.suggest_float("x", 0, 1), 0.0), n_trials=1)


def test_default_popsize_follows_the_dimension():
    assert default_popsize(1) == 8
    assert default_popsize(1600) == 4 + math.floor(3 * math.log(1600))
    study = _study(EggrollSampler(seed=0))
    study.optimize(_mixed_objective, n_trials=3)
    # 5 numbers + 8 logits = 13 searched numbers.
    assert _run_state(study.sampler, study).strategy.popsize == default_popsize(13)


def test_docstring_examples_run():
    result = doctest.testmod(integration, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2
    assert result.failed == 0


def test_pickled_sampler_keeps_working():
    sampler = EggrollSampler(seed=1, popsize=4)
    study = _study(sampler)
    study.optimize(_mixed_objective, n_trials=6)
    study.sampler = pickle.loads(pickle.dumps(sampler))
    study.optimize(_mixed_objective, n_trials=6)
    generations = [g for _, g, _ in _members(study).values()]
    assert generations == sorted(generations) and max(generations) == 2


# -- encoding ------------------------------------------------------------------------------------
def test_reflect_folds_every_number_into_the_unit_interval():
    x = np.array([-2.5, -1.0, -0.25, 0.0, 0.3, 1.0, 1.25, 2.0, 3.7, 10.1])
    np.testing.assert_allclose(_reflect(x), [0.5, 1.0, 0.25, 0.0, 0.3, 1.0, 0.75, 0.0, 0.3, 0.1])


SPACE = {
    "f": FloatDistribution(-1.0, 3.0),
    "flog": FloatDistribution(1e-7, 1.0, log=True),
    "fstep": FloatDistribution(-10.2, 10.2, step=0.1),
    "fstep2": FloatDistribution(0.0, 1.0, step=0.25),
    "i": IntDistribution(-10, 10),
    "istep": IntDistribution(3, 9, step=2),
    "ilog": IntDistribution(1, 100, log=True),
    "c3": CategoricalDistribution(["a", 1, None]),
    "c3b": CategoricalDistribution([True, False, 2.5]),
    "c2": CategoricalDistribution([0, 1]),
}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=7, max_size=7), st.integers(0, 2**31))
def test_every_decoded_value_lies_in_its_distribution(numbers, seed):
    encoding = _Encoding(SPACE)
    logits = {
        c: np.random.default_rng(seed).standard_normal((1, len(names), c))
        for c, (names, _) in encoding.groups.items()
    }
    (values,) = encoding.decode(np.array([numbers]), logits)
    assert set(values) == set(SPACE)
    for name, value in values.items():
        distribution = SPACE[name]
        assert distribution._contains(distribution.to_internal_repr(value)), (name, value)
        if isinstance(distribution, IntDistribution):
            assert type(value) is int
        elif isinstance(distribution, FloatDistribution):
            assert type(value) is float
        else:
            assert any(value is choice for choice in distribution.choices)


def test_integers_and_steps_get_equal_shares_of_the_unit_interval():
    encoding = _Encoding({"i": IntDistribution(-2, 2), "s": FloatDistribution(0, 1, step=0.5)})
    u = (np.arange(15000) + 0.5) / 15000
    (column_i, column_s) = np.array(
        [[v["i"], v["s"]] for v in encoding.decode(np.stack([u, u], axis=1), {})]
    ).T
    assert np.unique(column_i, return_counts=True)[1].tolist() == [3000] * 5
    assert np.unique(column_s, return_counts=True)[1].tolist() == [5000] * 3


def test_log_distributions_are_uniform_in_log_space():
    encoding = _Encoding(
        {"a": FloatDistribution(1e-4, 1.0, log=True), "b": IntDistribution(1, 1000, log=True)}
    )
    (middle,) = encoding.decode(np.array([[0.5, 0.5]]), {})
    assert middle["a"] == pytest.approx(1e-2)
    assert abs(middle["b"] - math.sqrt(0.5 * 1000.5)) <= 0.5


def test_categoricals_with_the_same_count_form_one_matrix_leaf():
    def objective(trial):
        colours = [trial.suggest_categorical(f"c{i}", ["r", "g", "b", "y"]) for i in range(30)]
        bits = [trial.suggest_categorical(f"b{i}", [0, 1]) for i in range(5)]
        return colours.count("g") + sum(bits)

    kinds = {}
    for rank in (None, 1, 3):
        study = _study(EggrollSampler(seed=0, rank=rank))
        study.optimize(objective, n_trials=2)
        run = _run_state(study.sampler, study)
        kinds[rank] = run.strategy.noise_kinds
        assert run.strategy.params["categorical"]["choices4"].shape == (30, 4)
        assert run.strategy.params["categorical"]["choices2"].shape == (5, 2)
    assert kinds[None] == {"categorical/choices2": "full", "categorical/choices4": "full"}
    assert kinds[1] == {"categorical/choices2": "lowrank", "categorical/choices4": "lowrank"}
    assert kinds[3] == {"categorical/choices2": "full", "categorical/choices4": "lowrank"}


# -- it optimizes what it is given ---------------------------------------------------------------
class _CountingSampler(optuna.samplers.RandomSampler):
    def __init__(self) -> None:
        super().__init__(seed=0)
        self.calls: list[tuple[int, str]] = []

    def sample_independent(self, study, trial, param_name, param_distribution):
        self.calls.append((trial.number, param_name))
        return super().sample_independent(study, trial, param_name, param_distribution)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_floats_integers_and_choices_are_optimized_by_the_strategy(seed):
    independent = _CountingSampler()
    sampler = EggrollSampler(seed=seed, independent_sampler=independent)
    study = _study(sampler)
    study.optimize(_mixed_objective, n_trials=401)
    # Only the first trial (no search space yet) used the independent sampler.
    assert {number for number, _ in independent.calls} == {0}
    assert len(_members(study)) == 400
    random_study = _study(optuna.samplers.RandomSampler(seed=seed))
    random_study.optimize(_mixed_objective, n_trials=401)
    best = study.best_params
    assert study.best_value < 1.5 < random_study.best_value
    assert best["kind"] == "f" and abs(best["n"] - 29) <= 3 and 16 <= best["width"] <= 256
    # The population itself moved to better regions: 40 generations of 10 members.
    values = np.array([t.value for t in study.trials[1:]]).reshape(40, 10)
    assert values[-5:].mean() < values[:5].mean() - 1.0


def _conditional(trial) -> float:
    y = trial.suggest_float("y", -1.0, 1.0)
    if trial.suggest_categorical("kind", ["a", "b"]) == "a":
        return y**2 + trial.suggest_float("xa", 0.0, 1.0)
    return y**2 + trial.suggest_int("xb", 0, 3)


def _integer_sphere(trial) -> float:
    return sum((trial.suggest_int(f"k{i}", -20, 20) - 7) ** 2 for i in range(30))


def test_adapted_steps_keep_improving_on_an_integer_sphere():
    # With a fixed σ the sampler stalled near a best of 900 here (random search: about 2,500).
    adaptive = _study(EggrollSampler(seed=0))
    adaptive.optimize(_integer_sphere, n_trials=800)
    fixed = _study(
        EggrollSampler(seed=0, sigma_adaptation=None, optimizer="adam", learning_rate=0.05)
    )
    fixed.optimize(_integer_sphere, n_trials=800)
    random_search = _study(optuna.samplers.RandomSampler(seed=0))
    random_search.optimize(_integer_sphere, n_trials=800)
    assert adaptive.best_value * 10 < random_search.best_value
    assert adaptive.best_value * 10 < fixed.best_value
    run = _run_state(adaptive.sampler, adaptive)
    assert run.strategy is not None and run.strategy.sigmas["numeric"] < 0.2


@pytest.mark.parametrize("warn", [True, False])
def test_parameters_outside_the_space_warn_once_each(warn):
    study = _study(EggrollSampler(seed=0, popsize=4, warn_independent_sampling=warn))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study.optimize(_conditional, n_trials=40)
    messages = [str(w.message) for w in caught if "independent sampler" in str(w.message)]
    kinds = {t.params["kind"] for t in study.trials}
    assert kinds == {"a", "b"}
    if warn:
        assert sorted(m.split("`")[1] for m in messages) == ["xa", "xb"]
    else:
        assert messages == []
    # y and kind stay in the relative space: members of the strategy.
    assert len(_members(study)) == 39


def test_maximize_flips_the_direction_exactly():
    minimized = _study(EggrollSampler(seed=4, popsize=6))
    minimized.optimize(_mixed_objective, n_trials=40)
    maximized = _study(EggrollSampler(seed=4, popsize=6), direction="maximize")
    maximized.optimize(lambda t: -_mixed_objective(t), n_trials=40)
    assert _params(minimized) == _params(maximized)


def test_low_rank_categorical_noise_learns():
    target = [i % 3 for i in range(40)]

    def mismatches(trial):
        return sum(
            trial.suggest_categorical(f"c{i:02d}", [0, 1, 2]) != t for i, t in enumerate(target)
        )

    study = _study(EggrollSampler(seed=0, rank=1, popsize=12))
    study.optimize(mismatches, n_trials=1 + 12 * 30)
    values = np.array([t.value for t in study.trials[1:]]).reshape(30, 12)
    assert _run_state(study.sampler, study).strategy.noise_kinds == {
        "categorical/choices3": "lowrank"
    }
    assert values[-5:].mean() < values[:5].mean() - 6


# -- the state lives in the storage --------------------------------------------------------------
def test_storage_holds_only_small_json_attributes():
    study = _study(EggrollSampler(seed=5, popsize=4))
    study.optimize(_mixed_objective, n_trials=21)
    stored = _study_attrs(study)[SAMPLER_ATTR]
    assert stored["seed"] == 5 and stored["config"]["popsize"] == 4
    members = _members(study)
    assert sorted(members) == list(range(1, 21))
    (run,) = {run for run, _, _ in members.values()}
    # Sequential trials fill the slots in order, one generation after the other.
    assert [(g, m) for _, g, m in members.values()] == [(k // 4, k % 4) for k in range(20)]
    for trial in study.trials:
        size = len(json.dumps(trial.system_attrs))
        assert size < 80, trial.system_attrs
    assert isinstance(run, str) and len(run) == 16


def test_a_sampler_with_another_configuration_warns_and_runs_apart():
    study = _study(EggrollSampler(seed=1, popsize=4))
    study.optimize(_mixed_objective, n_trials=6)
    study.sampler = EggrollSampler(seed=1, popsize=6)
    with pytest.warns(UserWarning, match=r"starts its own run"):
        study.optimize(_mixed_objective, n_trials=3)
    runs = [run for run, _, _ in _members(study).values()]
    assert len(set(runs[:5])) == 1 and len(set(runs[5:])) == 1 and runs[0] != runs[5]
    assert [g for _, g, _ in list(_members(study).values())[5:]] == [0, 0, 0]


def test_failed_and_pruned_members_rank_worst_and_never_stall():
    def objective(trial):
        value = _mixed_objective(trial)
        if trial.number % 4 == 1:
            raise RuntimeError("this member fails")
        if trial.number % 4 == 2:
            raise optuna.TrialPruned()
        return value

    study = _study(EggrollSampler(seed=0, popsize=4))
    study.optimize(objective, n_trials=42, catch=(RuntimeError,))
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 11 and states.count(TrialState.PRUNED) == 10
    # Trials 1..40 filled generations 0..9 in order; trial 41 opened generation 10.
    assert [g for _, g, _ in _members(study).values()] == [k // 4 for k in range(41)]
    assert _run_state(study.sampler, study).generation == 10


def test_a_generation_where_every_member_failed_is_told_without_information():
    calls = {"n": 0}

    def objective(trial):
        calls["n"] += 1
        value = _mixed_objective(trial)
        if calls["n"] > 1:
            raise RuntimeError("broken")
        return value

    study = _study(EggrollSampler(seed=0, popsize=4))
    study.optimize(objective, n_trials=14, catch=(RuntimeError,))
    assert _run_state(study.sampler, study).generation == 3


def test_the_first_finished_duplicate_counts():
    """Slot 0 has two trials with the same candidate; the one that finished first counts."""

    def generation_one(slot_zero: list[float]) -> dict[str, Any]:
        study = _study(EggrollSampler(seed=2, popsize=4))
        study.optimize(_mixed_objective, n_trials=1)
        asked = [study.ask() for _ in range(4 + len(slot_zero) - 1)]
        for trial in asked:
            _mixed_objective(trial)
        by_slot: dict[int, list] = {}
        for trial in asked:
            by_slot.setdefault(
                trial.storage.get_trial(trial._trial_id).system_attrs[MEMBER_ATTR][2], []
            ).append(trial)
        assert sorted(by_slot) == [0, 1, 2, 3] and len(by_slot[0]) == len(slot_zero)
        assert len({json.dumps(t.params, sort_keys=True) for t in by_slot[0]}) == 1
        for value, trial in zip(slot_zero, reversed(by_slot[0]), strict=True):
            study.tell(trial, value)  # the duplicate (asked last) finishes first
        for member in (1, 2, 3):
            study.tell(by_slot[member][0], float(member))
        nxt = study.ask()
        _mixed_objective(nxt)
        assert nxt.storage.get_trial(nxt._trial_id).system_attrs[MEMBER_ATTR][1:] == [1, 0]
        return nxt.params

    reference = generation_one([0.5])
    assert generation_one([0.5, 100.0]) == reference
    assert generation_one([100.0]) != reference


def test_an_abandoned_running_trial_never_blocks_its_generation():
    study = _study(EggrollSampler(seed=3, popsize=4))
    study.optimize(_mixed_objective, n_trials=1)
    abandoned = study.ask()
    _mixed_objective(abandoned)  # takes slot (0, 0), is never told
    study.optimize(_mixed_objective, n_trials=16)
    members = _members(study)
    assert members[abandoned.number][1:] == (0, 0)
    duplicates = [
        n for n, (_, g, m) in members.items() if (g, m) == (0, 0) and n != abandoned.number
    ]
    assert duplicates and study.trials[duplicates[0]].params == abandoned.params
    assert _run_state(study.sampler, study).generation >= 3


def _two_processes(first_seconds: float):
    """Two studies with samplers of their own on one storage, as two processes would have.

    The first trial takes ``first_seconds``: trials hold their slots alone for four times the
    median duration, so this sets how long the samplers wait for each other.
    """
    storage = optuna.storages.InMemoryStorage()
    one = optuna.create_study(
        storage=storage, study_name="s", sampler=EggrollSampler(seed=3, popsize=4)
    )

    def slow(trial) -> float:
        time.sleep(first_seconds)
        return _mixed_objective(trial)

    one.optimize(slow, n_trials=1)
    two = optuna.load_study(
        study_name="s", storage=storage, sampler=EggrollSampler(seed=3, popsize=4)
    )
    return one, two


def _slot(trial) -> list[int]:
    """[generation, member] of an asked trial whose parameters were sampled."""
    return trial.storage.get_trial(trial._trial_id).system_attrs[MEMBER_ATTR][1:]


def test_a_trial_waits_for_slots_held_by_another_process():
    one, two = _two_processes(first_seconds=0.25)  # they hold their slots for 1 s
    held = [one.ask() for _ in range(4)]
    values = [_mixed_objective(trial) for trial in held]
    assert [_slot(trial) for trial in held] == [[0, member] for member in range(4)]
    finish = threading.Timer(
        0.3, lambda: [one.tell(*told) for told in zip(held, values, strict=True)]
    )
    start = time.perf_counter()
    finish.start()
    waiting = two.ask()
    _mixed_objective(waiting)
    elapsed = time.perf_counter() - start
    finish.join()
    # Not a second trial of a running member: the first member of the next generation.
    assert _slot(waiting) == [1, 0]
    assert elapsed >= 0.3


def test_a_slot_whose_trial_never_finishes_is_asked_again_after_a_grace():
    one, two = _two_processes(first_seconds=0.15)
    held = [one.ask() for _ in range(4)]
    values = [_mixed_objective(trial) for trial in held]
    time.sleep(0.15)  # every trial takes 0.15 s: a slot is held alone for 0.6 s
    for trial, value in zip(held[1:], values[1:], strict=True):
        one.tell(trial, value)  # held[0] never finishes, as if its process died
    start = time.perf_counter()
    again = two.ask()
    _mixed_objective(again)
    elapsed = time.perf_counter() - start
    assert _slot(again) == [0, 0] and again.params == held[0].params
    assert 0.3 < elapsed < 10.0  # held[0] was 0.15 s old: about 0.45 s of waiting
    one.tell(again, values[0])
    nxt = two.ask()
    _mixed_objective(nxt)
    assert _slot(nxt) == [1, 0]


def test_trials_asked_at_once_take_distinct_slots_in_asking_order():
    one, two = _two_processes(first_seconds=0.2)
    first = one.ask()  # asked; its parameters are not sampled yet
    second = two.ask()
    _mixed_objective(second)  # samples first, and leaves the lowest slot to the earlier trial
    _mixed_objective(first)
    assert [_slot(first), _slot(second)] == [[0, 0], [0, 1]]


def test_enqueued_trials_with_fixed_values_are_not_members():
    study = _study(EggrollSampler(seed=0, popsize=4))
    study.optimize(_mixed_objective, n_trials=5)
    study.enqueue_trial({"x": 0.0, "kind": "a"})
    study.optimize(_mixed_objective, n_trials=1)
    enqueued = study.trials[-1]
    assert enqueued.params["x"] == 0.0 and enqueued.params["kind"] == "a"
    assert MEMBER_ATTR not in enqueued.system_attrs
    study.optimize(_mixed_objective, n_trials=1)
    assert study.trials[-1].system_attrs[MEMBER_ATTR][1:] == [1, 0]


def test_a_changed_search_space_starts_a_new_run():
    def objective(trial, high):
        return trial.suggest_float("x", 0.0, high) + trial.suggest_int("n", 0, 5)

    study = _study(EggrollSampler(seed=0, popsize=4, warn_independent_sampling=False))
    study.optimize(lambda t: objective(t, 1.0), n_trials=7)
    (first,) = {run for run, _, _ in _members(study).values()}
    # Trial 7 still sees the old space; once it completes, x (new range) leaves the space.
    study.optimize(lambda t: objective(t, 2.0), n_trials=5)
    runs = [study.trials[n].system_attrs[MEMBER_ATTR][0] for n in range(7, 12)]
    assert runs[0] == first
    assert len(set(runs[1:])) == 1 and runs[1] != first
    assert [study.trials[n].system_attrs[MEMBER_ATTR][1:] for n in range(8, 12)] == [
        [0, 0],
        [0, 1],
        [0, 2],
        [0, 3],
    ]


# -- backends ------------------------------------------------------------------------------------
def _same_trials(study, reference) -> None:
    """The same parameters trial by trial: floats to rounding (GPU arithmetic rounds otherwise),
    integers and choices exactly."""
    for actual, expected in zip(_params(study), _params(reference), strict=True):
        assert actual.keys() == expected.keys()
        for name, value in expected.items():
            if isinstance(value, float):
                assert actual[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
            else:
                assert actual[name] == value, name


@pytest.mark.parametrize("backend", ["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def test_the_strategy_runs_on_the_chosen_backend_with_host_candidates(backend):
    """``backend="cupy"``: the strategy's arrays are CuPy arrays, Optuna gets host values (the
    same trials as with NumPy), and the device is read once per generation, not per trial:
    with a fixed σ, one read-back of the candidates and one of tell's per generation (counted
    by the strict stand-in; on real CuPy the trials are checked). The step-size adaptation
    reads back more per generation (``eggroll_opt.adaptation``), but not per trial either."""
    if backend == "cupy":
        make_backend("cupy")  # skips without CuPy
    cupy = importlib.import_module("cupy") if backend == "cupy" else None
    audit = getattr(cupy, "_audit", None)
    syncs = {}
    for popsize in (4, 12):
        for adaptation in ("auto", None):
            options = {"seed": 3, "popsize": popsize, "sigma_adaptation": adaptation}
            study = _study(EggrollSampler(backend=backend, **options))
            study.optimize(_mixed_objective, n_trials=1)  # before a search space: no strategy
            if audit is not None:
                audit.reset()
            study.optimize(_mixed_objective, n_trials=5 * popsize + 1)  # 5 generations told
            if audit is not None:
                syncs[popsize, adaptation] = audit.syncs
            run = _run_state(study.sampler, study)
            assert run.strategy.backend == backend and run.generation == 5
            assert type(run.strategy.params["numeric"]).__module__.split(".")[0] == backend
            reference = _study(EggrollSampler(**options))
            reference.optimize(_mixed_objective, n_trials=2 + 5 * popsize)
            _same_trials(study, reference)
    # A trial with fixed values gets the mean for the rest; mean_params decodes it too.
    study.enqueue_trial({"x": 0.0})
    study.optimize(_mixed_objective, n_trials=1)
    mean = study.sampler.mean_params(study)
    assert {k: v for k, v in study.trials[-1].params.items() if k != "x"} == {
        k: v for k, v in mean.items() if k != "x"
    }
    if audit is not None:
        # One at the strategy's construction, generation 0's candidates, then per generation
        # tell's read-back and the next candidates'; the same for 4 and 12 trials a generation.
        assert syncs[4, None] == syncs[12, None] == 1 + 1 + 2 * 5
        assert syncs[4, "auto"] == syncs[12, "auto"]


# -- reproducibility, restarts, threads, processes -----------------------------------------------
def test_the_same_seed_gives_the_same_trials():
    runs = []
    for seed in (11, 11, 12):
        study = _study(EggrollSampler(seed=seed, popsize=6))
        study.optimize(_mixed_objective, n_trials=40)
        runs.append(_params(study))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_reseeding_moves_only_the_independent_sampler():
    plain = _study(EggrollSampler(seed=7, popsize=4))
    plain.optimize(_mixed_objective, n_trials=20)
    reseeded = _study(EggrollSampler(seed=7, popsize=4))
    reseeded.optimize(_mixed_objective, n_trials=1)
    reseeded.sampler.reseed_rng()
    reseeded.optimize(_mixed_objective, n_trials=19)
    assert _params(plain)[1:] == _params(reseeded)[1:]


@pytest.mark.parametrize(("seed", "sqlite"), [(9, True), (None, False)])
def test_a_restarted_process_continues_the_same_run(tmp_path, seed, sqlite):
    """A new sampler (as in a restarted process) on the same storage continues the run."""
    storage = f"sqlite:///{tmp_path / 'study.db'}" if sqlite else optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s", sampler=EggrollSampler(seed=seed))
    study.optimize(_mixed_objective, n_trials=19)  # stops mid-generation (popsize 11)
    abandoned = study.ask()
    _mixed_objective(abandoned)  # a crash mid-trial
    del study
    restarted = optuna.load_study(
        study_name="s", storage=storage, sampler=EggrollSampler(seed=seed)
    )
    restarted.optimize(_mixed_objective, n_trials=30)
    stored_seed = _study_attrs(restarted)[SAMPLER_ATTR]["seed"]
    if seed is not None:
        assert stored_seed == seed
    reference = _study(EggrollSampler(seed=stored_seed))
    reference.enqueue_trial(restarted.trials[0].params)  # the first trial is independent
    reference.optimize(_mixed_objective, n_trials=50)
    members = _members(restarted)
    assert len({run for run, _, _ in members.values()}) == 1
    ours = [t.params for t in restarted.trials if t.number != abandoned.number]
    theirs = _params(reference)
    # Same candidates in the same order, except that the restarted study re-asks the
    # abandoned slot once every other slot of its generation has a trial.
    slot = members[abandoned.number][1:]
    duplicate = next(n for n, m in members.items() if m[1:] == slot and n != abandoned.number)
    assert restarted.trials[duplicate].params == abandoned.params
    ours = [p for p in ours if p != abandoned.params]
    theirs = [p for p in theirs if p != abandoned.params]
    assert len(ours) == 48 and ours == theirs[:48]


def _audit_consistent(study, sampler: EggrollSampler) -> int:
    """Every member trial holds the candidate a fresh replay assigns to its slot."""
    expected = sampler._audit(study)
    members = _members(study)
    assert set(expected) == set(members)
    for number, params in expected.items():
        assert study.trials[number].params == params, number
    return len(members)


@pytest.mark.filterwarnings("ignore:EggrollSampler samples:UserWarning")  # racing first trials
def test_threads_share_one_sampler_consistently():
    def objective(trial):
        value = _mixed_objective(trial)
        np.random.default_rng(trial.number).random(2000).sort()  # a little work
        return value

    study = _study(EggrollSampler(seed=0, popsize=8))
    study.optimize(objective, n_trials=120, n_jobs=4)
    assert len(study.trials) == 120
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert _audit_consistent(study, EggrollSampler(seed=0, popsize=8)) >= 110
    generations = [g for _, g, _ in _members(study).values()]
    assert max(generations) >= 10
    # A thread waits for the others' trials rather than run one of their candidates again.
    assert _duplicate_fraction(study) < 0.05


def _duplicate_fraction(study) -> float:
    """The fraction of member trials that ran a (run, generation, member) slot again."""
    members = list(_members(study).values())
    return (len(members) - len(set(members))) / len(members)


def _share_sqlite_between_processes(tmp_path: Path, workers: int, trials: int) -> float:
    """Real worker processes, and one that dies mid-trial, share one SQLite study.

    Returns the fraction of member trials that ran a slot again (see `_duplicate_fraction`).
    """
    from tests._optuna_worker import objective, storage

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(storage=storage(url), study_name="shared")
    study.sampler = EggrollSampler(seed=0)
    study.optimize(objective, n_trials=2)  # the first trial completes: a search space exists
    script = str(ROOT / "tests" / "_optuna_worker.py")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    crashed = subprocess.run(
        [sys.executable, script, url, "shared", "-1", "0"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == 0, crashed.stderr.decode()
    processes = [
        subprocess.Popen(
            [sys.executable, script, url, "shared", str(trials), "0"],
            env=env,
            stderr=subprocess.PIPE,
        )
        for _ in range(workers)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr.decode()

    study = optuna.load_study(study_name="shared", storage=storage(url))
    trials_ = study.get_trials(deepcopy=False)
    states = [t.state for t in trials_]
    total = 2 + 1 + workers * trials
    assert len(trials_) == total  # no trial lost
    assert states.count(TrialState.COMPLETE) == total - 1 and states.count(TrialState.RUNNING) == 1
    # Every member trial holds the candidate of its (generation, member) slot in a replay.
    assert _audit_consistent(study, EggrollSampler(seed=0)) == total - 1
    members = _members(study)
    assert len({run for run, _, _ in members.values()}) == 1
    # Every generation before the last one has all its slots finished (the crashed trial's
    # slot by a duplicate), so generations kept completing.
    popsize = default_popsize(1 + 1 + 4)
    done: dict[int, set[int]] = {}
    for number, (_, g, m) in members.items():
        if study.trials[number].state == TrialState.COMPLETE:
            done.setdefault(g, set()).add(m)
    last = max(done)
    assert last >= (total - 1) // (2 * popsize)
    assert all(done[g] == set(range(popsize)) for g in range(last))
    (crashed_number,) = [t.number for t in trials_ if t.state == TrialState.RUNNING]
    slot = members[crashed_number][1:]
    assert slot[0] < last and slot[1] in done[slot[0]]
    return _duplicate_fraction(study)


def test_processes_share_one_sqlite_storage(tmp_path):
    _share_sqlite_between_processes(tmp_path, workers=2, trials=12)


def test_four_processes_seldom_run_a_candidate_twice(tmp_path):
    # Before waiting for running slots, 28% of the trials here re-ran a running candidate.
    assert _share_sqlite_between_processes(tmp_path, workers=4, trials=40) < 0.05


@pytest.mark.slow
def test_many_processes_share_one_sqlite_storage(tmp_path):
    assert _share_sqlite_between_processes(tmp_path, workers=4, trials=100) < 0.05


# -- examples and benchmarks at their quick size -------------------------------------------------
def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sklearn_example_improves_its_objective(capsys):
    pytest.importorskip("sklearn")
    results = _load(ROOT / "examples" / "optuna_sklearn.py").main(["--quick"])
    first, best = results["eggroll"]["first_generation_mean"], results["eggroll"]["best"]
    assert best > first + 0.02  # accuracy rose above the first generation's mean
    assert "eggroll" in capsys.readouterr().out


@pytest.mark.slow
def test_maxcut_example_improves_its_objective(tmp_path):
    pytest.importorskip("ioh")
    results = _load(ROOT / "examples" / "optuna_maxcut.py").main(["--quick"])
    assert results["last_generation_mean"] > results["first_generation_mean"] + 50
    assert results["mean_cut"] > results["first_generation_mean"] + 50


def test_overhead_benchmark_runs_quick(capsys):
    from benchmarks import optuna_overhead

    results = optuna_overhead.main(["--quick", "--parameters", "10"])
    assert {r["sampler"] for r in results} == {"eggroll", "tpe", "cmaes", "random"}
    assert all(len(r["windows"]) == 2 for r in results)
    assert "| 10 | eggroll |" in capsys.readouterr().out


@pytest.mark.slow
def test_maxcut_benchmark_runs_quick(tmp_path):
    pytest.importorskip("ioh")
    from benchmarks import maxcut

    assert maxcut.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "maxcut_g1.png").stat().st_size > 1000
    assert "| eggroll | 60 |" in (tmp_path / "maxcut.md").read_text()
