"""Train a small CNN on MNIST without gradients, evaluating the whole population at once.

conv(1->8, 3x3, stride 2) -> relu -> conv(8->16, 3x3, stride 2) -> relu -> dense(784->W) ->
relu -> dense(W->10), written once as a :class:`_backprop.Sequential` spec (the same network
the gradient baseline of ``mnist_comparison.py`` trains). Each generation draws a mini-batch of
training images shared by all members; fitness is the cross-entropy on it and Adam takes the
step (with ``--cosine`` its step size falls along a cosine to a tenth of ``--learning-rate``).
Accuracy is measured on the 10,000 test images; the timings exclude those measurements.

The data are read from the four standard IDX files in ``--mnist-dir`` or ``$EGGROLL_OPT_MNIST``.

Examples:
    python examples/mnist.py --mnist-dir /path/to/mnist --plot mnist.png   # about 85%
    # 95% takes a longer budget with a smaller, decaying step (3,000 generations):
    python examples/mnist.py --mnist-dir DIR --generations 3000 --learning-rate 0.003 --cosine
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import os
import time
from typing import Any

import numpy as np
from _backprop import Sequential
from _common import cosine_adam, markdown_table, plot_curves, progress, strategy_class
from threadpoolctl import threadpool_limits

import eggroll_opt as eo
from eggroll_opt import nn
from eggroll_opt.datasets import load_mnist

SPEC = [
    ("conv2d", "c1", 2, 1),  # 8 x 14 x 14
    ("relu",),
    ("conv2d", "c2", 2, 1),  # 16 x 7 x 7
    ("relu",),
    ("flatten",),
    ("dense", "fc"),
    ("relu",),
    ("dense", "out"),
]
cnn = Sequential(SPEC)  # the model: cnn(layers, images) for a population or one tree


def init_cnn(seed: int = 0, width: int = 64) -> dict[str, Any]:
    """He-initialised float32 parameters of the CNN with ``width`` hidden units."""
    rng = np.random.default_rng(seed)

    def layer(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        fan_in = int(np.prod(shape[1:]))
        weight = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return {"w": weight.astype(np.float32), "b": np.zeros(shape[0], np.float32)}

    return {
        "c1": layer((8, 1, 3, 3)),
        "c2": layer((16, 8, 3, 3)),
        "fc": layer((width, 784)),
        "out": layer((10, width)),
    }


def prepare(data: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Images as float32 (N, 1, 28, 28) in [0, 1], centred; labels as int64."""

    def images(array: np.ndarray) -> np.ndarray:
        return ((array.astype(np.float32) / 255.0) - 0.1307)[:, None] / 0.3081

    return (
        images(data["train_images"]),
        data["train_labels"].astype(np.int64),
        images(data["test_images"]),
        data["test_labels"].astype(np.int64),
    )


def test_accuracy(params: dict[str, Any], images: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy of one parameter tree on all test images, in batches."""
    layers = nn.ParamsLayers(eo.to_numpy(params))
    correct = 0
    for start in range(0, len(images), 2000):
        logits = cnn(layers, images[start : start + 2000])
        correct += int((logits.argmax(-1) == labels[start : start + 2000]).sum())
    return correct / len(images)


def population_losses(
    pop: eo.Population,
    images: np.ndarray,
    labels: np.ndarray,
    chunk: int,
    pool: concurrent.futures.ThreadPoolExecutor | None = None,
) -> np.ndarray:
    """Cross-entropy of every member on a shared batch, in parts of ``chunk`` members.

    With a thread ``pool``, :func:`eggroll_opt.evaluate` runs the parts on its threads at once
    (``vectorized=True``: each thread gets a slice of the population and goes through it in
    parts of ``chunk``).
    """

    def losses(members: eo.Population) -> np.ndarray:
        return np.concatenate(
            [
                eo.to_numpy(nn.cross_entropy(cnn(nn.PopulationLayers(part), images), labels))
                for part in members.split(chunk)
            ]
        )

    if pool is None:
        return losses(pop)
    return eo.evaluate(pop, losses, pool, vectorized=True).fitness


def train(
    strategy: str = "Eggroll",
    *,
    data: tuple[np.ndarray, ...],
    generations: int,
    popsize: int,
    batch: int,
    sigma: float,
    learning_rate: float,
    rank: int = 1,
    width: int = 64,
    schedule: bool = False,
    chunk: int = 8,
    threads: int = 1,
    evaluate_every: int = 10,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run one strategy (``"Eggroll"`` or ``"OpenES"``); returns its history and timings.

    The forward runs on ``threads`` threads, each with one BLAS thread (so the results are
    the same for every ``threads``).

    ``history`` holds ``(generation, training seconds, test accuracy)`` rows, from generation 0;
    ``mean`` is the trained parameter tree;
    ``ask_tell_seconds`` is the median time per generation spent in ``ask`` and ``tell`` (noise,
    shaping and update), the rest of ``seconds_per_generation`` is the population's forward.
    """
    train_images, train_labels, test_images, test_labels = data
    cls = strategy_class(strategy)
    optimizer = cosine_adam(learning_rate, generations) if schedule else "adam"
    es = cls(
        init_cnn(seed, width),
        popsize=popsize,
        sigma=sigma,
        learning_rate=learning_rate,
        optimizer=optimizer,
        seed=seed,
        backend="numpy",
        rank=rank,  # OpenES applies it only to leaves set to "lowrank"
    )
    rng = np.random.default_rng(seed + 1)
    history = [(0, 0.0, test_accuracy(es.params, test_images, test_labels))]
    seconds, times, strategy_times = 0.0, [], []  # strategy: ask + tell, without the forward
    name = "EGGROLL" if cls is eo.Eggroll else "OpenES"
    pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None
    with (
        pool or contextlib.nullcontext(),  # shut down at the end, whatever happens
        threadpool_limits(1, user_api="blas"),
        progress(generations, name, enabled=show_progress) as bar,
    ):
        for generation in range(1, generations + 1):
            start = time.perf_counter()
            index = rng.choice(len(train_images), batch, replace=False)
            pop = es.ask()
            asked = time.perf_counter()
            losses = population_losses(pop, train_images[index], train_labels[index], chunk, pool)
            evaluated = time.perf_counter()
            stats = es.tell(losses)
            times.append(time.perf_counter() - start)
            strategy_times.append(times[-1] - (evaluated - asked))
            seconds += times[-1]
            if generation % evaluate_every == 0 or generation == generations:
                accuracy = test_accuracy(es.params, test_images, test_labels)
                history.append((generation, seconds, accuracy))
                bar.set_postfix_str(f"loss={stats.mean_fitness:.3f} test_acc={accuracy:.3f}")
            bar.update()
    return {
        "strategy": name + (f" (rank {rank})" if cls is eo.Eggroll else " (full-rank)"),
        "history": history,
        "generations": generations,
        "seconds_per_generation": float(np.median(times)),
        "ask_tell_seconds": float(np.median(strategy_times)),
        "total_seconds": seconds,
        "initial_accuracy": history[0][2],
        "test_accuracy": history[-1][2],
        "params": es.num_params,
        "mean": es.params,
    }


def curve(result: dict[str, Any], label: str | None = None) -> dict[str, dict[str, list]]:
    """A result's history in the form :func:`_common.plot_curves` takes."""
    history = np.array(result["history"], dtype=float)
    return {
        label or result["strategy"]: {
            "generation": list(history[:, 0]),
            "seconds": list(history[:, 1]),
            "test accuracy": list(history[:, 2]),
        }
    }


def command_line() -> argparse.ArgumentParser:
    """The example's options and their defaults (also what the peers benchmark runs)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mnist-dir", help="folder with the IDX files ($EGGROLL_OPT_MNIST)")
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--popsize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128, help="training images per generation")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--learning-rate", type=float, default=0.01, help="Adam's initial step")
    parser.add_argument("--cosine", action="store_true", help="cosine decay of the step size")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--width", type=int, default=64, help="hidden units of the dense layer")
    parser.add_argument(
        "--chunk", type=int, default=8, help="members per forward part (small parts stay in cache)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for the forward, each with one BLAS thread (default: the CPU count)",
    )
    parser.add_argument("--evaluate-every", type=int, default=0, help="default: generations/10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="", help="PNG path for the accuracy plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = command_line()
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.quick:
        args.generations, args.popsize, args.batch = 12, 32, 64
        args.learning_rate = max(args.learning_rate, 0.03)
    data = prepare(load_mnist(args.mnist_dir))
    result = train(
        "Eggroll",
        data=data,
        generations=args.generations,
        popsize=args.popsize,
        batch=args.batch,
        sigma=args.sigma,
        learning_rate=args.learning_rate,
        rank=args.rank,
        width=args.width,
        schedule=args.cosine,
        chunk=args.chunk,
        threads=args.threads,
        seed=args.seed,
        evaluate_every=args.evaluate_every or max(1, args.generations // 10),
        show_progress=not args.no_progress,
    )
    row = {
        "strategy": result["strategy"],
        "params": result["params"],
        "popsize": args.popsize,
        "generations": args.generations,
        "s / generation": result["seconds_per_generation"],
        "total s": result["total_seconds"],
        "test accuracy": result["test_accuracy"],
    }
    print("\n" + markdown_table([row]))
    if args.plot:
        plot_curves(curve(result), args.plot, y="test accuracy", title="MNIST CNN, EGGROLL")
    return result


if __name__ == "__main__":
    main()
