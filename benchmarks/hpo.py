"""HPO benchmark: Optuna samplers on five search spaces, best value found within a trial budget.

What is measured. Each (problem, sampler, seed) is one Optuna study run for the problem's
largest budget (in-memory storage, one process); every trial's state, value and wall time since
the start are recorded, and the time spent inside the sampler (its entry points, as
``benchmarks.optuna_overhead.SamplerClock`` counts them). The report gives, per problem and
budget, the best objective value among the COMPLETE trials of the first ``budget`` trials
(median and min-max over seeds), the wall time per run and the sampler's milliseconds per
trial. Problems:

* ``svc-digits`` (minimize): ``1 -`` the 3-fold stratified cross-validated accuracy of
  scikit-learn's ``SVC`` on a fixed subsample of 600 of the 1797 ``load_digits`` images
  (pixels / 16): ``C`` log-uniform in [1e-3, 1e3], ``gamma`` log-uniform in [1e-5, 1],
  ``kernel`` in {rbf, sigmoid, poly}, ``degree`` an int in [2, 5] (always suggested, used by
  ``poly`` only). The subsample keeps a trial near 50 ms on two cores.
* ``int-sphere30`` (minimize, optimum 0): ``sum((k_i - 7)**2)`` over 30 ints in [-20, 20].
* ``onemax120`` (maximize, optimum 120): the number of ones among 120 binary categoricals.
* ``maxcut-g1`` (maximize, best known 11624): MaxCut on the G-set graph G1 (800 nodes), the
  problem and encodings of ``benchmarks.maxcut``.
* ``mixed`` (minimize, optimum 0): 20 parameters (6 floats, 4 log floats, 4 ints, 1 log int,
  3 stepped floats, 1 categorical with 4 choices, 1 float ``dropout``); the value is a sum of
  shifted squares and absolute differences that is 0 at known targets. A trial with
  ``dropout > 0.9`` raises ``ValueError`` (a FAIL trial; ``study.optimize`` catches it) and a
  trial with ``x0 < -3`` reports its value and raises ``optuna.TrialPruned`` (a PRUNED trial).
  Neither counts as a result.

Samplers: ``eggroll`` (``EggrollSampler(seed=s)``: its defaults, step sizes adapted),
``eggroll-fixed`` (``EggrollSampler(seed=s, sigma_adaptation=None, optimizer="adam",
learning_rate=0.05)``: fixed step sizes, the sampler's previous default), ``tpe``
(``TPESampler(seed=s)``), ``cmaes`` (``CmaEsSampler(seed=s, warn_independent_sampling=False)``,
full covariance), ``random`` (``RandomSampler(seed=s)``); ``sepcmaes`` (separable CMA-ES) on
request. Optuna's CMA-ES does not search categoricals (``with_margin`` covers integer and
stepped parameters only): on ``svc-digits`` and ``mixed`` its categorical is sampled
independently at random, and on the binary problems (``onemax120``, ``maxcut-g1``) CMA-ES gets
the bits as floats, ``suggest_float(name, 0, 1)`` read as ``value >= 0.5``.

Budgets: 200 and 1000 trials, plus 1500 for ``int-sphere30`` and 5000 for ``maxcut-g1``; seeds
0 to 4. MaxCut is the expensive problem (800 parameters: 30 to 50 ms of Optuna bookkeeping per
trial), so its plan (``plan_for``, ``MAXCUT_SEEDS``) keeps the whole run near 85 minutes on two
cores (the seeds column of the report shows it): ``eggroll`` and ``random`` run 5000 trials
for the first 3 seeds, ``tpe`` 1000 trials for the first 3 seeds (its time per trial grows
with the history: 250 to 310 s per 1000-trial run here), ``eggroll-fixed`` 5000 trials for the
first seed, and full-covariance ``cmaes`` is stopped after ``MAXCUT_CMAES_SECONDS`` for the
first seed (Optuna pickles the 800 x 800 covariance into the storage with every trial: 44
trials in 240 s here). An explicit ``--seeds`` runs every seed it names for every
sampler, e.g. ``--problems maxcut-g1 --samplers tpe --seeds 1,2`` adds two TPE seeds.

Output: ``DIR/runs/<problem>-<sampler>-seed<k>.json`` as each run finishes (an existing file is
not run again, so a stopped benchmark resumes), then ``DIR/hpo.json`` (every history and the
summary), ``DIR/hpo.md`` (one table per problem) and ``DIR/hpo.png`` (median best-so-far
against trials, one panel per problem; skipped without matplotlib).

Run ``python -m benchmarks.hpo --out DIR [--problems svc-digits,mixed] [--samplers eggroll,tpe]
[--seeds 0,1,2,3,4] [--max-seconds S]``; ``--report`` rebuilds the report from every run in
``DIR/runs`` (so does every run, whichever problems it ran);
``--quick`` is a smoke run (tiny budgets, one seed, four problems; well under a minute).
The full default run took about 85 minutes on two cores shared with another benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ._measure import command_line, describe, machine
from .maxcut import load_runs

PROBLEMS = ("svc-digits", "int-sphere30", "onemax120", "maxcut-g1", "mixed")
SAMPLERS = ("eggroll", "eggroll-fixed", "tpe", "cmaes", "random")
EXTRA_SAMPLERS = ("sepcmaes",)
FLOAT_BITS = ("cmaes", "sepcmaes")  # samplers that get binary choices as floats in [0, 1]
SEEDS = (0, 1, 2, 3, 4)
QUICK_PROBLEMS = ("svc-digits", "int-sphere30", "onemax120", "mixed")
QUICK_BUDGETS = (10, 30)
MAXCUT_TPE_TRIALS = 1000
MAXCUT_CMAES_SECONDS = 240.0
MAXCUT_SEEDS = {"eggroll": 3, "random": 3, "tpe": 3, "eggroll-fixed": 1, "cmaes": 1}
SVC_IMAGES = 600
Direction = Literal["minimize", "maximize"]
STATE_CODES = {"COMPLETE": "C", "FAIL": "F", "PRUNED": "P"}


# -- problems ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One search space and objective.

    Attributes:
        name: the problem's name on the command line.
        direction: ``"minimize"`` or ``"maximize"``.
        optimum: the best possible (or best known) value; None if unknown.
        budgets: trial counts at which the best value is reported.
        summary: one line for the report.
        make_objective: sampler name -> the objective (the encoding may depend on the sampler).
    """

    name: str
    direction: Direction
    optimum: float | None
    budgets: tuple[int, ...]
    summary: str
    make_objective: Callable[[str], Callable[[Any], float]]


def _svc_objective(sampler: str) -> Callable[[Any], float]:
    """1 - 3-fold CV accuracy of an SVC on a fixed subsample of the digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.svm import SVC

    images, labels = load_digits(return_X_y=True)
    keep = np.random.default_rng(0).permutation(len(labels))[:SVC_IMAGES]
    images, labels = images[keep] / 16.0, labels[keep]
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)

    def objective(trial: Any) -> float:
        model = SVC(
            C=trial.suggest_float("C", 1e-3, 1e3, log=True),
            gamma=trial.suggest_float("gamma", 1e-5, 1.0, log=True),
            kernel=trial.suggest_categorical("kernel", ["rbf", "sigmoid", "poly"]),
            degree=trial.suggest_int("degree", 2, 5),
        )
        return 1.0 - float(cross_val_score(model, images, labels, cv=folds).mean())

    return objective


def _int_sphere_objective(sampler: str) -> Callable[[Any], float]:
    names = [f"k{i:02d}" for i in range(30)]

    def objective(trial: Any) -> float:
        return float(sum((trial.suggest_int(name, -20, 20) - 7) ** 2 for name in names))

    return objective


def _bits(trial: Any, names: Sequence[str], as_floats: bool) -> list[int]:
    """One bit per name: a categorical in {0, 1}, or a float in [0, 1] read as ``>= 0.5``."""
    if as_floats:
        return [int(trial.suggest_float(name, 0.0, 1.0) >= 0.5) for name in names]
    return [int(trial.suggest_categorical(name, [0, 1])) for name in names]


def _onemax_objective(sampler: str) -> Callable[[Any], float]:
    names = [f"b{i:03d}" for i in range(120)]
    as_floats = sampler in FLOAT_BITS

    def objective(trial: Any) -> float:
        return float(sum(_bits(trial, names, as_floats)))

    return objective


def _maxcut_objective(sampler: str) -> Callable[[Any], float]:
    from .maxcut import g1_problem, objective_for

    return objective_for("cmaes" if sampler in FLOAT_BITS else sampler, g1_problem())


# mixed: targets of every term (the optimum, value 0)
MIXED_FLOATS = (1.3, -2.1, 0.4, 3.2, -0.7, 2.5)  # in [-5, 5]
MIXED_LOGS = (1e-3, 3e-5, 0.02, 1e-4)  # in [1e-6, 1]
MIXED_INTS = (17, 3, 42, 25)  # in [0, 50]
MIXED_LOG_INT = 32  # in [1, 1024], log
MIXED_STEPS = (7, 13, 2)  # grid index of floats in [0, 2] with step 0.1
MIXED_CHOICES = ("adam", "sgd", "rmsprop", "adagrad")
MIXED_CHOICE = "rmsprop"
MIXED_DROPOUT = 0.3  # in [0, 1]; above MIXED_FAIL_ABOVE the trial fails
MIXED_FAIL_ABOVE = 0.9
MIXED_PRUNE_BELOW = -3.0  # x0 below this: pruned


def _mixed_objective(sampler: str) -> Callable[[Any], float]:
    import optuna

    def objective(trial: Any) -> float:
        value = 0.0
        x0 = 0.0
        for i, target in enumerate(MIXED_FLOATS):
            x = trial.suggest_float(f"x{i}", -5.0, 5.0)
            x0 = x if i == 0 else x0
            value += (x - target) ** 2 / 10
        for i, target in enumerate(MIXED_LOGS):
            rate = trial.suggest_float(f"lr{i}", 1e-6, 1.0, log=True)
            value += (math.log10(rate) - math.log10(target)) ** 2 / 4
        for i, target in enumerate(MIXED_INTS):
            value += abs(trial.suggest_int(f"n{i}", 0, 50) - target) / 10
        width = trial.suggest_int("width", 1, 1024, log=True)
        value += (math.log2(width) - math.log2(MIXED_LOG_INT)) ** 2 / 10
        for i, target in enumerate(MIXED_STEPS):
            index = round(trial.suggest_float(f"s{i}", 0.0, 2.0, step=0.1) / 0.1)
            value += abs(index - target) / 10
        value += trial.suggest_categorical("optimizer", list(MIXED_CHOICES)) != MIXED_CHOICE
        dropout = trial.suggest_float("dropout", 0.0, 1.0)
        value += 4 * (dropout - MIXED_DROPOUT) ** 2
        if dropout > MIXED_FAIL_ABOVE:
            raise ValueError("training diverged (dropout > 0.9)")
        trial.report(value, step=0)
        if x0 < MIXED_PRUNE_BELOW:
            raise optuna.TrialPruned()
        return value

    return objective


def problems(quick: bool = False) -> dict[str, Problem]:
    """Every problem by name; ``quick`` replaces the budgets with :data:`QUICK_BUDGETS`."""
    table = [
        Problem(
            "svc-digits",
            "minimize",
            None,
            (200, 1000),
            f"1 - 3-fold CV accuracy of SVC on {SVC_IMAGES} digits images (4 parameters)",
            _svc_objective,
        ),
        Problem(
            "int-sphere30",
            "minimize",
            0.0,
            (200, 1000, 1500),
            "sum((k_i - 7)^2) over 30 ints in [-20, 20]",
            _int_sphere_objective,
        ),
        Problem(
            "onemax120",
            "maximize",
            120.0,
            (200, 1000),
            "number of ones among 120 binary choices",
            _onemax_objective,
        ),
        Problem(
            "maxcut-g1",
            "maximize",
            11624.0,
            (200, 1000, 5000),
            "MaxCut on G-set G1, 800 binary choices (best known cut 11624)",
            _maxcut_objective,
        ),
        Problem(
            "mixed",
            "minimize",
            0.0,
            (200, 1000),
            "20 mixed parameters, sum of shifted squares and absolute differences; "
            "dropout > 0.9 fails, x0 < -3 is pruned",
            _mixed_objective,
        ),
    ]
    if quick:
        table = [
            Problem(p.name, p.direction, p.optimum, QUICK_BUDGETS, p.summary, p.make_objective)
            for p in table
        ]
    return {problem.name: problem for problem in table}


# -- samplers and the plan -----------------------------------------------------------------------


def make_sampler(name: str, seed: int) -> Any:
    """The Optuna sampler called ``name``, seeded (``benchmarks.maxcut``'s, plus eggroll-fixed)."""
    from .maxcut import SAMPLERS as MAXCUT_SAMPLERS
    from .maxcut import make_sampler as maxcut_sampler

    if name == "eggroll-fixed":
        from eggroll_opt.integrations.optuna import EggrollSampler

        return EggrollSampler(
            seed=seed, sigma_adaptation=None, optimizer="adam", learning_rate=0.05
        )
    if name in MAXCUT_SAMPLERS:
        return maxcut_sampler(name, seed)
    raise ValueError(f"`sampler` must be one of {SAMPLERS + EXTRA_SAMPLERS}, got {name!r}.")


@dataclass(frozen=True)
class Plan:
    """How one (problem, sampler) is run: trials per run, optional wall-time cap, seeds kept.

    ``seeds=None`` runs every default seed; an int keeps the first that many (an explicit
    ``--seeds`` runs all of its seeds); ``note`` says why a plan differs from the problem's
    default.
    """

    trials: int
    max_seconds: float | None = None
    seeds: int | None = None
    note: str = ""


def plan_for(problem: Problem, sampler: str, quick: bool = False) -> Plan:
    """The default plan: the problem's largest budget, except TPE and CMA-ES on MaxCut."""
    trials = max(problem.budgets)
    if problem.name != "maxcut-g1" or quick:
        return Plan(trials)
    seeds = MAXCUT_SEEDS.get(sampler)
    if sampler == "tpe":
        return Plan(
            MAXCUT_TPE_TRIALS,
            seeds=seeds,
            note=f"capped at {MAXCUT_TPE_TRIALS} trials (time per trial grows with the history)",
        )
    if sampler == "cmaes":
        return Plan(
            trials,
            max_seconds=MAXCUT_CMAES_SECONDS,
            seeds=seeds,
            note=f"full covariance, stopped after {MAXCUT_CMAES_SECONDS:.0f} s",
        )
    return Plan(trials, seeds=seeds)


# -- one run -------------------------------------------------------------------------------------


def run_one(
    problem: Problem, sampler_name: str, seed: int, plan: Plan, log_every: int = 250
) -> dict[str, Any]:
    """One study of ``plan.trials`` trials (or until ``plan.max_seconds``), every trial recorded.

    Returns:
        The run: ``states`` (one letter per trial: C complete, F fail, P pruned), ``values``
        (the objective value of complete trials, else None), ``best`` (best complete value so
        far, None before the first), ``seconds`` (wall time since the start at each trial's
        end) and ``sampler_ms`` (time inside the sampler during each trial).
    """
    import optuna

    from .optuna_overhead import SamplerClock

    # ERROR, not WARNING: Optuna logs every caught failure (``mixed``) with its traceback.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    objective = problem.make_objective(sampler_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-argument warnings of CmaEsSampler
        sampler = make_sampler(sampler_name, seed)
    clock = SamplerClock(sampler)
    study = optuna.create_study(direction=problem.direction, sampler=sampler)
    states: list[str] = []
    values: list[float | None] = []
    seconds: list[float] = []
    sampler_ms: list[float] = []
    last_clock = 0.0
    start = time.perf_counter()

    def record(study: Any, trial: Any) -> None:
        nonlocal last_clock
        state = trial.state.name
        states.append(STATE_CODES.get(state, "?"))
        values.append(float(trial.value) if state == "COMPLETE" else None)
        seconds.append(time.perf_counter() - start)
        sampler_ms.append((clock.seconds - last_clock) * 1e3)
        last_clock = clock.seconds
        if len(states) % log_every == 0:
            best = best_so_far(values, problem.direction)[-1]
            print(
                f"  {problem.name} {sampler_name} seed {seed}: {len(states)} trials, best {best}, "
                f"{seconds[-1]:.0f} s",
                flush=True,
            )
        if plan.max_seconds is not None and seconds[-1] > plan.max_seconds:
            study.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=plan.trials, callbacks=[record], catch=(ValueError,))
    return {
        "problem": problem.name,
        "sampler": sampler_name,
        "seed": seed,
        "direction": problem.direction,
        "trials_asked": plan.trials,
        "trials": len(states),
        "stopped_by_time": len(states) < plan.trials,
        "states": "".join(states),
        "values": values,
        "best": best_so_far(values, problem.direction),
        "seconds": seconds,
        "sampler_ms": sampler_ms,
        "note": plan.note,
    }


def source_fingerprint() -> str:
    """A short hash of the library's and the Optuna integration's source files.

    Runs saved at different times can then be told apart when the code changed in between.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder in ("eggroll_opt", "integrations"):
        for directory, subfolders, files in sorted(os.walk(os.path.join(root, folder))):
            subfolders.sort()
            for name in sorted(files):
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    digest.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as file:
                        digest.update(file.read())
    return digest.hexdigest()[:12]


def best_so_far(values: Sequence[float | None], direction: str) -> list[float | None]:
    """The best value among the first ``i + 1`` entries for every ``i`` (None: no value yet)."""
    better = min if direction == "minimize" else max
    best: float | None = None
    out: list[float | None] = []
    for value in values:
        if value is not None and not math.isnan(value):
            best = value if best is None else better(best, value)
        out.append(best)
    return out


def best_at(run: dict[str, Any], budget: int) -> float | None:
    """The best complete value within the first ``budget`` trials; None if not reached or none."""
    if run["trials"] < budget:
        return None
    return run["best"][budget - 1]


# -- report --------------------------------------------------------------------------------------


def _number(value: float) -> str:
    """Whole numbers in full (cut sizes), others to four significant digits."""
    if float(value).is_integer() and abs(value) < 1e9:
        return f"{value:.0f}"
    return f"{value:.4g}"


def _spread(cell: dict[str, Any]) -> str:
    """``median (min-max)`` of one budget's cell, just the value for a single seed."""
    if cell["seeds"] == 1:
        return _number(cell["median"])
    return f"{_number(cell['median'])} ({_number(cell['min'])}-{_number(cell['max'])})"


def summarize(runs: list[dict[str, Any]], table: dict[str, Problem]) -> list[dict[str, Any]]:
    """One row per (problem, sampler): best at each budget over seeds, wall time, overhead."""
    rows = []
    order = SAMPLERS + EXTRA_SAMPLERS
    for problem in table.values():
        mine = [run for run in runs if run["problem"] == problem.name]
        for sampler in sorted({run["sampler"] for run in mine}, key=_order_key(order)):
            these = sorted((r for r in mine if r["sampler"] == sampler), key=lambda r: r["seed"])
            budgets: dict[str, Any] = {}
            for budget in problem.budgets:
                reached = [run for run in these if best_at(run, budget) is not None]
                best = [run["best"][budget - 1] for run in reached]
                budgets[str(budget)] = {
                    "seeds": len(best),
                    "median": statistics.median(best) if best else None,
                    "min": min(best) if best else None,
                    "max": max(best) if best else None,
                    "wall_s": (
                        statistics.median(run["seconds"][budget - 1] for run in reached)
                        if reached
                        else None
                    ),
                }
            counts = {code: sum(r["states"].count(code) for r in these) for code in "CFP"}
            total = sum(counts.values()) or 1
            rows.append(
                {
                    "problem": problem.name,
                    "sampler": sampler,
                    "seeds": [r["seed"] for r in these],
                    "trials": [r["trials"] for r in these],
                    "budgets": budgets,
                    "wall_s": statistics.median(
                        r["seconds"][-1] if r["seconds"] else 0.0 for r in these
                    ),
                    "sampler_ms": statistics.median(
                        float(np.mean(r["sampler_ms"])) if r["sampler_ms"] else 0.0 for r in these
                    ),
                    "failed": counts["F"] / total,
                    "pruned": counts["P"] / total,
                    "stopped_by_time": any(r["stopped_by_time"] for r in these),
                    "last_best": [r["best"][-1] if r["best"] else None for r in these],
                    "note": plan_for(problem, sampler, all(r.get("quick") for r in these)).note,
                }
            )
    return rows


def _order_key(order: Sequence[str]) -> Callable[[str], tuple[int, str]]:
    def key(name: str) -> tuple[int, str]:
        return (order.index(name) if name in order else len(order), name)

    return key


def markdown(rows: list[dict[str, Any]], table: dict[str, Problem], info: dict[str, Any]) -> str:
    """One table per problem: sampler x budget, median (min-max) over seeds, wall time."""
    lines = [
        "# HPO benchmark: Optuna samplers",
        "",
        "Best objective value among the COMPLETE trials within each budget: median over seeds,",
        "(min-max) in brackets. `wall s/run`: median wall time of a whole run; `sampler ms`:",
        "median over runs of the mean time per trial inside the sampler. Measured on "
        + describe(info)
        + ".",
    ]
    for problem in table.values():
        mine = [row for row in rows if row["problem"] == problem.name]
        if not mine:
            continue
        optimum = "" if problem.optimum is None else f", optimum {problem.optimum:g}"
        lines += ["", f"## {problem.name} ({problem.direction}{optimum})", "", problem.summary]
        lines.append("")
        show_states = any(row["failed"] or row["pruned"] for row in mine)  # share of all trials
        header = ["sampler", "seeds"] + [f"best @{b}" for b in problem.budgets]
        header += ["wall s/run (trials)", "sampler ms/trial"]
        if show_states:
            header += ["failed", "pruned"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|---|---:|" + "---:|" * (len(header) - 2))
        notes = []
        for row in mine:
            cells = [row["sampler"], str(len(row["seeds"]))]
            for budget in problem.budgets:
                cell = row["budgets"][str(budget)]
                if cell["median"] is None:
                    cells.append("not run" if max(row["trials"]) < budget else "none")
                    continue
                text = _spread(cell)
                if cell["seeds"] < len(row["seeds"]):
                    text += f" [{cell['seeds']} seeds]"
                cells.append(text)
            trials = sorted(set(row["trials"]))
            trials_text = "/".join(str(t) for t in trials)
            wall = row["wall_s"]
            cells.append(
                f"{wall:.0f} ({trials_text})" if wall >= 10 else f"{wall:.2g} ({trials_text})"
            )
            overhead = row["sampler_ms"]
            cells.append(f"{overhead:.0f}" if overhead >= 100 else f"{overhead:.3g}")
            if show_states:
                cells += [f"{100 * row['failed']:.1f}%", f"{100 * row['pruned']:.1f}%"]
            lines.append("| " + " | ".join(cells) + " |")
            if row["note"] or row["stopped_by_time"]:
                note = (
                    f"* {row['sampler']}: {row['note']}" if row["note"] else f"* {row['sampler']}"
                )
                if row["stopped_by_time"]:
                    reached = ", ".join(
                        f"{t} trials (best {b:.6g})" if b is not None else f"{t} trials"
                        for t, b in zip(row["trials"], row["last_best"], strict=True)
                    )
                    note += f"; stopped by time at {reached}"
                notes.append(note)
        if notes:
            lines += ["", *notes]
        if problem.name == "int-sphere30":
            lines += ["", *_sphere_ratio(mine, max(problem.budgets))]
    return "\n".join(lines)


def _sphere_ratio(rows: list[dict[str, Any]], budget: int) -> list[str]:
    """The random-to-sampler ratio of median best values at ``budget`` (target: >= 10x)."""
    by_name = {row["sampler"]: row["budgets"][str(budget)]["median"] for row in rows}
    random = by_name.get("random")
    if random is None:
        return []
    out = [f"Median best of random search at {budget} trials over each sampler's (target: >= 10x):"]
    for name, value in by_name.items():
        if name == "random" or value is None:
            continue
        ratio = "optimum 0 reached" if value == 0 else f"{random / value:.1f}x"
        out.append(f"* random / {name}: {ratio}")
    return out


def plot(runs: list[dict[str, Any]], table: dict[str, Problem], path: str) -> bool:
    """Median best-so-far against trials, one panel per problem; False without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in table.values() if any(r["problem"] == p.name for r in runs)]
    if not shown:
        return False
    columns = min(3, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.8 * rows), squeeze=False)
    order = SAMPLERS + EXTRA_SAMPLERS
    for panel, problem in zip(axes.flat, shown, strict=False):
        mine = [r for r in runs if r["problem"] == problem.name]
        lowest = math.inf
        for sampler in sorted({r["sampler"] for r in mine}, key=_order_key(order)):
            these = [r for r in mine if r["sampler"] == sampler and r["trials"]]
            if not these:
                continue
            length = max(r["trials"] for r in these)
            curves = np.full((len(these), length), np.nan)
            for i, run in enumerate(these):
                curves[i, : run["trials"]] = [np.nan if b is None else b for b in run["best"]]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
                median = np.nanmedian(curves, axis=0)
            if not np.all(np.isnan(median)):
                lowest = min(lowest, float(np.nanmin(median)))
            panel.plot(np.arange(1, length + 1), median, label=f"{sampler} ({len(these)})")
        panel.set_xscale("log")
        if problem.direction == "minimize" and lowest > 0:
            panel.set_yscale("log")
        elif problem.direction == "minimize" and lowest == 0:  # reached the optimum 0
            panel.set_yscale("symlog", linthresh=1.0)
            panel.set_ylim(bottom=0.0)
        panel.set_title(f"{problem.name} ({problem.direction})", fontsize=10)
        panel.set_xlabel("trials")
        panel.set_ylabel("best so far (median over seeds)")
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    for panel in list(axes.flat)[len(shown) :]:
        panel.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def report(folder: str, table: dict[str, Problem], command: str) -> str:
    """Write hpo.json, hpo.md and hpo.png from the runs in ``folder``; return the markdown."""
    runs = [run for run in load_runs(folder) if run["problem"] in table]
    info = runs[0]["machine"] if runs and "machine" in runs[0] else machine()
    rows = summarize(runs, table)
    text = markdown(rows, table, info)
    sources = Counter(run.get("source", "unknown") for run in runs)
    if len(sources) > 1:
        listed = ", ".join(f"{key} ({count} runs)" for key, count in sorted(sources.items()))
        text += (
            "\n\nWarning: these runs come from different versions of the library source "
            f"(fingerprints {listed}); see `source` in each run."
        )
    with open(os.path.join(folder, "hpo.md"), "w") as file:
        file.write(text + "\n")
    document = {
        "command": command,
        "machine": info,
        "problems": {
            p.name: {
                "direction": p.direction,
                "optimum": p.optimum,
                "budgets": list(p.budgets),
                "summary": p.summary,
            }
            for p in table.values()
            if any(run["problem"] == p.name for run in runs)
        },
        "summary": rows,
        "runs": runs,
    }
    with open(os.path.join(folder, "hpo.json"), "w") as file:
        json.dump(document, file)
    plot(runs, table, os.path.join(folder, "hpo.png"))
    return text


# -- command line --------------------------------------------------------------------------------


def _names(
    text: str, known: Sequence[str], what: str, parser: argparse.ArgumentParser
) -> list[str]:
    names = [name for name in text.split(",") if name]
    for name in names:
        if name not in known:
            parser.error(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Run every requested (problem, sampler, seed) not saved yet, then write the report."""
    parser = command_line("python -m benchmarks.hpo", __doc__)
    parser.add_argument("--out", default="hpo-results", help="results folder")
    parser.add_argument("--problems", help=f"comma list (default {','.join(PROBLEMS)})")
    parser.add_argument("--samplers", help=f"comma list (default {','.join(SAMPLERS)})")
    parser.add_argument("--seeds", help="comma list of seeds (default 0,1,2,3,4)")
    parser.add_argument("--max-seconds", type=float, help="stop every run after this wall time")
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    parser.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    args = parser.parse_args(argv)
    if args.report and not args.quick:
        saved = load_runs(args.out)
        args.quick = bool(saved) and all(run.get("quick") for run in saved)
    table = problems(quick=args.quick)
    default_problems = QUICK_PROBLEMS if args.quick else PROBLEMS
    chosen = _names(args.problems or ",".join(default_problems), PROBLEMS, "problem", parser)
    samplers = _names(
        args.samplers or ",".join(SAMPLERS), SAMPLERS + EXTRA_SAMPLERS, "sampler", parser
    )
    try:
        seeds = [
            int(s)
            for s in (args.seeds or ("0" if args.quick else ",".join(map(str, SEEDS)))).split(",")
        ]
    except ValueError:
        parser.error("--seeds must be a comma list of integers")
    table = {name: table[name] for name in chosen}
    command = "python -m benchmarks.hpo " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    if not args.report:
        # Import the sampler now, so that the code that runs is the code fingerprinted here.
        import eggroll_opt.integrations.optuna  # noqa: F401

        source = source_fingerprint()
        for problem in table.values():
            for sampler in samplers:
                plan = plan_for(problem, sampler, quick=args.quick)
                if args.max_seconds is not None:
                    cap = min(args.max_seconds, plan.max_seconds or math.inf)
                    plan = Plan(plan.trials, cap, plan.seeds, plan.note)
                for seed in seeds if args.seeds else seeds[: plan.seeds]:
                    path = os.path.join(
                        args.out, "runs", f"{problem.name}-{sampler}-seed{seed}.json"
                    )
                    if os.path.exists(path):
                        continue
                    print(f"{problem.name} {sampler} seed {seed}: {plan.trials} trials", flush=True)
                    run = run_one(problem, sampler, seed, plan)
                    run["machine"] = machine()
                    run["source"] = source
                    run["quick"] = args.quick
                    run["command"] = command
                    with open(path + ".tmp", "w") as file:
                        json.dump(run, file)
                    os.replace(path + ".tmp", path)
                    print(
                        f"  done: {run['trials']} trials, best {run['best'][-1]}, "
                        f"{run['seconds'][-1]:.0f} s",
                        flush=True,
                    )
    # The report covers every problem saved in the folder, not only the ones run now.
    print(report(args.out, problems(quick=args.quick), command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
