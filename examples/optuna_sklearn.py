"""Hyperparameter search with Optuna: an SVC on scikit-learn's digits, three samplers side by side.

The search space mixes every kind of parameter EggrollSampler encodes: ``C`` and ``gamma`` (log
floats), ``kernel`` (a categorical), ``degree`` (an integer), ``coef0`` (a stepped float) and
``class_weight`` (a categorical with ``None`` as a choice). The objective is the 3-fold
cross-validated accuracy on a training split (maximized); the best parameters of each study
are then scored once on the held-out test split.

For each sampler (EggrollSampler, TPE, random) and seed the script prints the best
cross-validated accuracy, the mean accuracy of the first and the last block of trials (one
block = one EggrollSampler generation), and the test accuracy of the best parameters.
Run ``python examples/optuna_sklearn.py --help`` for the options; ``--quick`` takes seconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import optuna
from eggroll_opt.integrations.optuna import EggrollSampler, default_popsize
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.svm import SVC


def make_objective(x: np.ndarray, y: np.ndarray, folds: int) -> Any:
    """The cross-validated accuracy of an SVC with the trial's hyperparameters."""

    def objective(trial: optuna.Trial) -> float:
        model = SVC(
            C=trial.suggest_float("C", 1e-3, 1e3, log=True),
            gamma=trial.suggest_float("gamma", 1e-6, 1e0, log=True),
            kernel=trial.suggest_categorical("kernel", ["rbf", "poly", "sigmoid"]),
            degree=trial.suggest_int("degree", 1, 5),
            coef0=trial.suggest_float("coef0", -1.0, 1.0, step=0.25),
            class_weight=trial.suggest_categorical("class_weight", [None, "balanced"]),
        )
        return float(cross_val_score(model, x, y, cv=folds).mean())

    return objective


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "eggroll":
        return EggrollSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run every sampler and seed; return the mean results per sampler."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=120, help="trials per study (120)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (0,1,2)")
    parser.add_argument("--samplers", default="eggroll,tpe,random", help="comma list")
    parser.add_argument("--samples", type=int, default=0, help="use only N digits (0: all)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.seeds, args.samplers, args.samples = 64, "0", "eggroll", 500
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    x, y = load_digits(return_X_y=True)
    if args.samples:
        x, y = x[: args.samples], y[: args.samples]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    objective = make_objective(x_train, y_train, folds=2 if args.quick else 3)
    # One block = one EggrollSampler generation: its default population for 4 numbers, 3 + 2 logits.
    block = default_popsize(4 + 3 + 2)

    results: dict[str, dict[str, float]] = {}
    for name in args.samplers.split(","):
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            study = optuna.create_study(direction="maximize", sampler=make_sampler(name, seed))
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. convergence warnings of bad models
                study.optimize(objective, n_trials=args.trials)
            seconds = time.perf_counter() - start
            values = [t.value for t in study.trials[1:]]  # trial 0 is random for every sampler
            blocks = len(values) // block
            model = SVC(**study.best_params).fit(x_train, y_train)
            row = {
                "best": study.best_value,
                "first_generation_mean": statistics.fmean(values[:block]),
                "last_generation_mean": statistics.fmean(
                    values[(blocks - 1) * block : blocks * block]
                ),
                "test_accuracy": float(model.score(x_test, y_test)),
                "seconds": seconds,
            }
            rows.append(row)
            print(
                f"{name:>8} seed {seed}: best cv accuracy {row['best']:.4f}, mean of first "
                f"{block} trials {row['first_generation_mean']:.3f} -> last {block} "
                f"{row['last_generation_mean']:.3f}, test accuracy {row['test_accuracy']:.4f}, "
                f"{seconds:.0f} s",
                flush=True,
            )
        results[name] = {key: statistics.fmean(r[key] for r in rows) for key in rows[0]}
        results[name]["best_sd"] = (
            statistics.stdev(r["best"] for r in rows) if len(rows) > 1 else 0.0
        )
    print("\n| sampler | trials | seeds | best cv accuracy | last block mean | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {args.trials} | {len(args.seeds.split(','))} | {r['best']:.4f} ± "
            f"{r['best_sd']:.4f} | {r['last_generation_mean']:.3f} | {r['test_accuracy']:.4f} |"
        )
    return results


if __name__ == "__main__":
    main()
