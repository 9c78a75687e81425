"""Strategy work per generation: EGGROLL's ask + tell against its floor and against OpenES.

Measures, side by side in one run, for one float32 leaf of 1024 x 1024 at popsize 256, rank 1:

* the floor: one GEMM of 1024 x (N·r) x 1024 plus NumPy's own ``standard_normal`` for the
  N·r·(m+n) noise numbers;
* ``Eggroll`` ask + tell (and each alone), and its peak memory;
* ``OpenES`` ask + tell on the same leaf (dense noise for every member), and its peak memory;
* the memory ``ask`` allocates on a 4096 x 4096 leaf at popsize 1024, against O(N·r·(m+n)).

Run ``python -m benchmarks.core [--backend numpy|cupy] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt._backend import get_backend

from ._measure import (
    command_line,
    describe,
    machine,
    peak_bytes,
    synchronize,
    time_call,
    write_report,
)

MB = 2**20


def _ask_tell_times(
    es: eo.Eggroll, fitness: np.ndarray, xp: Any, *, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    for _ in range(warmup):
        es.ask()
        es.tell(fitness)
    asks, tells, totals = [], [], []
    for _ in range(repeats):
        synchronize(xp)
        start = time.perf_counter()
        es.ask()
        synchronize(xp)
        middle = time.perf_counter()
        es.tell(fitness)
        synchronize(xp)
        end = time.perf_counter()
        asks.append(middle - start)
        tells.append(end - middle)
        totals.append(end - start)

    def summary(values: list[float]) -> dict[str, float]:
        return {"median": float(np.median(values)), "min": min(values), "max": max(values)}

    return {"ask": summary(asks), "tell": summary(tells), "ask+tell": summary(totals)}


def _one_generation(es: eo.Eggroll, fitness: np.ndarray) -> None:
    es.ask()
    es.tell(fitness)


def run(
    backend_name: str,
    *,
    size: int,
    popsize: int,
    rank: int,
    repeats: int,
    big_size: int,
    big_popsize: int,
) -> dict[str, Any]:
    """Measure everything; returns a dict of rows and checks."""
    backend = get_backend(backend_name)
    xp = backend.xp
    rng = np.random.default_rng(0)
    fitness = rng.standard_normal(popsize)
    params = {"w": np.zeros((size, size), np.float32)}
    settings: dict[str, Any] = dict(
        popsize=popsize, sigma=0.01, learning_rate=1e-3, seed=0, backend=backend
    )
    rows: dict[str, Any] = {}

    left = xp.asarray(rng.standard_normal((size, popsize * rank)), dtype=xp.float32)
    right = xp.asarray(rng.standard_normal((popsize * rank, size)), dtype=xp.float32)
    rows["floor: GEMM"] = time_call(lambda: left @ right, xp, warmup=2, repeats=repeats)
    if backend.name == "numpy":
        generator = np.random.default_rng(1)
        draw = lambda: generator.standard_normal(popsize * rank * 2 * size, dtype=np.float32)  # noqa: E731
    else:
        draw = lambda: xp.random.standard_normal(popsize * rank * 2 * size, dtype=xp.float32)  # noqa: E731
    rows["floor: standard_normal"] = time_call(draw, xp, warmup=2, repeats=repeats)
    floor = rows["floor: GEMM"]["median"] + rows["floor: standard_normal"]["median"]

    peaks: dict[str, int] = {}
    for optimizer in ("adam", "sgd"):
        eggroll = eo.Eggroll(params, rank=rank, optimizer=optimizer, **settings)
        for name, value in _ask_tell_times(eggroll, fitness, xp, warmup=2, repeats=repeats).items():
            rows[f"Eggroll {name} ({optimizer})"] = value
        peaks[f"Eggroll ask+tell ({optimizer})"] = peak_bytes(
            partial(_one_generation, eggroll, fitness), xp
        )
        openes = eo.OpenES(params, optimizer=optimizer, **settings)
        for name, value in _ask_tell_times(
            openes, fitness, xp, warmup=1, repeats=max(2, repeats // 3)
        ).items():
            rows[f"OpenES {name} ({optimizer})"] = value
        peaks[f"OpenES ask+tell ({optimizer})"] = peak_bytes(
            partial(_one_generation, openes, fitness), xp
        )
        del eggroll, openes

    big = eo.Eggroll(
        {"w": np.zeros((big_size, big_size), np.float32)},
        popsize=big_popsize,
        sigma=0.01,
        learning_rate=1e-3,
        seed=0,
        backend=backend,
        rank=rank,
    )
    ask_peak = peak_bytes(big.ask, xp)
    factor_bytes = (big_popsize // 2) * rank * 2 * big_size * 4

    checks = []
    for optimizer in ("adam", "sgd"):
        eggroll_time = rows[f"Eggroll ask+tell ({optimizer})"]["median"]
        time_ratio = rows[f"OpenES ask+tell ({optimizer})"]["median"] / eggroll_time
        memory_ratio = peaks[f"OpenES ask+tell ({optimizer})"] / max(
            peaks[f"Eggroll ask+tell ({optimizer})"], 1
        )
        checks += [
            (
                f"Eggroll ask+tell / floor ({optimizer})",
                eggroll_time / floor,
                "<= 3",
                eggroll_time / floor <= 3,
            ),
            (f"OpenES / Eggroll time ({optimizer})", time_ratio, ">= 200", time_ratio >= 200),
            (
                f"OpenES / Eggroll peak memory ({optimizer})",
                memory_ratio,
                ">= 50",
                memory_ratio >= 50,
            ),
        ]
    checks.append(
        (
            f"ask() peak at {big_size}², N={big_popsize} / factor bytes",
            ask_peak / factor_bytes,
            "factors + <= 16 MB",
            ask_peak < factor_bytes + 16 * MB,
        )
    )
    return {
        "backend": backend.name,
        "setup": {
            "size": size,
            "popsize": popsize,
            "rank": rank,
            "dtype": "float32",
            "repeats": repeats,
            "mirrored": True,
        },
        "machine": machine(),
        "rows": rows,
        "peak_bytes": {
            **peaks,
            f"Eggroll ask {big_size}² N={big_popsize}": ask_peak,
            "factor bytes": factor_bytes,
            "dense population bytes": big_popsize * big_size * big_size * 4,
        },
        "floor_seconds": floor,
        "checks": [
            {"check": c, "value": float(v), "target": t, "met": bool(m)} for c, v, t, m in checks
        ],
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables."""
    setup = result["setup"]
    lines = [
        f"Backend {result['backend']}, one float32 leaf {setup['size']}x{setup['size']}, "
        f"popsize {setup['popsize']}, rank {setup['rank']}, mirrored; medians of "
        f"{setup['repeats']} repeats (OpenES: fewer).",
        "",
        "| measurement | median (ms) | min-max (ms) |",
        "|---|---:|---:|",
    ]
    for name, row in result["rows"].items():
        spread = f"{1e3 * row['min']:.2f}-{1e3 * row['max']:.2f}"
        lines.append(f"| {name} | {1e3 * row['median']:.2f} | {spread} |")
    lines += ["", "| peak memory | MB |", "|---|---:|"]
    for name, value in result["peak_bytes"].items():
        lines.append(f"| {name} | {value / MB:.1f} |")
    lines += ["", "| check | measured | target | met |", "|---|---:|---|---|"]
    for check in result["checks"]:
        lines.append(
            f"| {check['check']} | {check['value']:.2f} | {check['target']} | "
            f"{'yes' if check['met'] else 'NO'} |"
        )
    lines += ["", f"Machine: {describe(result['machine'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = command_line("python -m benchmarks.core", __doc__)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--out", help="folder for core.md and core.json")
    args = parser.parse_args(argv)
    if args.quick:
        result = run(
            args.backend, size=256, popsize=64, rank=1, repeats=5, big_size=1024, big_popsize=256
        )
    else:
        result = run(
            args.backend,
            size=1024,
            popsize=256,
            rank=1,
            repeats=15,
            big_size=4096,
            big_popsize=1024,
        )
    text = markdown(result)
    print(text)
    if args.out:
        write_report(args.out, "core", text, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
