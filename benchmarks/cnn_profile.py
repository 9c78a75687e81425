"""Where a generation of the MNIST CNN spends its time: layer by layer, beside plain inference.

The network and sizes of ``examples/mnist.py`` (conv 1->8, 3x3, stride 2, padding 1 -> relu ->
conv 8->16, same -> relu -> flatten -> dense 784->64 -> relu -> dense 64->10, float32), popsize
256, one shared batch of 128 images, ``Eggroll`` (rank 1, Adam), the population evaluated in
parts of ``--chunk`` members. Images are random: the cost does not depend on their content, and
the run needs no data set.

What it does set is glibc's ``malloc`` (with ``mallopt``, where the C library is glibc), as a
process that has loaded a data set has it: glibc serves an allocation above a threshold with
fresh pages from the kernel and hands them back when it is freed, and raises that threshold (up
to 32 MiB) only after the process frees a block of that size, as loading and converting MNIST
does. Without that, every part's activations cost page faults: ``--malloc default`` against
the default ``--malloc as-loaded``, run in turn on the 2-core machine, gave 0.39-0.41 s against
0.23-0.26 s a generation, the first convolution about 3x and the ReLUs about 2x as long. The
environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set the same for
any program.

Two measurements, each layer timed on its own (wall-clock and this process's CPU seconds, the
latter less disturbed by other work on the machine):

* the generation: ``ask``, each layer of the population forward, the loss, ``tell``;
* plain inference of the mean parameters (:class:`eggroll_opt.nn.ParamsLayers`) on the same
  number of images (popsize x batch), in calls of each ``--inference-chunks`` size.

*Forward / inference* is the throughput of the population forward over that of the fastest
inference: above 1, evaluating the population costs less than running its images through one
network. The model is written here (not imported from the example) so the same file profiles
any version of the library: ``PYTHONPATH=<other checkout> python benchmarks/cnn_profile.py``.

Run ``python -m benchmarks.cnn_profile [--threads 1] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt import nn

if __package__:
    from ._measure import command_line, describe, machine, write_report
    from .blackbox import blas_threads
else:  # run as a file against another checkout's library
    sys.path.insert(0, __file__.rsplit("/", 2)[0])
    from benchmarks._measure import command_line, describe, machine, write_report
    from benchmarks.blackbox import blas_threads

LAYERS = ("conv c1", "relu", "conv c2", "dense fc", "dense out", "loss")
KINDS = ("wall", "cpu")


class Clock:
    """Seconds (wall and CPU) spent in each named step, summed over calls."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)

    def __call__(self, name: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = function(*args, **kwargs)
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += time.process_time() - cpu
        return out


def settle_malloc() -> str:
    """glibc's thresholds as after freeing a 32 MiB block (see the module docstring); says what
    it did."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "default (not glibc)"
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not (mallopt(m_mmap_threshold, 32 * 2**20) and mallopt(m_trim_threshold, 64 * 2**20)):
        return "default (mallopt refused)"
    return "glibc mmap threshold 32 MiB, trim threshold 64 MiB"


def medians(clocks: list[Clock], steps: list[str], total: str) -> dict[str, dict[str, float]]:
    """Each step's median wall and CPU seconds over ``clocks``, and their sum's as ``total``."""
    rows = {
        step: {kind: statistics.median(getattr(c, kind)[step] for c in clocks) for kind in KINDS}
        for step in steps
    }
    rows[total] = {
        kind: statistics.median(sum(getattr(c, kind).values()) for c in clocks) for kind in KINDS
    }
    return rows


def init_cnn(seed: int = 0, width: int = 64) -> dict[str, Any]:
    """He-initialised float32 parameters, as ``examples/mnist.py`` makes them."""
    rng = np.random.default_rng(seed)

    def layer(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        weight = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
        return {"w": weight.astype(np.float32), "b": np.zeros(shape[0], np.float32)}

    return {
        "c1": layer((8, 1, 3, 3)),
        "c2": layer((16, 8, 3, 3)),
        "fc": layer((width, 784)),
        "out": layer((10, width)),
    }


def losses(layers: Any, images: Any, labels: Any, clock: Clock) -> Any:
    """The CNN's cross-entropy, each step timed by ``clock``."""
    x = clock("conv c1", layers.conv2d, "c1", images, stride=2, padding=1)
    x = clock("relu", nn.relu, x)
    x = clock("conv c2", layers.conv2d, "c2", x, stride=2, padding=1)
    x = clock("relu", nn.relu, x)
    x = clock("dense fc", layers.dense, "fc", layers.flatten(x))
    x = clock("relu", nn.relu, x)
    x = clock("dense out", layers.dense, "out", x)
    return clock("loss", nn.cross_entropy, x, labels)


def profile(
    *, popsize: int, batch: int, chunk: int, inference_chunks: list[int], generations: int
) -> dict[str, Any]:
    """Per-step seconds of a generation and of plain inference (medians over repeats)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    es = eo.Eggroll(
        init_cnn(), popsize=popsize, sigma=0.02, learning_rate=0.01, seed=0, backend="numpy"
    )
    per_generation: list[Clock] = []
    for generation in range(generations + 1):  # the first is a warm-up
        clock = Clock()
        pop = clock("ask", es.ask)
        fitness = np.concatenate(
            [losses(nn.PopulationLayers(part), images, labels, clock) for part in pop.split(chunk)]
        )
        clock("tell", es.tell, fitness)
        if generation:
            per_generation.append(clock)
    generation_rows = medians(per_generation, ["ask", *LAYERS, "tell"], total="generation")
    # Plain inference of the mean on popsize * batch images (the batch repeated).
    layers = nn.ParamsLayers(eo.to_numpy(es.params))
    total = popsize * batch
    all_images = np.concatenate([images] * popsize)
    all_labels = np.concatenate([labels] * popsize)
    inference = {}
    for size in inference_chunks:
        clocks = []
        for _ in range(max(2, generations // 2) + 1):
            clock = Clock()
            for start in range(0, total, size):
                part = slice(start, start + size)
                losses(layers, all_images[part], all_labels[part], clock)
            clocks.append(clock)
        rows = medians(clocks[1:], list(LAYERS), total="total")
        inference[size] = rows
    return {
        "popsize": popsize,
        "batch": batch,
        "chunk": chunk,
        "generations": generations,
        "generation": generation_rows,
        "inference": inference,
    }


def markdown(result: dict[str, Any]) -> str:
    """The per-step table and the forward / inference ratios."""
    generation, inference = result["generation"], result["inference"]
    best = min(inference, key=lambda size: inference[size]["total"]["cpu"])
    lines = [
        f"## MNIST CNN: a generation layer by layer (popsize {result['popsize']}, "
        f"{result['batch']} images, parts of {result['chunk']} members)",
        "",
        f"Medians over {result['generations']} generations; plain inference of the mean on "
        f"{result['popsize'] * result['batch']:,} images in calls of {best} (the fastest size "
        "by CPU time).",
        "",
        "| step | generation: wall s | CPU s | inference: wall s | CPU s |",
        "|---|---:|---:|---:|---:|",
    ]
    for step in ("ask", *LAYERS, "tell"):
        row = generation[step]
        other = inference[best].get(step)
        tail = f"{other['wall']:.4f} | {other['cpu']:.4f}" if other else "- | -"
        lines.append(f"| {step} | {row['wall']:.4f} | {row['cpu']:.4f} | {tail} |")
    forward = {kind: sum(generation[step][kind] for step in LAYERS) for kind in ("wall", "cpu")}
    lines.append(
        f"| forward (layers + loss) | {forward['wall']:.4f} | {forward['cpu']:.4f} | "
        f"{inference[best]['total']['wall']:.4f} | {inference[best]['total']['cpu']:.4f} |"
    )
    lines.append(
        f"| whole generation | {generation['generation']['wall']:.4f} | "
        f"{generation['generation']['cpu']:.4f} | | |"
    )
    lines += ["", "| inference call size | wall s | CPU s |", "|---:|---:|---:|"]
    for size, rows in inference.items():
        lines.append(f"| {size} | {rows['total']['wall']:.4f} | {rows['total']['cpu']:.4f} |")
    lines += [
        "",
        f"Forward / inference throughput: {inference[best]['total']['wall'] / forward['wall']:.2f}"
        f" by wall-clock, {inference[best]['total']['cpu'] / forward['cpu']:.2f} by CPU time.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.cnn_profile``."""
    parser = command_line("python -m benchmarks.cnn_profile", __doc__)
    parser.add_argument("--popsize", type=int, default=256)
    parser.add_argument("--batch", type=int, default=128, help="images per generation")
    parser.add_argument("--chunk", type=int, default=8, help="members per forward part")
    parser.add_argument(
        "--inference-chunks", default="128,256,1024", help="images per inference call"
    )
    parser.add_argument("--generations", type=int, default=10, help="timed generations")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads")
    parser.add_argument(
        "--malloc",
        choices=["as-loaded", "default"],
        default="as-loaded",
        help="glibc's thresholds as after loading a data set (default), or as at start",
    )
    parser.add_argument("--quick", action="store_true", help="popsize 16, 2 generations")
    parser.add_argument("--out", default=None, help="also write cnn_profile.md and .json here")
    args = parser.parse_args(argv)
    if args.quick:
        args.popsize, args.generations, args.inference_chunks = 16, 2, "128"
    chunks = [int(size) for size in args.inference_chunks.split(",")]
    malloc = settle_malloc() if args.malloc == "as-loaded" else "default"
    with blas_threads(args.threads) as limited:
        result = profile(
            popsize=args.popsize,
            batch=args.batch,
            chunk=args.chunk,
            inference_chunks=chunks,
            generations=args.generations,
        )
    result["blas_threads"], result["malloc"] = limited, malloc
    text = "\n".join(
        [
            markdown(result),
            "",
            f"BLAS threads: {limited}. malloc: {malloc}. Machine: {describe(machine())}.",
        ]
    )
    print(text)
    if args.out:
        write_report(args.out, "cnn_profile", text, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
