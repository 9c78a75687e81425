"""Parameter matching: train a student network to reproduce a fixed random teacher of its shape.

Fitness is the mean squared error between student and teacher outputs on a fresh batch of
standard-normal inputs every generation. Each architecture is trained from the same student
initialisation by EGGROLL (ranks 1, 2, 4) and OpenES, with the same population, sigma, optimizer
(Adam) and learning rate, and by Adam on the exact gradient (reverse mode, ``_backprop``) as the
reference; one gradient step counts as one generation. Whole populations go through
:class:`eggroll_opt.nn.PopulationLayers`: EGGROLL never materialises a member's weights.

Architectures (``--arch``):

* ``mlp``: 32 -> 256 -> 256 -> 8, relu.
* ``cnn``: 1x12x12 -> conv 8 -> conv 16 (both 3x3, stride 2, pad 1) -> 32 -> 8, relu.
* ``policy``: 16 -> 64 -> 64 -> 4, tanh throughout (outputs in [-1, 1], like actions).

Reported per method: the loss of the mean (student) on held-out inputs relative to its
initial value, the first generation (and training second) at which it reached ``--target``
(checked every ``--eval-every`` generations), the median seconds per generation and the total
training time. The clock counts the update only (ask, population forward and tell, or gradient
and Adam step); drawing the batch, the teacher's outputs and the held-out evaluation are off it.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from _backprop import Descent, Sequential
from _common import markdown_table, progress

import eggroll_opt as eo
from eggroll_opt import nn

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {
        "input": (32,),
        "layers": {"l1": (256, 32), "l2": (256, 256), "out": (8, 256)},
        "spec": [("dense", "l1"), ("relu",), ("dense", "l2"), ("relu",), ("dense", "out")],
        "gain": 2.0,
    },
    "cnn": {
        "input": (1, 12, 12),
        "layers": {"c1": (8, 1, 3, 3), "c2": (16, 8, 3, 3), "fc": (32, 144), "out": (8, 32)},
        "spec": [
            ("conv2d", "c1", 2, 1),  # 8 x 6 x 6
            ("relu",),
            ("conv2d", "c2", 2, 1),  # 16 x 3 x 3
            ("relu",),
            ("flatten",),
            ("dense", "fc"),
            ("relu",),
            ("dense", "out"),
        ],
        "gain": 2.0,
    },
    "policy": {
        "input": (16,),
        "layers": {"l1": (64, 16), "l2": (64, 64), "out": (4, 64)},
        "spec": [
            ("dense", "l1"),
            ("tanh",),
            ("dense", "l2"),
            ("tanh",),
            ("dense", "out"),
            ("tanh",),
        ],
        "gain": 1.0,
    },
}
METHODS = ("EGGROLL r=1", "EGGROLL r=2", "EGGROLL r=4", "OpenES", "Adam (backprop)")


def init_params(arch: str, seed: int) -> dict[str, Any]:
    """Float32 parameters of ``arch``: weights N(0, gain / fan_in), zero biases."""
    rng = np.random.default_rng(seed)
    gain = ARCHITECTURES[arch]["gain"]
    params = {}
    for name, shape in ARCHITECTURES[arch]["layers"].items():
        fan_in = int(np.prod(shape[1:]))
        weight = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
        params[name] = {"w": weight.astype(np.float32), "b": np.zeros(shape[0], np.float32)}
    return params


def model_of(arch: str) -> Sequential:
    """The architecture as a :class:`Sequential` (one spec for the population and backprop)."""
    return Sequential(ARCHITECTURES[arch]["spec"])


def num_params(arch: str) -> int:
    """The number of parameters of ``arch``, weights and biases."""
    return sum(int(np.prod(s)) + s[0] for s in ARCHITECTURES[arch]["layers"].values())


def inputs(arch: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` standard-normal float32 inputs of the architecture's shape."""
    return rng.standard_normal((count, *ARCHITECTURES[arch]["input"]), dtype=np.float32)


def mse(outputs: Any, targets: np.ndarray) -> np.ndarray:
    """Mean squared error over all output elements, one value per leading member index."""
    difference = outputs - targets
    return (difference * difference).reshape(*difference.shape[: -targets.ndim], -1).mean(-1)


def run(
    arch: str,
    method: str,
    *,
    generations: int,
    popsize: int = 128,
    batch: int = 64,
    sigma: float = 0.02,
    learning_rate: float = 0.003,
    backprop_lr: float = 0.01,
    target: float = 0.25,
    eval_every: int = 5,
    eval_inputs: int = 1024,
    chunk: int = 32,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train one method on one architecture; returns its summary and loss curve.

    Args:
        arch: a key of :data:`ARCHITECTURES`.
        method: one of :data:`METHODS`.
        generations: the budget (one Adam step on the exact gradient is one generation).
        popsize, sigma, learning_rate: the strategies' settings (Adam optimizer).
        batch: inputs per generation, fresh each generation and the same for every method.
        backprop_lr: Adam's learning rate for the exact gradient.
        target: the relative held-out loss whose first generation is reported.
        eval_every: generations between held-out evaluations of the mean.
        eval_inputs: the number of held-out inputs.
        chunk: members per population forward part.
        seed: the teacher uses ``seed``, the student ``seed + 1``, the inputs ``seed + 2``.

    Returns:
        A dict with ``relative_loss`` (final held-out loss / initial), ``generations_to_target``
        and ``seconds_to_target`` (None if not reached), ``seconds_per_generation`` (median),
        ``total_seconds`` and ``curve`` (lists ``generation``, ``seconds``, ``loss`` with the
        loss relative to the initial one).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    model = model_of(arch)
    teacher = init_params(arch, seed)
    student = init_params(arch, seed + 1)
    rng = np.random.default_rng(seed + 2)
    eval_x = inputs(arch, eval_inputs, np.random.default_rng(seed + 3))
    eval_y = model(nn.ParamsLayers(teacher), eval_x)

    def held_out(params: dict[str, Any]) -> float:
        return float(mse(model(nn.ParamsLayers(eo.to_numpy(params)), eval_x), eval_y))

    if method == "Adam (backprop)":
        descent = Descent(model, student, eo.optim.adam(backprop_lr))

        def step(x: np.ndarray, y: np.ndarray) -> None:
            descent.step(x, y, "mse")  # in place: the leaves of ``student``

        def mean_params() -> dict[str, Any]:
            return student
    else:
        options = dict(popsize=popsize, sigma=sigma, learning_rate=learning_rate, seed=seed)
        if method == "OpenES":
            es: eo.Eggroll = eo.OpenES(student, backend="numpy", **options)
        else:
            es = eo.Eggroll(student, rank=int(method[-1]), backend="numpy", **options)

        def step(x: np.ndarray, y: np.ndarray) -> None:
            pop = es.ask()
            fitness = [
                eo.to_numpy(mse(model(nn.PopulationLayers(part), x), y))
                for part in pop.split(chunk)
            ]
            es.tell(np.concatenate(fitness))

        def mean_params() -> dict[str, Any]:
            return es.params

    initial = held_out(mean_params())
    curve: dict[str, list[float]] = {"generation": [0], "seconds": [0.0], "loss": [1.0]}
    times: list[float] = []
    reached, reached_seconds = None, None
    with progress(generations, f"{arch} {method}", enabled=show_progress) as bar:
        for generation in range(1, generations + 1):
            x = inputs(arch, batch, rng)
            y = model(nn.ParamsLayers(teacher), x)
            start = time.perf_counter()
            step(x, y)
            times.append(time.perf_counter() - start)
            if generation % eval_every == 0 or generation == generations:
                relative = held_out(mean_params()) / initial
                curve["generation"].append(generation)
                curve["seconds"].append(float(np.sum(times)))
                curve["loss"].append(relative)
                if reached is None and relative <= target:
                    reached, reached_seconds = generation, curve["seconds"][-1]
                bar.set_postfix_str(f"loss {relative:.3f}")
            bar.update()
    return {
        "arch": arch,
        "method": method,
        "params": num_params(arch),
        "initial_loss": initial,
        "relative_loss": curve["loss"][-1],
        "generations_to_target": reached,
        "seconds_to_target": reached_seconds,
        "seconds_per_generation": float(np.median(times)),
        "total_seconds": float(np.sum(times)),
        "curve": curve,
    }


def summary_rows(results: Sequence[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Table rows of :func:`run` results."""
    return [
        {
            "arch": r["arch"],
            "method": r["method"],
            "params": r["params"],
            "final loss / initial": r["relative_loss"],
            f"generations to {target:g}": r["generations_to_target"] or "not reached",
            f"s to {target:g}": "-" if r["seconds_to_target"] is None else r["seconds_to_target"],
            "ms / generation": 1e3 * r["seconds_per_generation"],
            "total s": r["total_seconds"],
        }
        for r in results
    ]


def plot_grid(results: Sequence[dict[str, Any]], path: str, target: float) -> bool:
    """Relative held-out loss against generation and seconds, one row per architecture."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[examples]')")
        return False
    archs = list(dict.fromkeys(r["arch"] for r in results))
    figure, axes = plt.subplots(
        len(archs), 2, figsize=(11, 3.6 * len(archs)), squeeze=False, sharey="row"
    )
    for row, arch in zip(axes, archs, strict=True):
        for result in (r for r in results if r["arch"] == arch):
            for axis, x in zip(row, ("generation", "seconds"), strict=True):
                axis.plot(result["curve"][x], result["curve"]["loss"], label=result["method"])
        for axis, x in zip(row, ("generation", "seconds"), strict=True):
            axis.axhline(target, color="grey", linestyle=":", linewidth=1)
            axis.set_yscale("log")
            axis.set_xlabel(x)
            axis.grid(alpha=0.3)
        row[0].set_ylabel(f"{arch}: loss / initial")
    axes[0][0].legend(fontsize=8)
    figure.suptitle("Parameter matching: held-out MSE to the teacher, relative to the start")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path}")
    return True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared with ``run_all_comparisons.py``."""
    parser.add_argument("--generations", type=int, default=500, help="budget (default 500)")
    parser.add_argument("--popsize", type=int, default=128, help="population (default 128)")
    parser.add_argument("--batch", type=int, default=64, help="inputs per generation (64)")
    parser.add_argument("--sigma", type=float, default=0.02, help="noise scale (default 0.02)")
    parser.add_argument("--learning-rate", type=float, default=0.003, help="ES Adam step (0.003)")
    parser.add_argument("--backprop-lr", type=float, default=0.01, help="backprop Adam step (0.01)")
    parser.add_argument("--target", type=float, default=0.25, help="loss / initial to reach (0.25)")
    parser.add_argument("--eval-every", type=int, default=5, help="generations per evaluation (5)")
    parser.add_argument("--eval-inputs", type=int, default=1024, help="held-out inputs (1024)")
    parser.add_argument("--chunk", type=int, default=32, help="members per forward part (32)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--threads", type=int, default=0, help="BLAS threads (default: all; --quick: 1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_quick(args: argparse.Namespace) -> None:
    """The --quick sizes: a handful of generations with a small population."""
    if args.quick:
        args.generations, args.popsize, args.batch, args.eval_every = 15, 16, 16, 5
        args.eval_inputs = 256
        args.threads = args.threads or 1


@contextlib.contextmanager
def blas_threads(threads: int) -> Iterator[None]:
    """Cap the BLAS thread pool at ``threads`` (0: leave it) while the block runs.

    The matrices here are small, so extra threads mostly add start-up and contention. Needs
    threadpoolctl; without it the block runs unchanged.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threads = 0
    if not threads:
        yield
        return
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


def run_methods(
    archs: Sequence[str], args: argparse.Namespace, *, show_progress: bool = True
) -> list[dict[str, Any]]:
    """:func:`run` for every architecture in ``archs`` and every method in ``args.methods``."""
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with blas_threads(args.threads):
        return [
            run(
                arch,
                method,
                generations=args.generations,
                popsize=args.popsize,
                batch=args.batch,
                sigma=args.sigma,
                learning_rate=args.learning_rate,
                backprop_lr=args.backprop_lr,
                target=args.target,
                eval_every=args.eval_every,
                eval_inputs=args.eval_inputs,
                chunk=args.chunk,
                seed=args.seed,
                show_progress=show_progress and not args.no_progress,
            )
            for arch in archs
            for method in methods
        ]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns ``{"results": [...], "table": str}``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=[*ARCHITECTURES, "all"], default="mlp")
    add_arguments(parser)
    parser.add_argument(
        "--plot", default=None, help="PNG path (default parameter_matching.png; off in --quick)"
    )
    args = parser.parse_args(argv)
    apply_quick(args)
    if args.plot is None and not args.quick:
        args.plot = "parameter_matching.png"
    archs = list(ARCHITECTURES) if args.arch == "all" else [args.arch]
    results = run_methods(archs, args)
    table = markdown_table(summary_rows(results, args.target))
    print(
        f"\n{args.generations} generations, popsize {args.popsize}, batch {args.batch}, "
        f"sigma {args.sigma}, ES lr {args.learning_rate}, backprop lr {args.backprop_lr}\n"
    )
    print(table)
    if args.plot:
        plot_grid(results, args.plot, args.target)
    return {"results": results, "table": table}


if __name__ == "__main__":
    main()
