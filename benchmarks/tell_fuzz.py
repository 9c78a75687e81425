"""Random ``tell`` calls with extreme fitness: how many commit a non-finite mean.

Each case builds a small strategy (float32 or float64, Adam/SGD/momentum, learning rate 0.01 or
1, every shaping, minimize or maximize) and tells it up to two generations of fitness drawn from
magnitudes 0…1.7e308 with random signs, NaN/±inf mixed in and ties. It counts the cases that
commit a non-finite mean, report an infinite gradient norm, raise an error that does not say
what went wrong, or raise the clear ``NonFiniteStepError``.

    python -m benchmarks.tell_fuzz --cases 4000

To measure another version, put its checkout first on the import path:
``PYTHONPATH=/path/to/old-checkout python benchmarks/tell_fuzz.py``.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

import eggroll_opt as eo
from eggroll_opt import shaping

MAGNITUDES = [0.0, 1e-300, 1e-30, 1.0, 1e10, 1e20, 1e39, 1e155, 1e300, 1.7e308]
SHAPINGS: list[str | shaping.ShapingFunction] = [
    "centered_rank",
    "zscore",
    "raw",
    shaping.group_zscore(2),
]


def _fitness(rng: np.random.Generator) -> np.ndarray:
    values = []
    for _ in range(8):
        if rng.integers(10):
            magnitude = MAGNITUDES[rng.integers(len(MAGNITUDES))]
            values.append(rng.choice([-1.0, 1.0]) * magnitude * rng.uniform(0.5, 1.0))
        else:
            values.append([np.nan, np.inf, -np.inf][rng.integers(3)])
    fitness = np.array(values)
    if rng.integers(2):
        fitness[1] = fitness[0]  # a tie
    if np.isnan(fitness).all():
        fitness[0] = 0.0
    return fitness


def run(cases: int, seed: int = 0) -> dict[str, int]:
    """Counts of each outcome over ``cases`` random strategies."""
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(["non_finite_mean", "infinite_norm", "unclear_error", "clear_error"], 0)
    for _ in range(cases):
        dtype = [np.float32, np.float64][rng.integers(2)]
        es = eo.Eggroll(
            {"w": np.zeros((6, 5), dtype), "b": np.zeros(5, dtype)},
            popsize=8,
            sigma=0.1,
            learning_rate=[0.01, 1.0][rng.integers(2)],
            optimizer=["adam", "sgd", "momentum"][rng.integers(3)],
            fitness_shaping=SHAPINGS[rng.integers(len(SHAPINGS))],
            maximize=bool(rng.integers(2)),
            seed=0,
            backend="numpy",
        )
        for _ in range(2):
            es.ask()
            try:
                stats = es.tell(_fitness(rng))
            except Exception as error:
                clear = "non-finite" in str(error) and "unchanged" in str(error)
                counts["clear_error" if clear else "unclear_error"] += 1
                break
            if not all(np.isfinite(np.asarray(v)).all() for v in es.params.values()):
                counts["non_finite_mean"] += 1
                break
            if not math.isfinite(stats.gradient_norm):
                counts["infinite_norm"] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    """Print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4000, help="strategies (default 4000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # the old versions warn on every overflow
    counts = run(args.cases, args.seed)
    print(f"{args.cases} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
