"""Train a small CNN on MNIST without gradients, evaluating the whole population at once.

conv(1->8, 3x3, stride 2) -> relu -> conv(8->16, 3x3, stride 2) -> relu -> dense(784->64) ->
relu -> dense(64->10). Each generation draws a mini-batch of training images shared by all
members; fitness is the cross-entropy on it. Accuracy is measured on the 10,000 test images.

The data are read from the four standard IDX files in ``--mnist-dir`` or ``$EGGROLL_OPT_MNIST``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt import nn
from eggroll_opt.datasets import load_mnist


def init_cnn(seed: int = 0) -> dict[str, Any]:
    """He-initialised float32 parameters of the CNN."""
    rng = np.random.default_rng(seed)

    def layer(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        fan_in = int(np.prod(shape[1:]))
        weight = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
        return {"w": weight.astype(np.float32), "b": np.zeros(shape[0], np.float32)}

    return {
        "c1": layer((8, 1, 3, 3)),
        "c2": layer((16, 8, 3, 3)),
        "fc": layer((64, 784)),
        "out": layer((10, 64)),
    }


def cnn(layers: Any, images: Any) -> Any:
    """The model, written once for a population or for one parameter tree."""
    h = nn.relu(layers.conv2d("c1", images, stride=2, padding=1))  # 8 x 14 x 14
    h = nn.relu(layers.conv2d("c2", h, stride=2, padding=1))  # 16 x 7 x 7
    h = nn.relu(layers.dense("fc", layers.flatten(h)))
    return layers.dense("out", h)


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
    pop: eo.Population, images: np.ndarray, labels: np.ndarray, chunk: int
) -> np.ndarray:
    """Cross-entropy of every member on a shared batch, in parts of ``chunk`` members."""
    return np.concatenate(
        [
            eo.to_numpy(nn.cross_entropy(cnn(nn.PopulationLayers(part), images), labels))
            for part in pop.split(chunk)
        ]
    )


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
    chunk: int = 64,
    evaluate_every: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run one strategy; returns its history (generation, seconds, test accuracy)."""
    train_images, train_labels, test_images, test_labels = data
    cls = eo.OpenES if strategy == "OpenES" else eo.Eggroll
    extra = {"rank": rank} if cls is eo.Eggroll else {}
    es = cls(
        init_cnn(seed),
        popsize=popsize,
        sigma=sigma,
        learning_rate=learning_rate,
        seed=seed,
        backend="numpy",
        **extra,
    )
    rng = np.random.default_rng(seed + 1)
    history, seconds, times = (
        [(0, 0.0, test_accuracy(es.params, test_images, test_labels))],
        0.0,
        [],
    )
    bar = _progress(generations, strategy) if progress else None
    for generation in range(1, generations + 1):
        start = time.perf_counter()
        index = rng.choice(len(train_images), batch, replace=False)
        losses = population_losses(es.ask(), train_images[index], train_labels[index], chunk)
        stats = es.tell(losses)
        times.append(time.perf_counter() - start)
        seconds += times[-1]
        if generation % evaluate_every == 0 or generation == generations:
            accuracy = test_accuracy(es.params, test_images, test_labels)
            history.append((generation, seconds, accuracy))
            if bar is not None:
                bar.set_postfix(loss=f"{stats.mean_fitness:.3f}", test_acc=f"{accuracy:.3f}")
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "strategy": f"{strategy}" + (f" r={rank}" if cls is eo.Eggroll else ""),
        "history": history,
        "seconds_per_generation": float(np.median(times)),
        "total_seconds": seconds,
        "initial_accuracy": history[0][2],
        "test_accuracy": history[-1][2],
        "params": es.num_params,
    }


def _progress(total: int, name: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=name, unit="gen")


def plot(results: list[dict[str, Any]], path: str) -> None:
    """Test accuracy against generations and wall time (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        history = np.array(result["history"])
        axes[0].plot(history[:, 0], history[:, 2], "o-", label=result["strategy"])
        axes[1].plot(history[:, 1], history[:, 2], "o-", label=result["strategy"])
    axes[0].set_xlabel("generation")
    axes[1].set_xlabel("seconds")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mnist-dir", help="folder with the IDX files ($EGGROLL_OPT_MNIST)")
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--popsize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="training images per generation")
    parser.add_argument("--sigma", type=float, default=0.02)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--rank", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=64, help="members per forward part")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="", help="PNG path for the accuracy plot")
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    args = parser.parse_args(argv)
    if args.quick:
        args.generations, args.popsize, args.batch, args.learning_rate = 12, 32, 64, 0.03
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
        chunk=args.chunk,
        seed=args.seed,
        evaluate_every=max(1, args.generations // 10),
    )
    print(
        f"\n| strategy | params | generations | s / generation | total s | test accuracy |\n"
        f"|---|---:|---:|---:|---:|---:|\n| {result['strategy']} | {result['params']} | "
        f"{args.generations} | {result['seconds_per_generation']:.3f} | "
        f"{result['total_seconds']:.1f} | {result['test_accuracy']:.4f} |"
    )
    if args.plot:
        plot([result], args.plot)
    return result


if __name__ == "__main__":
    main()
