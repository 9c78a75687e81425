"""The prepared device check: everything the first GPU run should measure, as one table.

``bash benchmarks/gpu_check.sh`` runs this module on a machine with an NVIDIA GPU and CuPy
(NumPy, SciPy, pytest and hypothesis; no network, nothing installed) in under 8 minutes, and
prints one markdown table with these sections:

* ``noise``: NumPy against CuPy, for the ``kernel`` and ``arrays`` generators: Philox words
  bit for bit (at key/epoch/block values near the counter's ends too), the largest normal
  difference in float32 and float64, and the mean after three generations of ``Eggroll``.
* ``strategy``: ``Eggroll`` (rank 1, Adam) ask, tell and ask+tell medians on one float32 leaf of
  1024², 4096² and 8192² at popsize 256, 4096 and 32768, beside a cuBLAS GEMM of the same
  shape (``(m, N) @ (N, n)``, the work of the low-rank gradient) and beside ``OpenES`` where
  its dense noise fits (a row says why not elsewhere). Target: ask+tell within 1.5x of the
  GEMM at 4096² and popsize >= 4096.
* ``forward``: a 4-layer tanh MLP's population forward (``nn.PopulationLayers``, per-member
  and shared inputs) beside plain batch inference of the same network on the same rows
  (``nn.ParamsLayers`` on popsize x batch rows). Target: >= 90% of plain throughput.
* ``counts``: launches and syncs per ask, tell and forward (:mod:`benchmarks.gpu_counts`, run
  in its own process so that a failure there cannot stop the check).
* ``tests``: the ``gpu``-marked tests, in their own process, summarised in one row.

Every row runs in its own ``try``: a failure prints an error row and the rest go on. Time is
guarded per row: repeats are sized from a first timed call to the row's share of the budget,
rows whose arrays would not fit in half the free device memory are skipped with the bytes
they need, and once the budget is spent the remaining rows say so. JSON (every row) and the
table go to ``--out`` (or ``$OUT``) as ``gpu_check.json``/``gpu_check.md``, rewritten after
each row so that a killed run keeps what it measured.

``--dry-run`` runs the same code on the strict CuPy stand-in (``tests/strict_cupy``) at tiny
sizes, without the tests: a check of the check, for the test suite; its timings are CPU
timings of the stand-in and mean nothing. Nothing here has run on a GPU yet.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt import _noise, nn
from eggroll_opt._backend import Backend

from . import gpu_counts
from ._measure import command_line, describe, machine, synchronize, time_call, write_report
from .bench import mlp_forward, square_mlp
from .core import _ask_tell_times, _one_generation

ROOT = Path(__file__).resolve().parent.parent
GB = 2**30
HOST = Backend("numpy", np)
COLUMNS = ("section", "case", "measured", "beside", "ratio", "note")


@dataclass(frozen=True)
class Sizes:
    """What one run measures, and how long it may take."""

    leaves: tuple[int, ...]
    popsizes: tuple[int, ...]
    # (width, popsize, batch per member) of the forward section's MLP.
    forwards: tuple[tuple[int, int, int], ...]
    noise_blocks: int
    budget_s: float  # noise, strategy and forward sections together
    counts_timeout_s: float
    tests_timeout_s: float
    total_s: float  # the counts and the tests end by then, whatever the sections took
    openes_cap_bytes: int
    max_repeats: int = 10


FULL = Sizes(
    leaves=(1024, 4096, 8192),
    popsizes=(256, 4096, 32768),
    forwards=((1024, 4096, 8), (4096, 4096, 8)),
    noise_blocks=1 << 18,
    budget_s=200.0,
    counts_timeout_s=100.0,
    tests_timeout_s=120.0,
    total_s=440.0,
    openes_cap_bytes=16 * GB,
)
DRY = Sizes(
    leaves=(16, 32),
    popsizes=(8, 32),
    forwards=((16, 8, 2),),
    noise_blocks=64,
    budget_s=30.0,
    counts_timeout_s=60.0,
    tests_timeout_s=0.0,
    total_s=120.0,
    openes_cap_bytes=GB,
    max_repeats=3,
)


@dataclass
class Check:
    """The rows measured so far, the time left, and where the report goes."""

    xp: Any
    sizes: Sizes
    out: str | None
    deadline: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        """Seconds left of the sections' budget."""
        return self.deadline - time.perf_counter()

    def timeout(self, limit: float) -> float:
        """``limit`` seconds, or fewer if the run would end after ``total_s`` (at least 10)."""
        return max(10.0, min(limit, self.started + self.sizes.total_s - time.perf_counter()))

    def add(self, section: str, case: str, measured: str = "", **cells: Any) -> None:
        """Add one row (cells: beside, ratio, note, data), report it and save the report."""
        row = {"section": section, "case": case, "measured": measured, **cells}
        self.rows.append(row)
        shown = " | ".join(str(row.get(name, "")) for name in COLUMNS[2:])
        print(f"[{section}] {case}: {shown}", file=sys.stderr, flush=True)
        self.save()

    def guarded(
        self, section: str, case: str, measure: Callable[[], None], *, budgeted: bool = True
    ) -> None:
        """Run ``measure`` (which adds its rows); on failure or no time left, say so in a row.

        ``budgeted=False``: run even past the sections' budget (``measure`` has its own limit).
        """
        if budgeted and self.left() <= 0:
            self.add(section, case, "skipped", note="the time budget is spent")
            return
        try:
            measure()
        except Exception as error:
            last = traceback.format_exception_only(error)[-1].strip()
            self.add(section, case, "error", note=last[:300])
        finally:
            with contextlib.suppress(Exception):  # a broken context shows in the next row
                _free_pool(self.xp)

    def repeats(self, seconds: float, rows_left: int) -> int:
        """Repeats of a call that took ``seconds`` within this row's share of the time left."""
        share = max(self.left(), 0.0) / max(rows_left, 1)
        return int(min(self.sizes.max_repeats, max(1, share // max(seconds, 1e-6))))

    def save(self) -> None:
        """Write the table and the rows to the report folder, if there is one."""
        if self.out:
            write_report(self.out, "gpu_check", table(self.rows), {"rows": self.rows})


def _free_pool(xp: Any) -> None:
    synchronize(xp)
    pool = getattr(xp, "get_default_memory_pool", None)
    if pool is not None:
        pool().free_all_blocks()


def free_bytes(xp: Any) -> float:
    """Free device memory (after emptying CuPy's pool); infinite where it cannot be read."""
    _free_pool(xp)
    mem_get_info = getattr(xp.cuda.runtime, "memGetInfo", None)
    return float(mem_get_info()[0]) if mem_get_info is not None else float("inf")


def _gb(size: float) -> str:
    return f"{size / GB:.1f} GB"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms"


def timed(function: Callable[[], Any], xp: Any) -> float:
    """Seconds of one call, device work included."""
    synchronize(xp)
    start = time.perf_counter()
    function()
    synchronize(xp)
    return time.perf_counter() - start


def median_seconds(check: Check, function: Callable[[], Any], rows_left: int) -> float:
    """Median of repeats sized by :meth:`Check.repeats`, after one timed warm-up call."""
    repeats = check.repeats(timed(function, check.xp), rows_left)
    return time_call(function, check.xp, warmup=0, repeats=repeats)["median"]


# -- noise -----------------------------------------------------------------------------------
NOISE_CASES = (  # (seed, epoch, first block): the start, and the counter's far ends
    (0, 0, 0),
    (12345, 2**64 - 2, 2**40 - 7),
    (2**32, 2**63 + 5, 2**50),
)


def section_noise(check: Check) -> None:
    """Words bit for bit, normals to rounding, and a short run, NumPy against CuPy."""
    for generator in ("kernel", "arrays"):
        if generator == "kernel" and not hasattr(check.xp, "RawKernel"):
            check.add(
                "noise", "kernel generator", "skipped", note="this CuPy has no RawKernel (stand-in)"
            )
            continue
        check.guarded("noise", f"{generator}: words", partial(_noise_words, check, generator))
        check.guarded("noise", f"{generator}: normals", partial(_noise_normals, check, generator))
    check.guarded("noise", "Eggroll on CuPy against NumPy", partial(_noise_strategy, check))


def _noise_words(check: Check, generator: str) -> None:
    device = Backend("cupy", check.xp, generator=generator)
    blocks = check.sizes.noise_blocks
    equal = []
    for seed, epoch, first in NOISE_CASES:
        key = _noise.leaf_key(seed, "w")
        expected = _noise.raw_words(HOST, key, epoch, first, blocks)
        actual = _noise.raw_words(device, key, epoch, first, blocks).get()
        equal.append(bool(np.array_equal(actual, expected)))
    check.add(
        "noise",
        f"{generator}: Philox words, {len(equal)} counters x {blocks} blocks",
        "bits equal" if all(equal) else "BITS DIFFER",
        beside="numpy.random.Philox",
        note=f"equal per counter: {equal}",
        data={"equal": equal},
    )


def _noise_normals(check: Check, generator: str) -> None:
    device = Backend("cupy", check.xp, generator=generator)
    size, count = 1000, max(2, check.sizes.noise_blocks // 125)  # 125 blocks a member, cut short
    key = _noise.leaf_key(7, "w")
    for dtype in (np.float32, np.float64):
        expected = _noise.normals(HOST, key, 3, 0, count, size, dtype)
        actual = _noise.normals(device, key, 3, 0, count, size, dtype).get()
        difference = float(np.max(np.abs(actual.astype(np.float64) - expected)))
        check.add(
            "noise",
            f"{generator}: normals {np.dtype(dtype).name}, {count} x {size}",
            f"max abs diff {difference:.3g}",
            beside="NumPy generator",
            note="rounding of log/sqrt/cos/sin only" if difference < 1e-3 else "TOO LARGE",
            data={"max_difference": difference},
        )


def _noise_strategy(check: Check) -> None:
    size = 256 if check.sizes is FULL else 16
    finals = {}
    for name, backend in (("numpy", HOST), ("cupy", Backend("cupy", check.xp))):
        es = eo.Eggroll(
            {"w": np.zeros((size, size), np.float32)},
            popsize=64,
            sigma=0.05,
            learning_rate=0.01,
            seed=3,
            backend=backend,
        )
        target = es.xp.asarray(np.linspace(-1, 1, size * size, dtype=np.float32))
        for _ in range(3):
            pop = es.ask()
            members = pop.stacked("w").reshape(len(pop), -1)  # every member at once
            es.tell(((members - target) ** 2).sum(axis=1))
        finals[name] = eo.to_numpy(es.params["w"]).astype(np.float64)
    difference = float(np.max(np.abs(finals["cupy"] - finals["numpy"])))
    check.add(
        "noise",
        f"Eggroll {size}² popsize 64, 3 generations (default generators)",
        f"max abs diff of the means {difference:.3g}",
        beside="the same run on NumPy",
        data={"max_difference": difference},
    )


# -- strategy --------------------------------------------------------------------------------
def _strategy(cls: type[eo.Eggroll], size: int, popsize: int, xp: Any) -> eo.Eggroll:
    settings: dict[str, Any] = {"rank": 1} if cls is eo.Eggroll else {}
    return cls(
        {"w": np.zeros((size, size), np.float32)},
        popsize=popsize,
        sigma=0.01,
        learning_rate=1e-3,
        optimizer="adam",
        seed=0,
        backend=Backend("cupy", xp),
        **settings,
    )


def section_strategy(check: Check) -> None:
    """ask/tell per leaf size and popsize, beside the same-shape GEMM and OpenES."""
    configs = [(size, popsize) for size in check.sizes.leaves for popsize in check.sizes.popsizes]
    for index, (size, popsize) in enumerate(configs):
        rows_left = 2 * (len(configs) - index) + 2 * len(check.sizes.forwards)
        case = f"{size}² popsize {popsize}"
        eggroll_seconds: dict[str, float] = {}
        check.guarded(
            "strategy",
            f"Eggroll {case}",
            partial(_eggroll_row, check, size, popsize, rows_left, eggroll_seconds),
        )
        check.guarded(
            "strategy",
            f"OpenES {case}",
            partial(_openes_row, check, size, popsize, rows_left, eggroll_seconds),
        )


def _eggroll_row(
    check: Check, size: int, popsize: int, rows_left: int, seconds: dict[str, float]
) -> None:
    """Eggroll ask, tell, ask+tell beside the GEMM ``(size, N) @ (N, size)``; fills ``seconds``."""
    xp = check.xp
    case = f"Eggroll {size}² popsize {popsize}"
    # GEMM operands and product, the strategy's factors, mean, gradient and Adam moments.
    needed = 4 * (2 * popsize * size + popsize * size + 6 * size * size)
    if needed > free_bytes(xp) / 2:
        check.add("strategy", case, "skipped", note=f"needs {_gb(needed)}")
        return
    left = xp.random.standard_normal((size, popsize), dtype=xp.float32)
    right = xp.random.standard_normal((popsize, size), dtype=xp.float32)
    gemm = median_seconds(check, partial(xp.matmul, left, right), rows_left)
    del left, right
    es = _strategy(eo.Eggroll, size, popsize, xp)
    fitness = np.random.default_rng(0).standard_normal(popsize)
    first = timed(partial(_one_generation, es, fitness), xp)
    repeats = check.repeats(first, rows_left)
    times = _ask_tell_times(es, fitness, xp, warmup=0, repeats=repeats)
    seconds.update({name: value["median"] for name, value in times.items()})
    both = seconds["ask+tell"]
    target = " (target <= 1.5x)" if size == 4096 and popsize >= 4096 else ""
    check.add(
        "strategy",
        case,
        f"ask {_ms(seconds['ask'])} · tell {_ms(seconds['tell'])} · ask+tell {_ms(both)}",
        beside=f"GEMM {_ms(gemm)}",
        ratio=f"{both / gemm:.2f}x GEMM{target}",
        note=f"{repeats} repeats",
        data={"seconds": times, "gemm_seconds": gemm, "repeats": repeats},
    )


def _openes_row(
    check: Check, size: int, popsize: int, rows_left: int, eggroll: dict[str, float]
) -> None:
    """OpenES ask+tell where its dense noise fits, beside Eggroll's."""
    xp = check.xp
    case = f"OpenES {size}² popsize {popsize}"
    dense = 4 * (popsize // 2) * size * size
    limit = min(check.sizes.openes_cap_bytes, free_bytes(xp) / 3)
    if dense > limit:
        note = f"dense noise needs {_gb(dense)} (limit {_gb(limit)})"
        check.add("strategy", case, "skipped", note=note)
        return
    es = _strategy(eo.OpenES, size, popsize, xp)
    fitness = np.random.default_rng(0).standard_normal(popsize)
    seconds = median_seconds(check, partial(_one_generation, es, fitness), rows_left)
    both = eggroll.get("ask+tell")
    check.add(
        "strategy",
        case,
        f"ask+tell {_ms(seconds)}",
        beside=f"Eggroll {_ms(both)}" if both else "",
        ratio=f"{seconds / both:.1f}x Eggroll" if both else "",
        data={"seconds": seconds},
    )


# -- forward ---------------------------------------------------------------------------------
DEPTH = 4


def section_forward(check: Check) -> None:
    """An MLP's population forward beside plain batch inference of the same network."""
    for index, (width, popsize, batch) in enumerate(check.sizes.forwards):
        rows_left = 2 * (len(check.sizes.forwards) - index)
        check.guarded(
            "forward",
            _forward_case(width, popsize, batch),
            partial(_forward_rows, check, width, popsize, batch, rows_left),
        )


def _forward_case(width: int, popsize: int, batch: int) -> str:
    return f"MLP {DEPTH}x{width}² popsize {popsize} batch {batch}"


def _forward_rows(check: Check, width: int, popsize: int, batch: int, rows_left: int) -> None:
    xp = check.xp
    case = _forward_case(width, popsize, batch)
    # Inputs, two layers' activations, and the weights with their low-rank factors.
    needed = 4 * (3 * popsize * batch * width + 3 * DEPTH * width * width)
    if needed > free_bytes(xp) / 2:
        check.add("forward", case, "skipped", note=f"needs {_gb(needed)}")
        return
    es = eo.Eggroll(
        square_mlp(width, DEPTH),
        popsize=popsize,
        sigma=0.01,
        learning_rate=1e-3,
        seed=0,
        backend=Backend("cupy", xp),
    )
    pop = es.ask()
    rng = np.random.default_rng(1)
    rows = xp.asarray(rng.standard_normal((popsize, batch, width), dtype=np.float32))
    flat = rows.reshape(popsize * batch, width)
    plain = median_seconds(
        check, partial(mlp_forward, nn.ParamsLayers(es.params), flat, DEPTH), rows_left
    )
    for label, x in (("per-member inputs", rows), ("shared input", rows[0])):
        seconds = median_seconds(check, partial(_population_forward, pop, x), rows_left)
        check.add(
            "forward",
            f"{case}, {label}",
            _ms(seconds),
            beside=f"plain inference {_ms(plain)}",
            ratio=f"{plain / seconds:.0%} of plain throughput (target >= 90%)",
            data={"seconds": seconds, "plain_seconds": plain},
        )


def _population_forward(pop: eo.Population, x: Any) -> Any:
    return mlp_forward(nn.PopulationLayers(pop), x, DEPTH)


# -- counts and tests, each in its own process -----------------------------------------------
def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def section_counts(check: Check, stand_in: bool) -> None:
    """The table of :mod:`benchmarks.gpu_counts`, as rows of this one."""

    def counts() -> None:
        with tempfile.TemporaryDirectory() as folder:
            command = [sys.executable, "-m", "benchmarks.gpu_counts", "--out", folder]
            completed = _run(
                command + (["--stand-in"] if stand_in else []),
                check.timeout(check.sizes.counts_timeout_s),
            )
            if completed.returncode != 0:
                lines = completed.stderr.strip().splitlines() or [""]
                raise RuntimeError(f"exit {completed.returncode}: {lines[-1][:300]}")
            result = json.loads(Path(folder, "gpu_counts.json").read_text())
        check.add("counts", "what is counted", result["platform"], note=result["source"])
        for row in result["rows"]:
            values = [gpu_counts._cell(row[kind]) for kind in gpu_counts.KINDS]
            check.add(
                "counts",
                f"{row['workload']}, {row['generator']}, {row['step']}",
                " · ".join(f"{k} {v}" for k, v in zip(gpu_counts.KINDS, values, strict=True)),
                data=row,
            )
        for target in result["checks"]:
            met = {True: "met", False: "NOT MET", None: "n/a"}[target["met"]]
            check.add(
                "counts",
                f"target: {target['check']}",
                gpu_counts._cell(target["value"]),
                beside=target["target"],
                ratio=met,
                data=target,
            )

    check.guarded("counts", "benchmarks.gpu_counts", counts, budgeted=False)


def section_tests(check: Check) -> None:
    """The ``gpu``-marked tests, summarised by pytest's last line."""
    if check.sizes.tests_timeout_s <= 0:
        check.add("tests", "gpu-marked tests", "skipped", note="not run in a dry run")
        return

    def tests() -> None:
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs"]
        command += ["-p", "no:cacheprovider", "tests"]
        timeout = check.timeout(check.sizes.tests_timeout_s)
        try:
            completed = _run(command, timeout)
            log = completed.stdout + completed.stderr
            lines = completed.stdout.strip().splitlines()
            summary = lines[-1] if lines else f"exit {completed.returncode}"
        except subprocess.TimeoutExpired as error:
            output = error.stdout or b""
            log = output.decode(errors="replace") if isinstance(output, bytes) else output
            summary = f"timed out after {timeout:.0f} s"
        if check.out:
            Path(check.out, "gpu_tests.log").write_text(log)
        failed = [line for line in log.splitlines() if line.startswith(("FAILED", "ERROR"))]
        check.add(
            "tests",
            "pytest -m gpu tests",
            summary.strip("= "),
            note="; ".join(failed[:5])[:300],
            data={"summary": summary, "failed": failed},
        )

    check.guarded("tests", "pytest -m gpu tests", tests, budgeted=False)


# -- the table -------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]]) -> str:
    """One markdown table of ``rows``."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (str(row.get(name, "")).replace("|", "/") for name in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header(xp: Any, stand_in: bool) -> Iterator[str]:
    """Lines that say what the table was measured on."""
    if stand_in:
        yield "Dry run on the strict CuPy stand-in: tiny sizes, CPU timings that mean nothing."
    else:
        props = xp.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        yield f"GPU: {name.decode() if isinstance(name, bytes) else name}, CuPy {xp.__version__}."
    yield f"Host: {describe(machine())}."


def run(*, dry_run: bool, out: str | None) -> list[dict[str, Any]]:
    """Measure every section; print the table; returns the rows."""
    if dry_run:
        gpu_counts.use_stand_in()
    xp: ModuleType = importlib.import_module("cupy")
    stand_in = gpu_counts.is_stand_in(xp)
    sizes = DRY if dry_run else FULL
    check = Check(xp=xp, sizes=sizes, out=out, deadline=time.perf_counter() + sizes.budget_s)
    start = time.perf_counter()
    section_noise(check)
    section_strategy(check)
    section_forward(check)
    section_counts(check, stand_in)
    section_tests(check)
    text = "\n".join([*header(xp, stand_in), "", table(check.rows)])
    text += f"\n\nWall time: {time.perf_counter() - start:.0f} s."
    print(text, flush=True)
    if out:
        write_report(out, "gpu_check", text, {"rows": check.rows, "machine": machine()})
    return check.rows


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = command_line("python -m benchmarks.gpu_check", __doc__)
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes on the strict CuPy stand-in"
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="report folder")
    args = parser.parse_args(argv)
    rows = run(dry_run=args.dry_run, out=args.out)
    return 1 if any(row["measured"] == "error" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
