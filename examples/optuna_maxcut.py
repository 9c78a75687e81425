"""Combinatorial search with Optuna: MaxCut on the G-set graph G1 with EggrollSampler.

G1 has 800 nodes and 19,176 edges (best-known cut 11,624); the graph and the cut function come
from the PyPI package ``ioh`` (graph problem 2000). Every node is one categorical parameter with
choices ``[0, 1]`` (its side of the cut); EggrollSampler searches the 800 x 2 matrix of logits
and each trial is one member of its population. The script prints the best cut as it goes,
the mean cut of the first and the last generation, and with ``--plot FILE`` draws the best cut
so far against trials (beside random search with ``--compare``).

Run ``python examples/optuna_maxcut.py --help`` for the options; ``--quick`` takes seconds.
``python -m benchmarks.maxcut`` is the full comparison with TPE, CMA-ES and random search.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import numpy as np
import optuna
from eggroll_opt.integrations.optuna import MEMBER_ATTR, EggrollSampler

BEST_KNOWN = 11624


def g1() -> Any:
    """ioh's MaxCut problem on G1: call it with a list of 800 bits, it returns the cut."""
    import ioh

    return ioh.get_problem(2000, instance=1, dimension=800, problem_class=ioh.ProblemClass.GRAPH)


def run(sampler: optuna.samplers.BaseSampler, trials: int) -> optuna.Study:
    """One maximizing study of ``trials`` trials on G1."""
    problem = g1()
    names = [f"node{i:03d}" for i in range(800)]

    def objective(trial: optuna.Trial) -> float:
        return float(problem([trial.suggest_categorical(name, [0, 1]) for name in names]))

    study = optuna.create_study(direction="maximize", sampler=sampler)
    step = max(trials // 10, 1)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if (trial.number + 1) % step == 0:
            print(f"  trial {trial.number + 1:5d}: best cut {study.best_value:.0f}", flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(objective, n_trials=trials, callbacks=[report])
    return study


def generation_means(study: optuna.Study) -> list[float]:
    """Mean cut of each complete generation of EggrollSampler's members."""
    by_generation: dict[int, list[float]] = {}
    for trial in study.trials:
        attr = trial.system_attrs.get(MEMBER_ATTR)
        if attr is not None and trial.value is not None:
            by_generation.setdefault(attr[1], []).append(trial.value)
    sizes = [len(values) for values in by_generation.values()]
    full = max(sizes)
    return [statistics.fmean(v) for _, v in sorted(by_generation.items()) if len(v) == full]


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the search; return the best cut, the generations' mean cuts and the mean's cut."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=2000, help="trials (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--popsize", type=int, help="trials per generation (default: automatic)")
    parser.add_argument(
        "--learning-rate", type=float, help="EggrollSampler's (default: the sampler's own)"
    )
    parser.add_argument("--compare", action="store_true", help="also run random search")
    parser.add_argument("--plot", help="save the convergence plot to this PNG file")
    parser.add_argument("--quick", action="store_true", help="160 trials, popsize 8 (for CI)")
    args = parser.parse_args(argv)
    if args.quick:  # short generations show learning within seconds
        args.trials, args.popsize = 160, 8
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    studies = {}
    print(f"EggrollSampler, {args.trials} trials on G1:")
    start = time.perf_counter()
    sampler = EggrollSampler(seed=args.seed, popsize=args.popsize, learning_rate=args.learning_rate)
    studies["EggrollSampler"] = study = run(sampler, args.trials)
    seconds = time.perf_counter() - start
    means = generation_means(study)
    mean_bits = sampler.mean_params(study)  # the strategy's current mean, decoded
    result = {
        "best": float(study.best_value),
        "first_generation_mean": means[0],
        "last_generation_mean": means[-1],
        "mean_cut": float(g1()([mean_bits[f"node{i:03d}"] for i in range(800)])),
        "seconds": seconds,
    }
    print(
        f"best cut {result['best']:.0f} ({100 * result['best'] / BEST_KNOWN:.1f}% of the "
        f"best known {BEST_KNOWN}); mean cut per generation {means[0]:.0f} -> {means[-1]:.0f} "
        f"over {len(means)} generations; cut of the strategy's mean {result['mean_cut']:.0f}; "
        f"{seconds:.0f} s"
    )
    if args.compare:
        print(f"RandomSampler, {args.trials} trials on G1:")
        studies["RandomSampler"] = random_study = run(
            optuna.samplers.RandomSampler(seed=args.seed), args.trials
        )
        result["random_best"] = float(random_study.best_value)
        print(f"random search: best cut {result['random_best']:.0f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(7, 4.5))
        for name, s in studies.items():
            values = np.maximum.accumulate([t.value for t in s.trials])
            axes.plot(np.arange(1, len(values) + 1), values, label=name)
        axes.set_xlabel("trials")
        axes.set_ylabel("best cut so far")
        axes.set_title(f"MaxCut G1 (best known {BEST_KNOWN})")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        figure.savefig(args.plot, dpi=120)
        print(f"plot saved to {args.plot}")
    return result


if __name__ == "__main__":
    main()
