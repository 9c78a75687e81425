"""Evolve a controller on a local Dask cluster: one simulated episode per member, on workers.

Each member is a small tanh network that steers a point mass towards a target from a few
starting positions; its fitness is the mean final distance plus a small effort penalty
(minimized). The simulation is plain Python/NumPy run member by member, the kind of fitness
that is worth spreading over processes. Only the base parameters (once per generation per
worker), member indices and one float per member travel.

Run ``python examples/distributed.py --help`` for the options; ``--quick`` takes seconds.
Needs ``pip install "dask[distributed]"``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import eggroll_opt as eo

STARTS = np.array([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0], [0.7, 0.7]])
TARGET = np.array([0.25, -0.25])
STEPS, DT = 40, 0.1


def episode_cost(params: dict[str, Any]) -> float:
    """Mean squared final distance to the target, plus effort, over the fixed starts."""
    position = STARTS.copy()
    velocity = np.zeros_like(position)
    effort = 0.0
    for _ in range(STEPS):
        observation = np.concatenate([position - TARGET, velocity], axis=1)
        hidden = np.tanh(observation @ params["hidden"]["w"].T + params["hidden"]["b"])
        force = np.tanh(hidden @ params["out"]["w"].T + params["out"]["b"])
        velocity = 0.9 * velocity + DT * force
        position = position + DT * velocity
        effort += float(np.mean(force**2))
    distance = np.sum((position - TARGET) ** 2, axis=1)
    return float(np.mean(distance) + 1e-3 * effort / STEPS)


def initial_params(width: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "hidden": {
            "w": (rng.standard_normal((width, 4)) / 2).astype(np.float32),
            "b": np.zeros(width, np.float32),
        },
        "out": {"w": np.zeros((2, width), np.float32), "b": np.zeros(2, np.float32)},
    }


def main(argv: list[str] | None = None) -> float:
    """Run the optimisation and return the final cost of the mean over the initial cost."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--popsize", type=int, default=128, help="population (default 128)")
    parser.add_argument("--generations", type=int, default=150, help="budget (default 150)")
    parser.add_argument("--width", type=int, default=32, help="hidden width (default 32)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.popsize, args.generations = 32, 25

    # This file shares its name with Dask's ``distributed`` package, and a script's folder comes
    # first on the import path: take the folder off before importing Dask.
    here = Path(__file__).resolve().parent
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != here]
    from distributed import Client, LocalCluster
    from eggroll_opt.integrations.dask import DaskExecutor

    es = eo.Eggroll(
        initial_params(args.width, seed=0),
        popsize=args.popsize,
        sigma=0.05,
        learning_rate=0.02,
        seed=0,
        backend="numpy",
    )
    initial = episode_cost(es.params)

    def log(report: eo.GenerationReport) -> None:
        if report.generation % max(1, args.generations // 5) == 0:
            print(
                f"generation {report.generation:4d}  best {report.stats.best_fitness:.4f}  "
                f"{report.seconds * 1e3:.0f} ms  failed {report.evaluation.num_failed}"
            )

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # its HTTP server on a free local port
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        print(f"cluster of {args.workers} workers up in {time.perf_counter() - start:.1f} s")
        executor = DaskExecutor(client)
        result = es.optimize(
            episode_cost, args.generations, executor=executor, callbacks=[log], progress=False
        )
        executor.shutdown()
    final = episode_cost(eo.to_numpy(es.params))
    print(
        f"cost of the mean: {initial:.4f} -> {final:.4f} in {result.generations} generations "
        f"({result.seconds / result.generations * 1e3:.0f} ms per generation, popsize "
        f"{args.popsize}, {es.num_params} parameters, {result.num_failed} failed evaluations)"
    )
    print(f"ratio {final / initial:.4f}")
    return final / initial


if __name__ == "__main__":
    main()
