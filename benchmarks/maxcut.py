"""MaxCut on the G-set graph G1 through Optuna: EggrollSampler beside TPE, CMA-ES and random.

G1 has 800 nodes and 19,176 unit-weight edges; its best-known cut is 11,624. The graph and the
cut function come from the PyPI package ``ioh`` (graph problem 2000, instance 1). A trial
chooses a side for every node and scores the cut (maximized):

* ``eggroll``, ``eggroll-lowrank``, ``eggroll-sgd``, ``tpe``, ``random``: one
  ``suggest_categorical`` with choices ``[0, 1]`` per node (``eggroll`` is
  ``EggrollSampler()`` with its defaults, ``eggroll-lowrank`` adds ``rank=1``,
  ``eggroll-sgd`` uses ``optimizer="sgd", learning_rate=0.16``);
* ``cmaes`` (Optuna's default, full covariance) and ``sepcmaes`` (``use_separable_cma=True``):
  "bits as floats", one ``suggest_float`` in [0, 1] per node, side = value >= 0.5.

Every run records each trial's cut and the wall time since the start, in
``OUT/runs/<sampler>-seed<k>.json``; the report gives the best cut found within 1000 and within
5000 trials (mean, standard deviation, min-max over seeds) and the wall time, and draws the
convergence plot ``OUT/maxcut_g1.png`` (best cut so far against trials, mean over seeds, band
from min to max). A run stopped by ``--max-seconds`` is reported at the budgets it reached.

Run ``python -m benchmarks.maxcut --out DIR [--samplers eggroll,tpe] [--seeds 0,1,2]
[--trials 5000] [--max-seconds S]``; ``--report`` only rebuilds the report from ``DIR/runs``;
``--quick`` is a seconds-long smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ._measure import machine

BEST_KNOWN = 11624
NODES = 800
BUDGETS = (1000, 5000)
SAMPLERS = ("eggroll", "eggroll-lowrank", "eggroll-sgd", "tpe", "cmaes", "sepcmaes", "random")


def g1_problem() -> Callable[[list[int]], float]:
    """The ioh MaxCut problem on G1 (maximized; takes a list of 800 bits)."""
    import ioh

    problem = ioh.get_problem(
        2000, instance=1, dimension=NODES, problem_class=ioh.ProblemClass.GRAPH
    )
    return problem


def make_sampler(name: str, seed: int) -> Any:
    """The Optuna sampler called ``name``, seeded."""
    import optuna
    from eggroll_opt.integrations.optuna import EggrollSampler

    if name == "eggroll":
        return EggrollSampler(seed=seed)
    if name == "eggroll-lowrank":
        return EggrollSampler(seed=seed, rank=1)
    if name == "eggroll-sgd":
        return EggrollSampler(seed=seed, optimizer="sgd", learning_rate=0.16)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "sepcmaes":
        return optuna.samplers.CmaEsSampler(
            seed=seed, use_separable_cma=True, warn_independent_sampling=False
        )
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {name!r}.")


def objective_for(name: str, problem: Callable[[list[int]], float]) -> Callable[[Any], float]:
    """The Optuna objective: categorical bits, or floats thresholded at 0.5 for CMA-ES."""
    names = [f"x{i:03d}" for i in range(NODES)]
    if name in ("cmaes", "sepcmaes"):

        def objective(trial: Any) -> float:
            return float(problem([int(trial.suggest_float(n, 0.0, 1.0) >= 0.5) for n in names]))

    else:

        def objective(trial: Any) -> float:
            return float(problem([trial.suggest_categorical(n, [0, 1]) for n in names]))

    return objective


def run_one(
    name: str, seed: int, trials: int, max_seconds: float | None, log_every: int = 500
) -> dict[str, Any]:
    """One study of ``trials`` trials (or until ``max_seconds``); every trial's cut and time."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    problem = g1_problem()
    objective = objective_for(name, problem)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed))
    values: list[float] = []
    seconds: list[float] = []
    start = time.perf_counter()

    def record(study: Any, trial: Any) -> None:
        values.append(float(trial.value))
        seconds.append(time.perf_counter() - start)
        if len(values) % log_every == 0:
            print(
                f"  {name} seed {seed}: {len(values)} trials, best {max(values):.0f}, "
                f"{seconds[-1]:.0f} s",
                flush=True,
            )
        if max_seconds is not None and seconds[-1] > max_seconds:
            study.stop()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=trials, callbacks=[record])
    return {
        "sampler": name,
        "seed": seed,
        "trials_asked": trials,
        "trials": len(values),
        "stopped_by_time": len(values) < trials,
        "values": values,
        "seconds": seconds,
    }


def summarize(runs: list[dict[str, Any]], budgets: tuple[int, ...] = BUDGETS) -> list[dict]:
    """One row per (sampler, budget) reached by at least one run."""
    rows = []
    for name in SAMPLERS:
        mine = [run for run in runs if run["sampler"] == name]
        for budget in budgets:
            reached = [run for run in mine if run["trials"] >= budget]
            if not reached:
                continue
            best = np.array([max(run["values"][:budget]) for run in reached])
            wall = np.array([run["seconds"][budget - 1] for run in reached])
            rows.append(
                {
                    "sampler": name,
                    "trials": budget,
                    "seeds": len(reached),
                    "mean": float(best.mean()),
                    "std": float(best.std(ddof=1)) if len(best) > 1 else 0.0,
                    "min": float(best.min()),
                    "max": float(best.max()),
                    "wall_s": float(wall.mean()),
                }
            )
        partial = [run for run in mine if run["trials"] < max(budgets)]
        for run in partial:
            if run["trials"] and run["trials"] not in budgets:
                rows.append(
                    {
                        "sampler": name,
                        "trials": run["trials"],
                        "seeds": 1,
                        "mean": max(run["values"]),
                        "std": 0.0,
                        "min": max(run["values"]),
                        "max": max(run["values"]),
                        "wall_s": run["seconds"][-1],
                        "note": f"seed {run['seed']} stopped by time",
                    }
                )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The result table (best cut found within the budget)."""
    lines = [
        "| sampler | trials | seeds | best cut, mean ± sd | min-max | % of 11624 | wall s/run |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        note = f" ({row['note']})" if "note" in row else ""
        lines.append(
            f"| {row['sampler']}{note} | {row['trials']} | {row['seeds']} | "
            f"{row['mean']:.0f} ± {row['std']:.0f} | {row['min']:.0f}-{row['max']:.0f} | "
            f"{100 * row['mean'] / BEST_KNOWN:.1f} | {row['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: str) -> None:
    """Best cut so far against trials: mean over seeds, band from min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in SAMPLERS:
        mine = [run for run in runs if run["sampler"] == name and run["trials"]]
        if not mine:
            continue
        length = min(run["trials"] for run in mine)
        curves = np.array([np.maximum.accumulate(run["values"][:length]) for run in mine])
        x = np.arange(1, length + 1)
        (line,) = axes.plot(x, curves.mean(axis=0), label=f"{name} ({len(mine)} seeds)")
        axes.fill_between(
            x, curves.min(axis=0), curves.max(axis=0), alpha=0.2, color=line.get_color()
        )
    axes.set_xscale("log")
    axes.set_xlabel("trials")
    axes.set_ylabel("best cut so far")
    axes.set_title(f"MaxCut G1 (800 nodes, best known {BEST_KNOWN})")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def load_runs(folder: str) -> list[dict[str, Any]]:
    """Every run saved under ``folder/runs`` (one JSON file each), in file-name order."""
    runs_dir = os.path.join(folder, "runs")
    if not os.path.isdir(runs_dir):
        return []
    runs = []
    for name in sorted(os.listdir(runs_dir)):
        if name.endswith(".json"):
            with open(os.path.join(runs_dir, name)) as file:
                runs.append(json.load(file))
    return runs


def report(folder: str, budgets: tuple[int, ...] = BUDGETS) -> str:
    """Rebuild the table and the plot from the runs saved in ``folder``."""
    runs = load_runs(folder)
    text = markdown(summarize(runs, budgets))
    with open(os.path.join(folder, "maxcut.md"), "w") as file:
        file.write(text + "\n")
    if runs:
        plot(runs, os.path.join(folder, "maxcut_g1.png"))
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the requested studies, save each run, print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="maxcut-results", help="results folder")
    parser.add_argument("--samplers", default="eggroll,tpe,sepcmaes,random", help="comma list")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--trials", type=int, default=5000, help="trials per run")
    parser.add_argument("--max-seconds", type=float, help="stop a run after this wall time")
    parser.add_argument("--report", action="store_true", help="only rebuild the report")
    parser.add_argument("--quick", action="store_true", help="a smoke run of seconds")
    args = parser.parse_args(argv)
    budgets = BUDGETS
    if args.quick:
        args.samplers, args.seeds, args.trials, budgets = "eggroll,random", "0", 60, (30, 60)
    os.makedirs(os.path.join(args.out, "runs"), exist_ok=True)
    if not args.report:
        for name in args.samplers.split(","):
            if name not in SAMPLERS:
                parser.error(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
            for seed in (int(s) for s in args.seeds.split(",")):
                print(f"{name} seed {seed}: {args.trials} trials", flush=True)
                result = run_one(name, seed, args.trials, args.max_seconds)
                result["machine"] = machine()
                path = os.path.join(args.out, "runs", f"{name}-seed{seed}.json")
                with open(path, "w") as file:
                    json.dump(result, file)
    print(report(args.out, budgets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
