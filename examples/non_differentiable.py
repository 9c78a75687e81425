"""Objectives a gradient method cannot use as they are: EGGROLL beside OpenES.

Three objectives, each piecewise constant in the parameters, so that their gradient is zero
wherever it exists:

* ``zero-one``: an MLP 64-64-10 (tanh) on scikit-learn's 8x8 digits, trained on its 0/1 error
  (the fraction of a mini-batch it misclassifies). The population runs through
  ``nn.PopulationLayers``: the error is a function of the logits, so no member is built.
* ``ternary``: an MLP 64-64-10 whose weights are rounded to {-1, 0, +1} x scale, whose hidden
  units are Heaviside steps (their biases stay real) and whose output layer has no bias;
  fitness is the cross-entropy of that quantized network on a mini-batch. The strategy
  searches the real latent weights. ``nn.PopulationLayers`` cannot serve here: it computes
  ``x @ (W + E_i).T`` as one shared product plus a low-rank correction, and rounding
  ``W + E_i`` entry by entry breaks that split. Every member's latent matrices are built at
  once with ``Population.stacked`` (popsize x 64 x 64 numbers, small at this size), quantized
  together and applied with one batched product.
* ``tsp``: a tour of 30 random cities decoded from a 30 x 30 score matrix (city i takes
  position j by an optimal assignment on the scores, ``scipy.optimize.linear_sum_assignment``);
  fitness is the tour length. Members are built with ``Population.stacked`` and decoded one
  by one.

For each objective the script first takes the central-difference gradient of the fitness on one
fixed mini-batch over every parameter at the start, and a gradient-descent step along it (a
zero gradient leaves the parameters, and so every later step, where they were). Entries that
are nonzero are taken again with a step ten times smaller: a slope would stay, the quotient
across a jump (a rounding threshold within reach of the step) vanishes or grows. Then it runs
EGGROLL and OpenES with the same population, generations, seed and hyperparameters. It prints
two markdown tables and draws the score of the mean against generations and seconds, one row
per objective (``--plot PATH``, by default ``non_differentiable.png``; none in ``--quick``
unless asked).

The plot in the documentation comes from
``python examples/non_differentiable.py --plot docs/images/non_differentiable.png``;
``--quick`` takes seconds.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from _common import markdown_table, progress, strategy_class

import eggroll_opt as eo
from eggroll_opt import nn

Params = dict[str, Any]


class Objective(NamedTuple):
    """One objective: its start, its fitness and the score reported for one parameter tree.

    ``population_fitness(pop, rng)`` returns one fitness per member (minimized; it may draw a
    mini-batch from ``rng``); ``fitness(params)`` is the same fitness of one tree on a fixed
    mini-batch (what a gradient method would differentiate); ``score(params)`` is the value
    reported and plotted (on the whole training set); ``extra(params)`` adds summary columns.
    """

    name: str
    description: str
    unit: str
    init: Callable[[int], Params]
    population_fitness: Callable[[eo.Population, np.random.Generator], np.ndarray]
    fitness: Callable[[Params], float]
    score: Callable[[Params], float]
    sigma: float
    learning_rate: float
    extra: Callable[[Params], dict[str, float]] = lambda params: {}


# -- data ------------------------------------------------------------------------------------
def load_digits_split(seed: int = 0) -> tuple[np.ndarray, ...]:
    """scikit-learn's digits as float32 in [0, 1] minus the training mean, 75/25 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    mean = x_train.mean(axis=0)
    return x_train - mean, y_train.astype(np.int64), x_test - mean, y_test.astype(np.int64)


def mlp_init(sizes: tuple[int, ...], seed: int, scale: float = 1.0) -> Params:
    """Float32 layers ``l0, l1, ...`` with weights N(0, scale^2 / fan_in) and zero biases."""
    rng = np.random.default_rng(seed)
    return {
        f"l{i}": {
            "w": (scale * rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32),
            "b": np.zeros(out, np.float32),
        }
        for i, (inp, out) in enumerate(itertools.pairwise(sizes))
    }


def zero_one_error(logits: Any, labels: np.ndarray) -> Any:
    """Fraction misclassified: one value per leading index of ``logits`` (..., batch, C)."""
    return 1.0 - nn.accuracy(logits, labels)


# -- objective 1: 0/1 error of an MLP ------------------------------------------------------
def zero_one_objective(data: tuple[np.ndarray, ...], batch: int, hidden: int) -> Objective:
    """MLP 64-hidden-10 (tanh) trained on its mini-batch 0/1 error."""
    x_train, y_train, x_test, y_test = data
    fixed = np.random.default_rng(12345).choice(len(x_train), batch, replace=False)

    def model(layers: Any, x: Any) -> Any:
        return layers.dense("l1", nn.tanh(layers.dense("l0", x)))

    def population_fitness(pop: eo.Population, rng: np.random.Generator) -> np.ndarray:
        index = rng.choice(len(x_train), batch, replace=False)
        logits = model(nn.PopulationLayers(pop), x_train[index])
        return eo.to_numpy(zero_one_error(logits, y_train[index]))

    def error(params: Params, index: Any) -> float:
        logits = model(nn.ParamsLayers(params), x_train[index])
        return float(zero_one_error(logits, y_train[index]))

    def extra(params: Params) -> dict[str, float]:
        return {"test accuracy": float(nn.accuracy(model(nn.ParamsLayers(params), x_test), y_test))}

    return Objective(
        name="zero-one",
        description=f"digits MLP 64-{hidden}-10 (tanh), fitness: 0/1 error on {batch} images",
        unit="training error",
        init=lambda seed: mlp_init((64, hidden, 10), seed),
        population_fitness=population_fitness,
        fitness=lambda params: error(params, fixed),
        score=lambda params: error(params, slice(None)),
        sigma=0.1,
        learning_rate=0.05,
        extra=extra,
    )


# -- objective 2: ternary weights, step activations ----------------------------------------
def ternary(weights: np.ndarray, scale: float) -> np.ndarray:
    """Round latent weights to {-1, 0, +1} x ``scale`` (a step function of each weight)."""
    return (scale * np.clip(np.rint(weights / scale), -1.0, 1.0)).astype(np.float32)


def ternary_forward(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray) -> Any:
    """Logits of quantized MLPs; ``weights[i]`` is (out, in) or (N, out, in), biases alike.

    Every hidden layer has a bias and Heaviside step units (0 or 1); the output layer is
    linear, without a bias.
    """
    h = x
    for w, b in zip(weights[:-1], biases, strict=True):
        h = (np.matmul(h, np.swapaxes(w, -1, -2)) + b[..., None, :] > 0).astype(np.float32)
    return np.matmul(h, np.swapaxes(weights[-1], -1, -2))


def ternary_objective(data: tuple[np.ndarray, ...], batch: int, hidden: int) -> Objective:
    """Ternary-weight, step-activation MLP 64-hidden-10 trained on its cross-entropy."""
    x_train, y_train, x_test, y_test = data
    fixed = np.random.default_rng(12345).choice(len(x_train), batch, replace=False)
    sizes = (64, hidden, 10)
    scales = [1.0 / np.sqrt(n) for n in sizes[:-1]]

    def init(seed: int) -> Params:
        params = mlp_init(sizes, seed)
        del params["l1"]["b"]  # a real output bias would be the one leaf with a gradient
        return params

    def quantized(params: Params) -> tuple[list[np.ndarray], list[np.ndarray]]:
        weights = [ternary(params[f"l{i}"]["w"], s) for i, s in enumerate(scales)]
        return weights, [params["l0"]["b"]]

    def population_fitness(pop: eo.Population, rng: np.random.Generator) -> np.ndarray:
        index = rng.choice(len(x_train), batch, replace=False)
        # Every member's latent matrices (N, out, in) at once, then quantized together.
        weights = [ternary(pop.stacked(f"l{i}/w"), s) for i, s in enumerate(scales)]
        logits = ternary_forward(weights, [pop.stacked("l0/b")], x_train[index])
        return eo.to_numpy(nn.cross_entropy(logits, y_train[index]))

    def loss(params: Params, index: Any) -> float:
        logits = ternary_forward(*quantized(params), x_train[index])
        return float(nn.cross_entropy(logits, y_train[index]))

    def extra(params: Params) -> dict[str, float]:
        logits = ternary_forward(*quantized(params), x_test)
        return {"test accuracy": float(nn.accuracy(logits, y_test))}

    return Objective(
        name="ternary",
        description=f"digits MLP 64-{hidden}-10, ternary weights, step units, "
        f"fitness: cross-entropy on {batch} images",
        unit="training cross-entropy",
        init=init,
        population_fitness=population_fitness,
        fitness=lambda params: loss(params, fixed),
        score=lambda params: loss(params, slice(None)),
        sigma=0.05,
        learning_rate=0.03,
        extra=extra,
    )


# -- objective 3: a tour decoded by assignment ---------------------------------------------
def tsp_objective(cities: int, seed: int) -> Objective:
    """Tour length of the tour decoded from a (cities x cities) city-to-position score matrix."""
    from scipy.optimize import linear_sum_assignment

    points = np.random.default_rng(seed + 7).random((cities, 2))
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)

    def length(scores: np.ndarray) -> float:
        _, position = linear_sum_assignment(scores, maximize=True)
        tour = np.argsort(position)
        return float(distance[tour, np.roll(tour, -1)].sum())

    def population_fitness(pop: eo.Population, rng: np.random.Generator) -> np.ndarray:
        scores = eo.to_numpy(pop.stacked("scores"))  # (N, cities, cities)
        return np.array([length(member) for member in scores])

    def init(seed: int) -> Params:
        rng = np.random.default_rng(seed)
        return {"scores": rng.standard_normal((cities, cities)).astype(np.float32)}

    def tour_length(params: Params) -> float:
        return length(np.asarray(params["scores"]))

    return Objective(
        name="tsp",
        description=f"{cities} random cities, tour from an assignment on a score matrix, "
        "fitness: tour length",
        unit="tour length",
        init=init,
        population_fitness=population_fitness,
        fitness=tour_length,
        score=tour_length,
        sigma=0.5,
        learning_rate=0.1,
    )


# -- why gradients fail --------------------------------------------------------------------
def leaves(tree: Params) -> list[np.ndarray]:
    """The arrays of a nested dict, depth first (the arrays themselves, not copies)."""
    out: list[np.ndarray] = []
    for value in tree.values():
        out += leaves(value) if isinstance(value, dict) else [value]
    return out


def central_difference(
    fitness: Callable[[Params], float], params: Params, flat: np.ndarray, j: int, step: float
) -> float:
    """``(f(p + h e_j) - f(p - h e_j)) / 2h`` for entry ``j`` of ``flat`` (a view into params)."""
    original = flat[j]
    flat[j] = original + step
    plus = fitness(params)
    flat[j] = original - step
    minus = fitness(params)
    flat[j] = original
    return (plus - minus) / (2 * step)


def finite_difference(
    fitness: Callable[[Params], float], params: Params, step: float
) -> list[np.ndarray]:
    """The central-difference gradient over every parameter, one array per leaf."""
    grads = []
    for leaf in leaves(params):
        flat = leaf.reshape(-1)  # a view: entries are edited in place and restored
        grad = [central_difference(fitness, params, flat, j, step) for j in range(flat.size)]
        grads.append(np.array(grad).reshape(leaf.shape))
    return grads


def gradient_check(
    objective: Objective, seed: int, step: float, steps: int, learning_rate: float
) -> dict[str, Any]:
    """Finite-difference gradient at the start, then ``steps`` of gradient descent along it.

    Entries that are nonzero at ``step`` are taken again at ``step / 10``: the slope of a smooth
    function would stay the same, the difference quotient across a jump grows tenfold (or
    vanishes once the smaller step no longer reaches the jump).
    """
    params = objective.init(seed)
    start = time.perf_counter()
    initial = objective.fitness(params)
    grads = finite_difference(objective.fitness, params, step)
    fine = [
        abs(central_difference(objective.fitness, params, leaf.reshape(-1), j, step / 10))
        for leaf, grad in zip(leaves(params), grads, strict=True)
        for j in np.flatnonzero(grad)
    ]
    check = {
        "nonzero": int(sum(np.count_nonzero(g) for g in grads)),
        "total": int(sum(g.size for g in grads)),
        "largest": float(max(np.abs(g).max() for g in grads)),
        "largest_fine": max(fine, default=0.0),
        "initial": initial,
        "initial_score": objective.score(params),
    }
    for step_index in range(steps):
        if step_index:
            grads = finite_difference(objective.fitness, params, step)
        for value, grad in zip(leaves(params), grads, strict=True):
            value -= (learning_rate * grad).astype(value.dtype)
    check["after"] = objective.fitness(params)
    check["after_score"] = objective.score(params)
    check["seconds"] = time.perf_counter() - start
    return check


# -- training ------------------------------------------------------------------------------
def train(
    objective: Objective,
    strategy: str,
    *,
    popsize: int,
    generations: int,
    rank: int,
    seed: int,
    evaluate_every: int,
    show_progress: bool,
) -> dict[str, Any]:
    """Run one strategy on one objective; the curve holds the score of the mean."""
    cls = strategy_class(strategy)
    es = cls(
        objective.init(seed),
        popsize=popsize,
        sigma=objective.sigma,
        learning_rate=objective.learning_rate,
        rank=rank,
        seed=seed,
        backend="numpy",
    )
    rng = np.random.default_rng(seed + 1)
    curve: dict[str, list[float]] = {
        "generation": [0],
        "seconds": [0.0],
        "fitness": [objective.score(eo.to_numpy(es.params))],
    }
    seconds, times = 0.0, []
    with progress(generations, f"{objective.name} {strategy}", enabled=show_progress) as bar:
        for generation in range(1, generations + 1):
            start = time.perf_counter()
            pop = es.ask()
            es.tell(objective.population_fitness(pop, rng))
            times.append(time.perf_counter() - start)
            seconds += times[-1]
            if generation % evaluate_every == 0 or generation == generations:
                curve["generation"].append(generation)
                curve["seconds"].append(seconds)
                curve["fitness"].append(objective.score(eo.to_numpy(es.params)))
                bar.set_postfix_str(f"score {curve['fitness'][-1]:.4g}")
            bar.update()
    params = eo.to_numpy(es.params)
    return {
        "strategy": strategy if cls is eo.OpenES else f"EGGROLL r={rank}",
        "params": es.num_params,
        "curve": curve,
        "initial": curve["fitness"][0],
        "final": curve["fitness"][-1],
        "seconds_per_generation": float(np.median(times)),
        "total_seconds": seconds,
        **objective.extra(params),
    }


def plot(results: dict[str, dict[str, Any]], path: str) -> bool:
    """Fitness of the mean against generations and seconds, one row per objective."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[examples]')")
        return False
    figure, axes = plt.subplots(len(results), 2, figsize=(10, 3.2 * len(results)), squeeze=False)
    for row, (name, result) in enumerate(results.items()):
        for axis, x in zip(axes[row], ("generation", "seconds"), strict=True):
            for run in result["runs"]:
                axis.plot(run["curve"][x], run["curve"]["fitness"], label=run["strategy"])
            axis.axhline(result["gradient"]["after_score"], color="grey", linestyle="--", lw=1)
            axis.set_xlabel(x)
            axis.set_ylabel(f"{name}: {result['unit']}")
            axis.grid(alpha=0.3)
        axes[row][0].plot([], [], color="grey", linestyle="--", label="after gradient descent")
        axes[row][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path}")
    return True


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Run every objective; returns, per objective, the gradient check and both runs."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--objectives", default="zero-one,ternary,tsp", help="comma-separated (default all)"
    )
    parser.add_argument("--generations", type=int, default=200, help="budget (default 200)")
    parser.add_argument("--popsize", type=int, default=128, help="population (default 128)")
    parser.add_argument("--rank", type=int, default=1, help="EGGROLL rank (default 1)")
    parser.add_argument(
        "--batch", type=int, default=128, help="images per generation (default 128)"
    )
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    parser.add_argument("--cities", type=int, default=30, help="TSP cities (default 30)")
    parser.add_argument("--fd-step", type=float, default=1e-4, help="finite-difference h")
    parser.add_argument(
        "--gd-steps", type=int, default=1, help="gradient-descent steps (default 1)"
    )
    parser.add_argument("--gd-learning-rate", type=float, default=0.1, help="(default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    parser.add_argument(
        "--plot",
        help="PNG path for the plot (default non_differentiable.png; none with --quick)",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.generations, args.popsize, args.hidden, args.cities = 40, 64, 16, 12
        args.batch = 128
    if args.plot is None:
        args.plot = "" if args.quick else "non_differentiable.png"

    data = load_digits_split(args.seed)
    builders = {
        "zero-one": lambda: zero_one_objective(data, args.batch, args.hidden),
        "ternary": lambda: ternary_objective(data, args.batch, args.hidden),
        "tsp": lambda: tsp_objective(args.cities, args.seed),
    }
    names = args.objectives.split(",")
    if not set(names) <= set(builders):
        parser.error(f"--objectives: choose from {', '.join(builders)}")
    steps = f"{args.gd_steps} step{'s' * (args.gd_steps != 1)}"
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        objective = builders[name]()
        print(f"{name}: {objective.description}")
        gradient = gradient_check(
            objective, args.seed, args.fd_step, args.gd_steps, args.gd_learning_rate
        )
        print(
            f"  central differences (h={args.fd_step:g}): {gradient['nonzero']} of "
            f"{gradient['total']} entries nonzero; gradient descent ({steps}): "
            f"{objective.unit} {gradient['initial_score']:.4g} -> {gradient['after_score']:.4g}"
        )
        runs = [
            train(
                objective,
                strategy,
                popsize=args.popsize,
                generations=args.generations,
                rank=args.rank,
                seed=args.seed,
                evaluate_every=max(1, args.generations // 30),
                show_progress=not args.no_progress,
            )
            for strategy in ("Eggroll", "OpenES")
        ]
        for run in runs:
            print(f"  {run['strategy']}: {run['initial']:.4g} -> {run['final']:.4g}")
        results[name] = {"gradient": gradient, "runs": runs, "unit": objective.unit}

    print(
        f"\nGradients at the start: central differences of the fitness on one fixed mini-batch "
        f"over every parameter (h={args.fd_step:g}; nonzero entries taken again at h/10), then "
        f"gradient descent along them ({steps}, "
        f"learning rate {args.gd_learning_rate:g}). An entry that vanishes at h/10 came from a "
        "threshold within h of the start: a jump, not a slope.\n"
    )
    print(
        markdown_table(
            [
                {
                    "objective": name,
                    "params": result["gradient"]["total"],
                    "nonzero entries": result["gradient"]["nonzero"],
                    "max abs (h)": result["gradient"]["largest"],
                    "max abs of those (h/10)": result["gradient"]["largest_fine"],
                    "batch fitness": result["gradient"]["initial"],
                    "after GD": result["gradient"]["after"],
                    "score": result["gradient"]["initial_score"],
                    "score after GD": result["gradient"]["after_score"],
                }
                for name, result in results.items()
            ]
        )
    )
    print(
        f"\nEvolution strategies ({args.generations} generations, popsize {args.popsize}, "
        f"seed {args.seed}; score of the mean: training error, training cross-entropy of the "
        f"quantized net, tour length):\n"
    )
    rows = []
    for name, result in results.items():
        for run in result["runs"]:
            rows.append(
                {
                    "objective": name,
                    "method": run["strategy"],
                    "start": run["initial"],
                    "final": run["final"],
                    "s / generation": run["seconds_per_generation"],
                    "total s": run["total_seconds"],
                    "test accuracy": run.get("test accuracy", "-"),
                }
            )
    print(markdown_table(rows))
    if args.plot:
        plot(results, args.plot)
    return results


if __name__ == "__main__":
    main()
