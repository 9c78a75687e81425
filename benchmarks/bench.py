"""``python -m eggroll_opt bench``: the project's benchmark tables, measured on this machine.

Sections (each a table in the report, every row also in the JSON file):

* ``scale``: time and peak memory per generation at popsize 256, EGGROLL (rank 1) against
  standard ES (``OpenES``, the same library with dense noise), for MLPs of 4 square layers with
  about 1M, 10M and 100M parameters: (a) strategy work (ask + tell) and (b) a whole generation
  (ask + population forward on a batch + fitness + tell). A configuration whose predicted peak
  exceeds the memory cap is not run; its row gives the memory it would need.
* ``popsize``: the same at about 1M parameters for popsizes 50 ... 1024 (and 4096 for EGGROLL).
* ``rank``: ranks 1, 2, 4: time, memory and the fitness reached on the matching task.
* ``convergence``: a student MLP trained to reproduce a teacher MLP's outputs: generations and
  seconds to reach 10% of the initial loss for EGGROLL r=1, r=2, OpenES and gradient descent.
* ``forward``: the population forward pass against plain batch inference (one GEMM per layer
  on popsize x batch inputs) at 1024 x 1024 layers.
* ``peers``: EGGROLL beside peer libraries on two tasks (a 1024 x 1024 linear model; the MNIST
  CNN of ``examples/mnist.py``, with inference floors), each peer a row that says why when it is
  not installed (see ``docs/peers.md``; :mod:`benchmarks.peers`).
* ``blackbox``: step-size adaptation on BBOB functions beside CMA-ES and sep-CMA-ES
  (:mod:`benchmarks.blackbox`; here d = 10 and 100, or the sphere and the row x column
  ellipsoid with ``--quick``; d = 1024 and 4096 run with ``python -m benchmarks.blackbox``,
  see ``docs/blackbox.md``).
* ``sequence``: a 1.15M-parameter character language model (embedding, minGRU, layer norm,
  head) at popsize 256, 4096 and 16384: time and peak memory per generation, the population
  forward beside plain batch inference of the same model, OpenES where its noise fits
  (:mod:`benchmarks.sequence`; toy sizes with ``--quick``).

Timings: warm-up, then repeats; medians with min-max. Peak memory: tracemalloc (NumPy) or the
CuPy pool's growth. Ratios are taken between rows of the same run.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt import nn
from eggroll_opt._backend import Backend, get_backend

from ._measure import command_line, describe, machine, peak_bytes, synchronize, time_call
from .blackbox import markdown_blackbox, section_blackbox
from .peers import markdown_peers, section_peers
from .sequence import markdown_sequence, section_sequence

GB = 2**30
MB = 2**20
DEPTH = 4  # square layers per MLP
BATCH = 4  # inputs per member in a whole generation


# -- models ----------------------------------------------------------------------------------
def square_mlp(width: int, depth: int = DEPTH, seed: int = 0) -> dict[str, Any]:
    """``depth`` layers of width x width (float32), about depth * width² parameters."""
    rng = np.random.default_rng(seed)
    return {
        f"l{i}": {
            "w": (rng.standard_normal((width, width)) / math.sqrt(width)).astype(np.float32),
            "b": np.zeros(width, np.float32),
        }
        for i in range(depth)
    }


def mlp_forward(layers: Any, x: Any, depth: int) -> Any:
    """tanh MLP; the last layer is linear."""
    for i in range(depth - 1):
        x = nn.tanh(layers.dense(f"l{i}", x))
    return layers.dense(f"l{depth - 1}", x)


def _settings(backend: Backend, popsize: int, **kwargs: Any) -> dict[str, Any]:
    return dict(popsize=popsize, sigma=0.01, learning_rate=1e-3, seed=0, backend=backend, **kwargs)


# -- the generation being measured -----------------------------------------------------------
class Workload:
    """One strategy on one square MLP, with a fixed input batch and target outputs."""

    def __init__(
        self, cls: type[eo.Eggroll], width: int, popsize: int, backend: Backend, rank: int = 1
    ) -> None:
        xp = backend.xp
        self.xp = xp
        extra = {"rank": rank} if cls is eo.Eggroll else {}
        self.strategy = cls(square_mlp(width), **_settings(backend, popsize, **extra))
        rng = np.random.default_rng(1)
        self.x = xp.asarray(rng.standard_normal((BATCH, width)), dtype=xp.float32)
        self.target = xp.asarray(rng.standard_normal((BATCH, width)), dtype=xp.float32)
        self.fitness = np.random.default_rng(2).standard_normal(popsize)

    def strategy_work(self) -> None:
        """ask + tell with precomputed fitness."""
        self.strategy.ask()
        self.strategy.tell(self.fitness)

    def generation(self) -> None:
        """ask + population forward + fitness + tell."""
        pop = self.strategy.ask()
        out = mlp_forward(nn.PopulationLayers(pop), self.x, DEPTH)
        losses = ((out - self.target) ** 2).mean(axis=(1, 2))
        self.strategy.tell(eo.to_numpy(losses))


def predicted_peak_bytes(kind: str, params: int, popsize: int, width: int, rank: int = 1) -> int:
    """Peak memory of one whole generation, from the data each strategy must hold.

    OpenES holds the dense noise of K = N/2 draws (K·d floats) plus the per-member forward's
    activations; EGGROLL holds K·r·(m+n) noise numbers per layer plus the activations. Both hold
    a gradient and a new mean (2·d floats) during ``tell``. Checked against measured rows.
    """
    draws = popsize // 2
    activations = 3 * popsize * BATCH * width * 4
    if kind == "OpenES":
        return draws * params * 4 + 2 * params * 4 + activations
    return draws * rank * 2 * width * DEPTH * 4 + 2 * params * 4 + activations


# -- sections --------------------------------------------------------------------------------
def _measure(workload: Workload, which: str, repeats: int) -> dict[str, Any]:
    function: Callable[[], None] = getattr(workload, which)
    timing = time_call(function, workload.xp, warmup=1, repeats=repeats)
    peak = peak_bytes(function, workload.xp)
    return {"seconds": timing, "peak_bytes": peak}


def _config_row(
    section: str,
    cls: type[eo.Eggroll],
    width: int,
    popsize: int,
    backend: Backend,
    repeats: int,
    memory_cap: float,
    strategy_work: bool,
) -> dict[str, Any]:
    """Measure one (strategy, width, popsize), or say what it would need above the cap."""
    params = DEPTH * (width * width + width)
    predicted = predicted_peak_bytes(cls.__name__, params, popsize, width)
    row: dict[str, Any] = {
        "strategy": cls.__name__,
        "params": params,
        "width": width,
        "popsize": popsize,
        "predicted_peak_bytes": predicted,
    }
    label = f"  {section}: {cls.__name__} {params / 1e6:.1f}M N={popsize}"
    if predicted > memory_cap:
        row["skipped"] = f"needs about {predicted / GB:.1f} GB > cap {memory_cap / GB:.0f} GB"
        print(f"{label}: {row['skipped']}", flush=True)
        return row
    workload = Workload(cls, width, popsize, backend)
    slow = cls is eo.OpenES or params > 5e7
    reps = max(2, repeats // 3) if slow else repeats
    if strategy_work:
        row["strategy_work"] = _measure(workload, "strategy_work", reps)
    row["generation"] = _measure(workload, "generation", reps)
    generation = row["generation"]
    print(
        f"{label}: generation {generation['seconds']['median']:.3f} s, peak "
        f"{generation['peak_bytes'] / MB:.0f} MB",
        flush=True,
    )
    return row


def section_scale(
    backend: Backend,
    widths: list[int],
    popsize: int,
    repeats: int,
    memory_cap: float,
    big_popsize: int | None,
) -> list[dict[str, Any]]:
    configs = [(cls, width, popsize) for width in widths for cls in (eo.Eggroll, eo.OpenES)]
    if big_popsize:
        configs.append((eo.Eggroll, widths[-1], big_popsize))
    return [
        _config_row("scale", cls, width, size, backend, repeats, memory_cap, True)
        for cls, width, size in configs
    ]


def section_popsize(
    backend: Backend,
    width: int,
    sizes: list[int],
    eggroll_only: list[int],
    repeats: int,
    memory_cap: float,
) -> list[dict[str, Any]]:
    configs = [(cls, size) for size in sizes for cls in (eo.Eggroll, eo.OpenES)]
    configs += [(eo.Eggroll, size) for size in eggroll_only]
    return [
        _config_row("popsize", cls, width, size, backend, repeats, memory_cap, False)
        for cls, size in configs
    ]


# -- the matching task: a student reproduces a teacher's outputs -------------------------------
class MatchingTask:
    """Student and teacher MLPs in -> hidden -> hidden -> out; loss = MSE of their outputs."""

    def __init__(
        self, width: int, seed: int = 0, inputs: int = 16, outputs: int = 4, samples: int = 256
    ) -> None:
        rng = np.random.default_rng(seed)
        self.shapes = [(width, inputs), (width, width), (outputs, width)]
        self.depth = len(self.shapes)
        teacher = self._init(rng)
        self.student = self._init(rng)
        self.x = rng.standard_normal((samples, inputs)).astype(np.float32)
        self.y = mlp_forward(nn.ParamsLayers(teacher), self.x, self.depth)
        self.initial_loss = self.loss(self.student)

    def _init(self, rng: np.random.Generator) -> dict[str, Any]:
        return {
            f"l{i}": {
                "w": (rng.standard_normal(s) / math.sqrt(s[1])).astype(np.float32),
                "b": (0.1 * rng.standard_normal(s[0])).astype(np.float32),
            }
            for i, s in enumerate(self.shapes)
        }

    def loss(self, params: dict[str, Any]) -> float:
        out = mlp_forward(nn.ParamsLayers(eo.to_numpy(params)), self.x, self.depth)
        return float(np.mean((out - self.y) ** 2))

    def population_losses(self, pop: eo.Population) -> Any:
        out = mlp_forward(nn.PopulationLayers(pop), self.x, self.depth)
        return eo.to_numpy(((out - self.y) ** 2).mean(axis=(1, 2)))

    def gradient(self, params: dict[str, Any]) -> dict[str, Any]:
        """Backpropagation of the MSE through the tanh MLP, by hand."""
        activations = [self.x]
        for i in range(self.depth - 1):
            layer = params[f"l{i}"]
            activations.append(np.tanh(activations[-1] @ layer["w"].T + layer["b"]))
        last = params[f"l{self.depth - 1}"]
        out = activations[-1] @ last["w"].T + last["b"]
        delta = 2 * (out - self.y) / out.size
        grads: dict[str, Any] = {}
        for i in reversed(range(self.depth)):
            grads[f"l{i}"] = {"w": delta.T @ activations[i], "b": delta.sum(axis=0)}
            if i:
                delta = (delta @ params[f"l{i}"]["w"]) * (1 - activations[i] ** 2)
        return grads


def run_matching(
    method: str,
    task: MatchingTask,
    generations: int,
    popsize: int,
    backend: Backend,
    target_fraction: float = 0.1,
) -> dict[str, Any]:
    """Train until the loss falls to ``target_fraction`` of its start (or the budget ends)."""
    target = target_fraction * task.initial_loss
    start = time.perf_counter()
    history = []
    reached: tuple[int, float] | None = None
    if method == "gradient descent":
        params = eo.to_numpy(task.student)
        optimizer = eo.optim.adam(0.01)
        flat = {f"{k}/{n}": v.copy() for k, layer in params.items() for n, v in layer.items()}
        state = optimizer.init(flat)
        for generation in range(generations):
            tree = {k: {"w": flat[f"{k}/w"], "b": flat[f"{k}/b"]} for k in params}
            grads = task.gradient(tree)
            flat_grads = {
                f"{k}/{n}": v.astype(np.float32) for k, g in grads.items() for n, v in g.items()
            }
            updates, state = optimizer.update(flat_grads, state, flat)
            flat = {k: flat[k] + updates[k] for k in flat}
            loss = task.loss({k: {"w": flat[f"{k}/w"], "b": flat[f"{k}/b"]} for k in params})
            history.append((generation + 1, time.perf_counter() - start, loss))
            if reached is None and loss <= target:
                reached = (generation + 1, time.perf_counter() - start)
                break
    else:
        cls = eo.OpenES if method == "OpenES" else eo.Eggroll
        extra: dict[str, Any] = {"rank": int(method.split("r=")[1])} if "r=" in method else {}
        es = cls(
            task.student,
            popsize=popsize,
            sigma=0.03,
            learning_rate=0.01,
            seed=0,
            backend=backend,
            **extra,
        )
        for generation in range(generations):
            es.tell(task.population_losses(es.ask()))
            loss = task.loss(es.params)
            history.append((generation + 1, time.perf_counter() - start, loss))
            if reached is None and loss <= target:
                reached = (generation + 1, time.perf_counter() - start)
                break
    return {
        "method": method,
        "generations_to_target": reached[0] if reached else None,
        "seconds_to_target": reached[1] if reached else None,
        "final_loss_fraction": history[-1][2] / task.initial_loss,
        "generations_run": len(history),
        "history": history,
    }


def section_convergence(
    backend: Backend, width: int, generations: int, popsize: int
) -> list[dict[str, Any]]:
    task = MatchingTask(width)
    rows = []
    for method in ("Eggroll r=1", "Eggroll r=2", "OpenES", "gradient descent"):
        row = run_matching(method, task, generations, popsize, backend)
        rows.append(row)
        print(f"  convergence: {method}: {row['generations_to_target']} generations", flush=True)
    return rows


def section_rank(
    backend: Backend, width: int, popsize: int, repeats: int, match_width: int, generations: int
) -> list[dict[str, Any]]:
    rows = []
    task = MatchingTask(match_width)
    for rank in (1, 2, 4):
        workload = Workload(eo.Eggroll, width, popsize, backend, rank=rank)
        row: dict[str, Any] = {"rank": rank, "params": DEPTH * (width * width + width)}
        row.update(_measure(workload, "generation", repeats))
        matching = run_matching(
            f"Eggroll r={rank}", task, generations, popsize, backend, target_fraction=0.0
        )
        row["final_loss_fraction"] = matching["final_loss_fraction"]
        row["matching_generations"] = generations
        rows.append(row)
        print(f"  rank {rank}: {row['seconds']['median']:.3f} s", flush=True)
    return rows


def section_forward(
    backend: Backend, width: int, popsize: int, batch: int, repeats: int
) -> list[dict[str, Any]]:
    xp = backend.xp
    rows = []
    es = eo.Eggroll(square_mlp(width, depth=1), **_settings(backend, popsize))
    pop = es.ask()
    weight = es.params["l0"]["w"]
    rng = np.random.default_rng(3)
    per_member = xp.asarray(rng.standard_normal((popsize, batch, width)), dtype=xp.float32)
    shared = xp.asarray(rng.standard_normal((batch, width)), dtype=xp.float32)
    flat = per_member.reshape(-1, width)
    plain = time_call(lambda: flat @ weight.T, xp, warmup=1, repeats=repeats)
    hidden = time_call(lambda: pop.linear("l0/w", per_member), xp, warmup=1, repeats=repeats)
    first = time_call(lambda: pop.linear("l0/w", shared), xp, warmup=1, repeats=repeats)
    for name, timing in (
        ("plain batch inference (N·batch rows, one GEMM)", plain),
        ("population linear, per-member inputs", hidden),
        ("population linear, shared input", first),
    ):
        rows.append(
            {
                "case": name,
                "seconds": timing,
                "throughput_vs_plain": plain["median"] / timing["median"],
            }
        )
    synchronize(xp)
    return rows


# -- report ----------------------------------------------------------------------------------
def _ms(seconds: dict[str, float]) -> str:
    return f"{seconds['median'] * 1e3:.1f} ({seconds['min'] * 1e3:.1f}-{seconds['max'] * 1e3:.1f})"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# eggroll_opt benchmark ({result['backend']}, {result['mode']})",
        "",
        f"Command: `{result['command']}`; {result['total_seconds']:.0f} s in all.",
        "",
        f"Machine: {describe(result['machine'])}",
        "",
    ]
    scale = result["sections"].get("scale", [])
    if scale:
        lines += [
            "## Time and memory per generation (popsize as given, batch "
            f"{BATCH} per member, rank 1)",
            "",
            "| strategy | params | popsize | ask+tell ms | whole generation ms | "
            "peak MB (generation) | predicted peak MB |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in scale:
            if "skipped" in row:
                lines.append(
                    f"| {row['strategy']} | {row['params'] / 1e6:.1f}M | {row['popsize']}"
                    f" | not run | not run | {row['skipped']} | "
                    f"{row['predicted_peak_bytes'] / MB:.0f} |"
                )
                continue
            lines.append(
                f"| {row['strategy']} | {row['params'] / 1e6:.1f}M | {row['popsize']} | "
                f"{_ms(row['strategy_work']['seconds'])} | {_ms(row['generation']['seconds'])} | "
                f"{row['generation']['peak_bytes'] / MB:.0f} | "
                f"{row['predicted_peak_bytes'] / MB:.0f} |"
            )
        lines += [
            "",
            "| params | OpenES / EGGROLL ask+tell time | whole generation time | "
            "generation peak memory |",
            "|---|---:|---:|---:|",
        ]
        by_key = {(r["strategy"], r["params"], r["popsize"]): r for r in scale}
        for row in scale:
            other = by_key.get(("OpenES", row["params"], row["popsize"]))
            if row["strategy"] != "Eggroll" or other is None or "skipped" in row:
                continue
            if "skipped" in other:
                lines.append(
                    f"| {row['params'] / 1e6:.1f}M | OpenES not run | | needs "
                    f"{other['predicted_peak_bytes'] / GB:.1f} GB vs "
                    f"{row['generation']['peak_bytes'] / MB:.0f} MB |"
                )
                continue
            ratios = [
                other[k]["seconds"]["median"] / row[k]["seconds"]["median"]
                for k in ("strategy_work", "generation")
            ]
            memory = other["generation"]["peak_bytes"] / max(row["generation"]["peak_bytes"], 1)
            lines.append(
                f"| {row['params'] / 1e6:.1f}M | {ratios[0]:.0f}x | {ratios[1]:.0f}x | "
                f"{memory:.0f}x |"
            )
        lines.append("")
    popsize = result["sections"].get("popsize", [])
    if popsize:
        lines += [
            f"## Population scaling (about {popsize[0]['params'] / 1e6:.1f}M parameters)",
            "",
            "| strategy | popsize | whole generation ms | peak MB |",
            "|---|---:|---:|---:|",
        ]
        for row in popsize:
            if "skipped" in row:
                lines.append(f"| {row['strategy']} | {row['popsize']} | {row['skipped']} | |")
                continue
            lines.append(
                f"| {row['strategy']} | {row['popsize']} | "
                f"{_ms(row['generation']['seconds'])} | "
                f"{row['generation']['peak_bytes'] / MB:.0f} |"
            )
        lines.append("")
    rank = result["sections"].get("rank", [])
    if rank:
        lines += [
            "## Rank",
            "",
            "| rank | whole generation ms | peak MB | matching loss after "
            "budget (fraction of start) |",
            "|---:|---:|---:|---:|",
        ]
        for row in rank:
            lines.append(
                f"| {row['rank']} | {_ms(row['seconds'])} | "
                f"{row['peak_bytes'] / MB:.0f} | {row['final_loss_fraction']:.3f} "
                f"({row['matching_generations']} generations) |"
            )
        lines.append("")
    convergence = result["sections"].get("convergence", [])
    if convergence:
        lines += [
            "## Convergence: a student MLP reproduces a teacher's outputs (target: 10% of "
            "the initial loss)",
            "",
            "| method | generations to target | seconds to target | final loss fraction |",
            "|---|---:|---:|---:|",
        ]
        for row in convergence:
            gens = row["generations_to_target"] or f"not in {row['generations_run']}"
            secs = f"{row['seconds_to_target']:.2f}" if row["seconds_to_target"] else "-"
            lines.append(
                f"| {row['method']} | {gens} | {secs} | {row['final_loss_fraction']:.3f} |"
            )
        lines.append("")
    if result["sections"].get("peers"):
        lines += [markdown_peers(result["sections"]["peers"]), ""]
    if result["sections"].get("blackbox"):
        lines += [markdown_blackbox(result["sections"]["blackbox"]), ""]
    if result["sections"].get("sequence"):
        lines += [markdown_sequence(result["sections"]["sequence"]), ""]
    forward = result["sections"].get("forward", [])
    if forward:
        lines += [
            "## Population forward pass against plain batch inference",
            "",
            "| case | ms | throughput vs plain |",
            "|---|---:|---:|",
        ]
        for row in forward:
            lines.append(
                f"| {row['case']} | {_ms(row['seconds'])} | {row['throughput_vs_plain']:.0%} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(result: dict[str, Any], folder: str) -> list[str]:
    """PNG plots of the convergence and population-scaling sections (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'eggroll_opt[bench]')")
        return []
    written = []
    convergence = result["sections"].get("convergence", [])
    if convergence:
        figure, axes = plt.subplots(1, 2, figsize=(10, 4))
        for row in convergence:
            history = np.array(row["history"])
            for axis, column in zip(axes, (0, 1), strict=True):
                axis.semilogy(history[:, column], history[:, 2], label=row["method"])
        axes[0].set_xlabel("generation")
        axes[1].set_xlabel("seconds")
        axes[0].set_ylabel("loss")
        axes[0].legend()
        figure.tight_layout()
        path = os.path.join(folder, "convergence.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    popsize = [r for r in result["sections"].get("popsize", []) if "generation" in r]
    if popsize:
        figure, axis = plt.subplots(figsize=(5, 4))
        for name in ("Eggroll", "OpenES"):
            rows = [r for r in popsize if r["strategy"] == name]
            axis.loglog(
                [r["popsize"] for r in rows],
                [r["generation"]["seconds"]["median"] for r in rows],
                "o-",
                label=name,
            )
        axis.set_xlabel("popsize")
        axis.set_ylabel("seconds per generation")
        axis.legend()
        figure.tight_layout()
        path = os.path.join(folder, "popsize.png")
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (``python -m eggroll_opt bench``)."""
    parser = command_line("python -m eggroll_opt bench", __doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument(
        "--out",
        default="bench-results",
        help="folder for report.md, results.json and plots (default bench-results)",
    )
    parser.add_argument(
        "--memory-cap-gb",
        type=float,
        default=8.0,
        help="skip configurations predicted above this (default 8)",
    )
    parser.add_argument(
        "--sections",
        default=None,
        help="comma-separated subset of scale,popsize,rank,convergence,forward,blackbox,"
        "sequence,peers "
        "(default: all; --quick leaves out peers)",
    )
    args = parser.parse_args(argv)
    backend = get_backend(args.backend)
    cap = args.memory_cap_gb * GB
    all_sections = "scale,popsize,rank,convergence,forward,blackbox,sequence" + (
        "" if args.quick else ",peers"
    )
    wanted = set((args.sections or all_sections).split(","))
    start = time.perf_counter()
    sections: dict[str, Any] = {}
    quick = args.quick
    if "scale" in wanted:
        widths = [512] if quick else [512, 1600, 5000]
        sections["scale"] = section_scale(
            backend, widths, 64 if quick else 256, 3 if quick else 5, cap, None if quick else 1024
        )
    if "popsize" in wanted:
        sections["popsize"] = section_popsize(
            backend,
            512,
            [50, 100, 256] if quick else [50, 100, 256, 512, 1024],
            [] if quick else [4096],
            3 if quick else 5,
            cap,
        )
    if "rank" in wanted:
        sections["rank"] = section_rank(
            backend,
            512,
            64 if quick else 256,
            3,
            match_width=32 if quick else 64,
            generations=30 if quick else 300,
        )
    if "convergence" in wanted:
        sections["convergence"] = section_convergence(
            backend, 32 if quick else 64, 60 if quick else 1500, 64 if quick else 256
        )
    if "forward" in wanted:
        sections["forward"] = section_forward(
            backend, 256 if quick else 1024, 64 if quick else 256, 8, 3 if quick else 7
        )
    if "peers" in wanted:
        # The linear task at the machine's thread settings, the MNIST CNN at 1 and 2 threads.
        sections["peers"] = section_peers(quick) + section_peers(quick, "mnist-cnn", [1, 2])
    if "blackbox" in wanted:
        sections["blackbox"] = section_blackbox(
            quick, dims=None if quick else [10, 100], progress=None
        )
    if "sequence" in wanted:
        sections["sequence"] = section_sequence(quick, backend=backend, memory_cap=cap)
    result = {
        "backend": backend.name,
        "mode": "quick" if quick else "full",
        "command": "python -m eggroll_opt bench"
        + (" --quick" if quick else "")
        + (f" --backend {args.backend}" if args.backend != "numpy" else ""),
        "machine": machine(),
        "sections": sections,
        "total_seconds": time.perf_counter() - start,
    }
    os.makedirs(args.out, exist_ok=True)
    text = markdown(result)
    with open(os.path.join(args.out, "report.md"), "w") as file:
        file.write(text + "\n")
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(result, file, indent=1, default=float)
    written = plots(result, args.out)
    print(text)
    print(
        f"written: {args.out}/report.md, {args.out}/results.json"
        + "".join(f", {p}" for p in written)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
