"""Helpers shared by the benchmarks: medians of repeats, peak memory, threads, report files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np


def synchronize(xp: Any) -> None:
    """Wait for queued GPU work (no-op on NumPy)."""
    if xp.__name__ == "cupy":
        xp.cuda.Device().synchronize()


def time_call(
    function: Callable[[], Any], xp: Any, *, warmup: int, repeats: int
) -> dict[str, float]:
    """Median, min and max seconds of ``function`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        function()
    synchronize(xp)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(xp)
        seconds.append(time.perf_counter() - start)
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds)}


def peak_bytes(function: Callable[[], Any], xp: Any) -> int:
    """Peak memory allocated while ``function`` runs (and what it returns is alive).

    NumPy: tracemalloc's peak. CuPy: growth of the default memory pool, emptied first.
    """
    if xp.__name__ == "cupy":
        pool = xp.get_default_memory_pool()
        synchronize(xp)
        pool.free_all_blocks()
        before = pool.total_bytes()
        result = function()
        synchronize(xp)
        del result
        return int(pool.total_bytes() - before)
    tracemalloc.start()
    try:
        result = function()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return int(peak)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: CPU count, libraries, BLAS threads."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "env_threads": {
            name: os.environ[name]
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if name in os.environ
        },
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {key: pool.get(key) for key in ("internal_api", "num_threads", "version")}
            for pool in threadpool_info()
        ]
    except ImportError:
        info["blas"] = "threadpoolctl not installed"
    return info


def describe(info: dict[str, Any]) -> str:
    """One line for a report: CPUs, versions and BLAS threads of :func:`machine`."""
    blas = info["blas"]
    if isinstance(blas, list):
        blas = ", ".join(
            f"{pool['internal_api']} {pool['version']} ({pool['num_threads']} threads)"
            for pool in blas
        )
    threads = info["env_threads"] or "no thread variables set"
    return (
        f"{info['cpus']} CPUs ({info['machine']}), Python {info['python']}, NumPy "
        f"{info['numpy']}, BLAS: {blas}; {threads}"
    )


def write_report(folder: str, name: str, text: str, data: Any) -> None:
    """Write ``<name>.md`` (the table) and ``<name>.json`` (the data) into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.md"), "w") as file:
        file.write(text + "\n")
    with open(os.path.join(folder, f"{name}.json"), "w") as file:
        json.dump(data, file, indent=2)


def command_line(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its module docstring as the help text, kept as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
