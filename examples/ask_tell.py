"""A plain ask/tell loop: fit a two-layer network to a teacher network without gradients.

Every generation evaluates the whole population with ``Population.linear`` (a shared input
batch, one dense product per layer plus thin low-rank corrections), so no member is ever
materialised. Run ``python examples/ask_tell.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import eggroll_opt as eo


def main(argv: list[str] | None = None) -> float:
    """Train and return the final loss divided by the initial loss."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=256, help="hidden width (default 256)")
    parser.add_argument("--popsize", type=int, default=256, help="population (default 256)")
    parser.add_argument("--generations", type=int, default=300, help="budget (default 300)")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.popsize, args.generations = 32, 64, 60

    rng = np.random.default_rng(0)
    inputs, width = 16, args.width
    teacher = {
        "hidden": rng.standard_normal((width, inputs)) / np.sqrt(inputs),
        "out": rng.standard_normal((4, width)) / np.sqrt(width),
    }
    x = rng.standard_normal((128, inputs)).astype(np.float32)
    y = np.tanh(x @ teacher["hidden"].T) @ teacher["out"].T

    student = {
        "hidden": (rng.standard_normal((width, inputs)) / np.sqrt(inputs)).astype(np.float32),
        "out": np.zeros((4, width), np.float32),
    }
    es = eo.Eggroll(student, popsize=args.popsize, sigma=0.05, learning_rate=0.003, seed=0)
    xp = es.xp  # NumPy, or CuPy on a GPU: the data moves there once
    x_device, y_device = xp.asarray(x), xp.asarray(y, dtype=np.float32)

    def losses(pop: eo.Population) -> np.ndarray:
        hidden = xp.tanh(pop.linear("hidden", x_device))  # shared input: (N, batch, width)
        prediction = pop.linear("out", hidden)  # per-member input: (N, batch, 4)
        return eo.to_numpy(((prediction - y_device) ** 2).mean(axis=(1, 2)))

    start = time.perf_counter()
    initial = float(np.mean(y**2))
    for generation in range(args.generations):
        stats = es.tell(losses(es.ask()))
        if generation % max(1, args.generations // 10) == 0:
            print(f"generation {generation:4d}  best loss {stats.best_fitness:.4f}")
    params = eo.to_numpy(es.params)
    final = float(np.mean((np.tanh(x @ params["hidden"].T) @ params["out"].T - y) ** 2))
    seconds = time.perf_counter() - start
    print(
        f"loss of the mean: {initial:.4f} -> {final:.4f} in {args.generations} generations, "
        f"{seconds / args.generations * 1e3:.1f} ms per generation ({es.num_params} parameters)"
    )
    return final / initial


if __name__ == "__main__":
    main()
