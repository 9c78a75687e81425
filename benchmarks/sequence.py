"""Sequence-model scale benchmark: a character language model of about 1.1M parameters, popsize
256 to 16384, population forward beside plain batch inference of the same model.

The model (``eggroll_opt.nn`` layers, float32): a byte embedding (vocab 256 x width 640), one
minGRU layer (2·640 x 640 weight and a bias), a layer norm (scale and bias) and an output head
(256 x 640 and a bias): 1,149,696 parameters at the default sizes, printed at the start.

What is measured, per strategy and popsize, side by side in one process:

* *generation*: ``ask`` + the population forward of the members' next-token logits on one
  input batch + :func:`eggroll_opt.nn.sequence_cross_entropy` per member + ``tell``. Every
  member sees the same batch of token ids (``batch`` sequences of ``length`` steps, random ids
  drawn once from a seed: the content does not change the cost). With ``--chunk`` the forward
  runs over ``Population.split(chunk)`` parts, one after the other.
* *population forward*: the logits of every member of one population (asked once), through
  :class:`eggroll_opt.nn.PopulationLayers`.
* *plain inference*: the logits of ONE model (that population's mean) through
  :class:`eggroll_opt.nn.ParamsLayers` on a batch of ``popsize · batch`` sequences (the shared
  batch repeated), the same number of tokens as the population forward.

*Throughput vs plain* is ``(popsize · batch · length / t_population) / (popsize · batch ·
length / t_plain) = t_plain / t_population``, from the medians. The three are timed in turn in
each repeat (interleaved, so that load from other work falls on all of them alike), after one
warm-up run, which is also the run whose peak memory is recorded.

Peak memory (:func:`benchmarks._measure.peak_bytes`): with NumPy, tracemalloc's peak of the
allocations made while the call runs (NumPy reports its array buffers to tracemalloc), so
memory held before the call (the mean, the optimizer state, the data batch) is not in it; with
CuPy, the growth of the memory pool. A configuration whose predicted peak
(:func:`predicted_peak_bytes`) exceeds the memory cap is not run; its row says what it would
need. OpenES holds dense noise, ``popsize / 2 · parameters`` float32 numbers (mirrored).

Run ``python -m benchmarks.sequence [--quick] [--out DIR]``; ``--quick`` is a smoke run of a
few seconds at toy sizes. ``python -m eggroll_opt bench`` runs it as its ``sequence`` section.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt import nn
from eggroll_opt._backend import Backend, get_backend
from eggroll_opt._tree import flatten

from ._measure import command_line, describe, machine, peak_bytes, synchronize, write_report
from .blackbox import blas_threads

GB = 2**30
MB = 2**20
FIT_TARGET_BYTES = 4 * GB  # popsize 16384 should fit in this
THROUGHPUT_TARGET = 0.9  # population forward / plain batch inference

FULL = {
    "vocab": 256,
    "width": 640,
    "batch": 1,
    "length": 8,
    "popsizes": [256, 4096, 16384],
    "chunked": [(16384, 2048)],
    "repeats": 3,
}
QUICK = {
    "vocab": 32,
    "width": 48,
    "batch": 2,
    "length": 4,
    "popsizes": [16, 64],
    "chunked": [(64, 16)],
    "repeats": 2,
}


# -- the model -------------------------------------------------------------------------------
def language_model_params(vocab: int, width: int, seed: int = 0) -> dict[str, Any]:
    """Embedding (vocab, width), minGRU (2·width, width) + bias, layer norm, head (vocab, width)."""
    rng = np.random.default_rng(seed)

    def normal(shape: tuple[int, ...], scale: float) -> np.ndarray:
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return {
        "embed": {"w": normal((vocab, width), 1.0)},
        "gru": {
            "w": normal((2 * width, width), 1 / math.sqrt(width)),
            "b": np.zeros(2 * width, np.float32),
        },
        "norm": {"scale": np.ones(width, np.float32), "bias": np.zeros(width, np.float32)},
        "out": {
            "w": normal((vocab, width), 1 / math.sqrt(width)),
            "b": np.zeros(vocab, np.float32),
        },
    }


def language_model(layers: Any, tokens: Any) -> Any:
    """Next-token logits: embedding -> minGRU -> layer norm -> output head, at every step."""
    states = layers.min_gru("gru", layers.embedding("embed", tokens))
    return layers.dense_per_step("out", layers.layer_norm("norm", states))


def parameter_count(params: dict[str, Any]) -> int:
    """Scalars in a two-level parameter tree."""
    return sum(int(np.size(leaf)) for layer in params.values() for leaf in layer.values())


def activation_bytes_per_token(vocab: int, width: int) -> int:
    """Bytes live per member and token at the forward's peak (float32), an estimate.

    Inside the minGRU layer: the embedded input (width), the input projections (2·width), the
    gate, ``1 - gate``, ``gate · candidate`` and the states (width each); the output head and
    the loss add a few vocab-wide arrays. Checked against measured rows (``predicted`` column).
    """
    return 4 * (7 * width + 2 * vocab)


def predicted_peak_bytes(
    strategy: eo.Eggroll, *, vocab: int, width: int, batch: int, length: int, chunk: int | None
) -> int:
    """Peak memory of one generation: noise + a gradient and a new mean + activations.

    The noise is ``popsize / 2`` draws (mirrored) of each leaf's numbers: ``r·(m + n)`` for a
    low-rank matrix, every entry for a full-noise leaf; activations are those of the members
    evaluated at once (``chunk``, or the whole population).
    """
    shapes = {path: tuple(leaf.shape) for path, leaf in flatten(strategy.params).items()}
    numbers = 0
    for path, kind in strategy.noise_kinds.items():
        if kind == "lowrank":
            numbers += strategy.ranks[path] * (shapes[path][0] + math.prod(shapes[path][1:]))
        elif kind == "full":
            numbers += math.prod(shapes[path])
    draws = strategy.popsize // 2
    members = min(chunk or strategy.popsize, strategy.popsize)
    activations = members * batch * length * activation_bytes_per_token(vocab, width)
    return 4 * draws * numbers + 2 * 4 * strategy.num_params + activations


# -- the generation being measured -----------------------------------------------------------
class SequenceWorkload:
    """One strategy on the language model, with one shared batch of token ids.

    Args:
        cls: ``eo.Eggroll`` or ``eo.OpenES``.
        popsize: members per generation.
        vocab, width: the model's sizes.
        batch, length: sequences per member and steps per sequence (shared by all members).
        chunk: members per forward call (None: the whole population at once).
        backend: NumPy or CuPy.
    """

    def __init__(
        self,
        cls: type[eo.Eggroll],
        popsize: int,
        *,
        vocab: int,
        width: int,
        batch: int,
        length: int,
        chunk: int | None,
        backend: Backend,
    ) -> None:
        self.xp = backend.xp
        self.chunk = chunk

        def strategy() -> eo.Eggroll:
            return cls(
                language_model_params(vocab, width),
                popsize=popsize,
                sigma=0.01,
                learning_rate=1e-3,
                seed=0,
                backend=backend,
            )

        self.strategy = strategy()
        self._new_strategy = strategy
        text = np.random.default_rng(1).integers(0, vocab, (batch, length + 1))
        self.inputs = self.xp.asarray(text[:, :-1])
        self.targets = self.xp.asarray(text[:, 1:])
        self._population: eo.Population | None = None
        self._held: eo.Eggroll
        self._repeated: Any = None

    def losses(self, population: eo.Population) -> Any:
        """Every member's mean next-token loss (nats), the forward run in chunks if asked."""
        parts = population.split(self.chunk) if self.chunk else [population]
        losses = [
            nn.sequence_cross_entropy(
                language_model(nn.PopulationLayers(part), self.inputs), self.targets
            )
            for part in parts
        ]
        return losses[0] if len(losses) == 1 else self.xp.concatenate(losses)

    def generation(self) -> None:
        """ask + population forward + per-member loss + tell."""
        population = self.strategy.ask()
        self.strategy.tell(eo.to_numpy(self.losses(population)))

    def hold_population(self) -> eo.Population:
        """The population that :meth:`population_forward` evaluates, asked once from a second
        strategy like :attr:`strategy` (asking :attr:`strategy` would hand the same population
        to the next :meth:`generation`, without making its noise)."""
        if self._population is None:
            self._held = self._new_strategy()
            self._population = self._held.ask()
        return self._population

    def population_forward(self) -> Any:
        """Every member's logits (popsize, batch, length, vocab) for the held population."""
        return language_model(nn.PopulationLayers(self.hold_population()), self.inputs)

    def plain_forward(self) -> Any:
        """The held population's mean, alone, on the shared batch repeated popsize times: the
        same model on as many tokens as :meth:`population_forward`."""
        self.hold_population()
        if self._repeated is None:
            self._repeated = self.xp.tile(self.inputs, (self.strategy.popsize, 1))
        return language_model(nn.ParamsLayers(self._held.params), self._repeated)


def _summary(seconds: list[float]) -> dict[str, float]:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def interleaved_times(
    functions: dict[str, Callable[[], Any]], xp: Any, repeats: int
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Median, min and max seconds of each function, timed in turn in every repeat.

    Returns wall-clock seconds and this process's CPU seconds (all its threads; the time it
    waited for a core while other work ran is not in them, which makes them the steadier
    figure on a shared machine, on NumPy; on CuPy they count the host's waiting).
    """
    wall: dict[str, list[float]] = {name: [] for name in functions}
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            synchronize(xp)
            start, start_cpu = time.perf_counter(), time.process_time()
            function()
            synchronize(xp)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return (
        {name: _summary(values) for name, values in wall.items()},
        {name: _summary(values) for name, values in cpu.items()},
    )


def measure_row(
    cls: type[eo.Eggroll],
    popsize: int,
    *,
    settings: dict[str, Any],
    chunk: int | None,
    compare_plain: bool,
    memory_cap: float,
    backend: Backend,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Measure one (strategy, popsize, chunk), or say what it would need above the cap."""
    sizes = {key: settings[key] for key in ("vocab", "width", "batch", "length")}
    workload = SequenceWorkload(cls, popsize, chunk=chunk, backend=backend, **sizes)
    predicted = predicted_peak_bytes(workload.strategy, chunk=chunk, **sizes)
    row: dict[str, Any] = {
        "strategy": cls.__name__,
        "popsize": popsize,
        "chunk": chunk,
        "tokens_per_member": settings["batch"] * settings["length"],
        "predicted_peak_bytes": predicted,
    }
    label = f"  sequence: {cls.__name__} N={popsize}" + (f" chunk {chunk}" if chunk else "")
    if predicted > memory_cap:
        row["skipped"] = f"needs about {predicted / GB:.1f} GB > cap {memory_cap / GB:.0f} GB"
        if progress:
            progress(f"{label}: {row['skipped']}")
        return row
    functions: dict[str, Callable[[], Any]] = {"generation": workload.generation}
    if compare_plain:
        workload.hold_population()  # its noise is not part of the forward's peak
        functions["population_forward"] = workload.population_forward
        functions["plain_forward"] = workload.plain_forward
    # The peak-memory run of each is also its warm-up.
    row["peak_bytes"] = {
        name: peak_bytes(function, workload.xp) for name, function in functions.items()
    }
    row["seconds"], row["cpu_seconds"] = interleaved_times(
        functions, workload.xp, settings["repeats"]
    )
    if compare_plain:
        times = row["seconds"]
        row["throughput_vs_plain"] = (
            times["plain_forward"]["median"] / times["population_forward"]["median"]
        )
        tokens = popsize * row["tokens_per_member"]
        cpu = row["cpu_seconds"]
        row["cpu_throughput_vs_plain"] = (
            cpu["plain_forward"]["median"] / cpu["population_forward"]["median"]
        )
        row["member_tokens_per_second"] = tokens / times["population_forward"]["median"]
        row["plain_tokens_per_second"] = tokens / times["plain_forward"]["median"]
    if progress:
        ratio = (
            f", forward / plain throughput {row['throughput_vs_plain']:.0%} (CPU time "
            f"{row['cpu_throughput_vs_plain']:.0%})"
            if compare_plain
            else ""
        )
        progress(
            f"{label}: generation {row['seconds']['generation']['median']:.3f} s, peak "
            f"{row['peak_bytes']['generation'] / MB:.0f} MB{ratio}"
        )
    return row


def section_sequence(
    quick: bool,
    *,
    backend: Backend | None = None,
    memory_cap: float = FIT_TARGET_BYTES,
    threads: int | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Rows for Eggroll at every popsize (and chunked), OpenES where its noise fits the cap.

    Args:
        quick: toy sizes (a few seconds) instead of the full model.
        backend: NumPy (default) or CuPy.
        memory_cap: configurations predicted above this many bytes are reported, not run.
        threads: BLAS threads (threadpoolctl) for the whole section; None leaves them as set.
        overrides: replace entries of the settings (``popsizes``, ``batch``, ``length``, ...).
        progress: called with one line per row (None: silent).

    Returns:
        ``{"settings", "params", "machine", "rows", "checks", "seconds"}``.
    """
    backend = backend or get_backend("numpy")
    settings = dict(QUICK if quick else FULL, **(overrides or {}))
    _check_settings(settings)
    params = parameter_count(language_model_params(settings["vocab"], settings["width"]))
    if progress:
        progress(
            f"  sequence: language model of {params:,} parameters (vocab {settings['vocab']}, "
            f"width {settings['width']}), {settings['batch']} x {settings['length']} tokens "
            "per member, shared by all members"
        )
    start, load_before = time.perf_counter(), os.getloadavg()
    rows = []
    with blas_threads(threads) as limited:
        info = machine()
        measure = functools.partial(
            measure_row,
            settings=settings,
            memory_cap=memory_cap,
            backend=backend,
            progress=progress,
        )
        for popsize in settings["popsizes"]:
            for cls in (eo.Eggroll, eo.OpenES):
                rows.append(measure(cls, popsize, chunk=None, compare_plain=True))
        for popsize, chunk in settings["chunked"]:
            rows.append(measure(eo.Eggroll, popsize, chunk=chunk, compare_plain=False))
    return {
        "settings": {**settings, "chunked": [list(pair) for pair in settings["chunked"]]},
        "blas_threads": limited,
        "backend": backend.name,
        "params": params,
        "machine": info,
        "rows": rows,
        "checks": list(_checks(rows, settings["popsizes"])),
        "seconds": time.perf_counter() - start,
        "load_average": [list(load_before), list(os.getloadavg())],
    }


def _check_settings(settings: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first setting that is not a positive int."""

    def positive(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")

    for name in ("vocab", "width", "batch", "length", "repeats"):
        positive(name, settings[name])
    if not settings["popsizes"]:
        raise ValueError(
            f"`popsizes` must name at least one popsize, got {settings['popsizes']!r}."
        )
    for value in settings["popsizes"]:
        positive("popsizes", value)
    for pair in settings["chunked"]:
        if len(pair) != 2:
            raise ValueError(f"`chunked` entries must be (popsize, chunk) pairs, got {pair!r}.")
        positive("chunked", pair[0])
        positive("chunked", pair[1])


def _checks(rows: list[dict[str, Any]], popsizes: list[int]) -> Iterator[dict[str, Any]]:
    largest = max(popsizes)
    for row in rows:
        if "skipped" in row or row["strategy"] != "Eggroll":
            continue
        where = f"Eggroll N={row['popsize']}" + (f", chunk {row['chunk']}" if row["chunk"] else "")
        if row["popsize"] == largest:
            peak = row["peak_bytes"]["generation"]
            yield {
                "check": f"{where}: generation peak memory",
                "value": f"{peak / GB:.2f} GB",
                "target": "<= 4 GB",
                "met": bool(peak <= FIT_TARGET_BYTES),
            }
        if "throughput_vs_plain" in row:
            ratio = row["throughput_vs_plain"]
            yield {
                "check": f"{where}: population forward / plain inference throughput (wall)",
                "value": f"{ratio:.0%} (CPU time: {row['cpu_throughput_vs_plain']:.0%})",
                "target": f">= {THROUGHPUT_TARGET:.0%}",
                "met": bool(ratio >= THROUGHPUT_TARGET),
            }


# -- report ----------------------------------------------------------------------------------
def _seconds(summary: dict[str, float]) -> str:
    return f"{summary['median']:.3f} ({summary['min']:.3f}-{summary['max']:.3f})"


def _megabytes(count: int) -> str:
    return f"{count / MB:,.0f}" if count >= 10 * MB else f"{count / MB:.1f}"


def markdown_sequence(section: dict[str, Any]) -> str:
    """The section as a markdown table, its checks and its setup."""
    settings = section["settings"]
    lines = [
        f"## Sequence model: a {section['params'] / 1e6:.2f}M-parameter character language model",
        "",
        f"Byte embedding ({settings['vocab']} x {settings['width']}) -> minGRU "
        f"({2 * settings['width']} x {settings['width']} + bias) -> layer norm -> head "
        f"({settings['vocab']} x {settings['width']} + bias): {section['params']:,} float32 "
        f"parameters. Each member sees the same {settings['batch']} x {settings['length']} "
        "token ids (batch x steps); plain inference runs the mean alone on popsize x batch "
        f"sequences. Medians (min-max) of {settings['repeats']} interleaved repeats, wall-clock "
        "seconds; throughput also from this process's CPU seconds, which leave out time spent "
        f"waiting for a core; {section['backend']}, BLAS threads {section['blas_threads']}.",
        "",
        "| strategy | popsize | forward chunk | generation s | peak MB (generation) | "
        "predicted MB | population forward s | plain inference s | forward / plain "
        "throughput, wall (CPU time) | peak MB forward / plain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in section["rows"]:
        chunk = row["chunk"] or "all"
        head = f"| {row['strategy']} | {row['popsize']} | {chunk}"
        predicted = _megabytes(row["predicted_peak_bytes"])
        if "skipped" in row:
            lines.append(f"{head} | not run: {row['skipped']} | | {predicted} | | | | |")
            continue
        seconds, peaks = row["seconds"], row["peak_bytes"]
        forward = plain = ratio = forward_peaks = "-"
        if "throughput_vs_plain" in row:
            forward = _seconds(seconds["population_forward"])
            plain = _seconds(seconds["plain_forward"])
            ratio = f"{row['throughput_vs_plain']:.0%} ({row['cpu_throughput_vs_plain']:.0%})"
            forward_peaks = (
                f"{_megabytes(peaks['population_forward'])} / {_megabytes(peaks['plain_forward'])}"
            )
        lines.append(
            f"{head} | {_seconds(seconds['generation'])} | {_megabytes(peaks['generation'])} | "
            f"{predicted} | {forward} | {plain} | {ratio} | {forward_peaks} |"
        )
    lines += ["", "| check | measured | target | met |", "|---|---:|---|---|"]
    for check in section["checks"]:
        met = "yes" if check["met"] else "NO"
        lines.append(f"| {check['check']} | {check['value']} | {check['target']} | {met} |")
    before, after = ("/".join(f"{v:.1f}" for v in load) for load in section["load_average"])
    lines += [
        "",
        f"Machine: {describe(section['machine'])}; load average (1/5/15 min) {before} before, "
        f"{after} after; {section['seconds']:.0f} s in all.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: run, print the table, write ``sequence.md`` and ``sequence.json``."""
    parser = command_line("python -m benchmarks.sequence", __doc__)
    parser.add_argument("--quick", action="store_true", help="toy sizes, a few seconds")
    parser.add_argument("--out", default=None, help="folder for sequence.md / sequence.json")
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--popsizes", default=None, help="override, e.g. 256,4096")
    parser.add_argument("--batch", type=int, default=None, help="sequences per member")
    parser.add_argument("--length", type=int, default=None, help="steps per sequence")
    parser.add_argument(
        "--chunked",
        default=None,
        help="extra chunked Eggroll rows as POPSIZE:CHUNK,... (e.g. 16384:2048; 'none')",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per row")
    parser.add_argument(
        "--memory-cap-gb", type=float, default=4.0, help="skip rows predicted above (default 4)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="BLAS threads (default: as the environment)"
    )
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {}
    if args.popsizes:
        overrides["popsizes"] = [int(value) for value in args.popsizes.split(",")]
    for name in ("batch", "length", "repeats"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.chunked:
        overrides["chunked"] = (
            []
            if args.chunked == "none"
            else [tuple(int(v) for v in pair.split(":")) for pair in args.chunked.split(",")]
        )
    section = section_sequence(
        args.quick,
        backend=get_backend(args.backend),
        memory_cap=args.memory_cap_gb * GB,
        threads=args.threads,
        overrides=overrides,
    )
    text = markdown_sequence(section)
    print(text)
    if args.out:
        write_report(args.out, "sequence", text, section)
    return section


if __name__ == "__main__":
    main()
