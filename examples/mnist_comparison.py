"""EGGROLL, OpenES and gradient descent on the same MNIST CNN and budget.

The network is the CNN of ``mnist.py`` (conv -> conv -> dense -> dense, one
:class:`_backprop.Sequential` spec). Three ways to train it, each for ``--generations`` updates
on mini-batches of ``--batch`` training images:

* **EGGROLL**: ``eggroll_opt.Eggroll``, rank-r perturbations of every weight matrix and kernel,
  the population evaluated through ``nn.PopulationLayers``;
* **OpenES**: ``eggroll_opt.OpenES`` (the plain "SimpleES" baseline): full-rank Gaussian noise
  on every parameter, with the same CNN, popsize, fitness, shaping and optimizer (Adam);
  ``--openes-generations`` caps its budget when the full one would take too long;
* **SGD**: minibatch gradient descent with momentum on exact gradients, from PyTorch's autograd
  on the CPU where PyTorch is installed, else from ``_backprop.Sequential.loss_and_grad``
  (reverse mode written out by hand in NumPy); ``--sgd-gradients`` chooses, and the table says
  which was used. The momentum update itself is the same NumPy code either way.

Reported: test accuracy on the 10,000 test images, the median time per generation (per step for
SGD), the part of it spent in ``ask`` and ``tell`` (the noise and the update, which is all that
EGGROLL's low rank changes; the rest is the population's forward pass) and the total training
time (test evaluations excluded).

Example:
    python examples/mnist_comparison.py --mnist-dir /path/to/mnist --plot cmp.png
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from _backprop import Descent, torch_available
from _common import markdown_table, plot_curves, progress
from mnist import cnn, curve, init_cnn, prepare, test_accuracy, train

from eggroll_opt import optim
from eggroll_opt.datasets import load_mnist


def train_sgd(
    *,
    data: tuple[np.ndarray, ...],
    steps: int,
    batch: int,
    learning_rate: float,
    momentum: float = 0.9,
    width: int = 64,
    evaluate_every: int = 10,
    seed: int = 0,
    gradients: str = "numpy",
    show_progress: bool = True,
) -> dict[str, Any]:
    """Minibatch SGD with momentum on exact gradients (``gradients``: ``"numpy"`` or ``"torch"``).

    Returns the keys of ``train``.
    """
    train_images, train_labels, test_images, test_labels = data
    params = init_cnn(seed, width)
    descent = Descent(cnn, params, optim.momentum(learning_rate, momentum=momentum), gradients)
    rng = np.random.default_rng(seed + 1)
    history = [(0, 0.0, test_accuracy(params, test_images, test_labels))]
    seconds, times = 0.0, []
    with progress(steps, "SGD", unit="step", enabled=show_progress) as bar:
        for step in range(1, steps + 1):
            start = time.perf_counter()
            index = rng.choice(len(train_images), batch, replace=False)
            loss = descent.step(train_images[index], train_labels[index], "cross_entropy")
            times.append(time.perf_counter() - start)
            seconds += times[-1]
            if step % evaluate_every == 0 or step == steps:
                accuracy = test_accuracy(params, test_images, test_labels)
                history.append((step, seconds, accuracy))
                bar.set_postfix_str(f"loss={loss:.3f} test_acc={accuracy:.3f}")
            bar.update()
    return {
        "strategy": "SGD + momentum ("
        + ("PyTorch autograd" if gradients == "torch" else "NumPy backprop")
        + ")",
        "gradients": "exact (PyTorch autograd, CPU)"
        if gradients == "torch"
        else "exact (hand-written NumPy backprop)",
        "history": history,
        "generations": steps,
        "seconds_per_generation": float(np.median(times)),
        "total_seconds": seconds,
        "initial_accuracy": history[0][2],
        "test_accuracy": history[-1][2],
        "params": sum(int(leaf.size) for layer in params.values() for leaf in layer.values()),
    }


def accuracy_at(result: dict[str, Any], generation: int) -> float:
    """Test accuracy of the last evaluation at or before ``generation``."""
    return [accuracy for g, _, accuracy in result["history"] if g <= generation][-1]


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mnist-dir", help="folder with the IDX files ($EGGROLL_OPT_MNIST)")
    parser.add_argument("--generations", type=int, default=100, help="updates of every method")
    parser.add_argument(
        "--openes-generations", type=int, default=None, help="OpenES budget (default: the same)"
    )
    parser.add_argument(
        "--methods", default="EGGROLL,OpenES,SGD", help="comma-separated subset to run"
    )
    parser.add_argument("--popsize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128, help="training images per update")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--learning-rate", type=float, default=0.01, help="Adam's step (ES)")
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--width", type=int, default=64, help="hidden units of the dense layer")
    parser.add_argument("--sgd-learning-rate", type=float, default=0.05)
    parser.add_argument(
        "--sgd-gradients",
        choices=("auto", "torch", "numpy"),
        default="auto",
        help="where SGD's gradients come from (auto: PyTorch if installed, else NumPy)",
    )
    parser.add_argument("--chunk", type=int, default=8, help="members per forward part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="", help="PNG path for the accuracy plot")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args(argv)
    data = prepare(load_mnist(args.mnist_dir))
    if args.quick:  # a tiny subset: 5,000 training and 2,000 test images
        args.generations, args.popsize, args.openes_generations, args.batch = 16, 32, 16, 64
        args.learning_rate = max(args.learning_rate, 0.03)
        data = (data[0][:5000], data[1][:5000], data[2][:2000], data[3][:2000])
    openes_generations = args.openes_generations or args.generations
    if args.sgd_gradients == "torch" and not torch_available():
        parser.error("--sgd-gradients torch needs PyTorch (pip install torch)")
    if args.sgd_gradients == "auto":
        args.sgd_gradients = "torch" if torch_available() else "numpy"
    common = {
        "data": data,
        "popsize": args.popsize,
        "batch": args.batch,
        "sigma": args.sigma,
        "learning_rate": args.learning_rate,
        "width": args.width,
        "chunk": args.chunk,
        "seed": args.seed,
        "show_progress": not args.no_progress,
    }
    runs = {
        "EGGROLL": lambda: train(
            "Eggroll",
            generations=args.generations,
            rank=args.rank,
            evaluate_every=max(1, args.generations // 10),
            **common,
        ),
        "OpenES": lambda: train(
            "OpenES",
            generations=openes_generations,
            evaluate_every=max(1, openes_generations // 10),
            **common,
        ),
        "SGD": lambda: train_sgd(
            data=data,
            steps=args.generations,
            batch=args.batch,
            learning_rate=args.sgd_learning_rate,
            width=args.width,
            evaluate_every=max(1, args.generations // 10),
            seed=args.seed,
            gradients=args.sgd_gradients,
            show_progress=not args.no_progress,
        ),
    }
    methods = [name.strip() for name in args.methods.split(",")]
    unknown = sorted(set(methods) - set(runs))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {sorted(runs)}")
    results = {name: runs[name]() for name in runs if name in methods}
    eggroll_seconds = results["EGGROLL"]["seconds_per_generation"] if "EGGROLL" in results else 0
    rows = []
    for name, result in results.items():
        is_sgd = name == "SGD"
        rows.append(
            {
                "method": result["strategy"],
                "gradients": result["gradients"] if is_sgd else "none",
                "popsize": 1 if is_sgd else args.popsize,
                "generations / steps": result["generations"],
                "s / generation (step)": result["seconds_per_generation"],
                "of which ask + tell": "" if is_sgd else result["ask_tell_seconds"],
                "vs EGGROLL": result["seconds_per_generation"] / eggroll_seconds
                if eggroll_seconds
                else "",
                "total s": result["total_seconds"],
                "test accuracy": result["test_accuracy"],
            }
        )
    if openes_generations != args.generations and {"EGGROLL", "OpenES"} <= set(results):
        rows.append(
            {
                "method": f"EGGROLL at generation {openes_generations} (OpenES's budget)",
                "generations / steps": openes_generations,
                "test accuracy": accuracy_at(results["EGGROLL"], openes_generations),
            }
        )
    print(
        f"\nMNIST CNN ({next(iter(results.values()))['params']} parameters), batch {args.batch}, "
        f"{len(data[2])} test images\n"
    )
    print(markdown_table(rows))
    if args.plot:
        curves = {}
        for result in results.values():
            curves.update(curve(result))
        plot_curves(curves, args.plot, y="test accuracy", title="MNIST CNN: EGGROLL, OpenES, SGD")
    return results


if __name__ == "__main__":
    main()
