"""Scale-out: per-generation overhead of each executor against in-process evaluation.

For a fitness that costs ``t`` (1, 10, 100 ms) and popsize ``N`` (256, 4096), it measures the
wall time of :func:`eggroll_opt.evaluate` per generation in process, on threads, on
:class:`eggroll_opt.ProcessPool` and on a Dask ``LocalCluster`` (``W`` worker processes, one
thread each, on 127.0.0.1). Two kinds of fitness: ``cpu`` (a fixed amount of pure-Python work,
calibrated to ``t`` on an idle core: the fastest of several timings) and ``sleep`` (waits ``t``,
like a fitness that waits for an external simulator; it needs no CPU, so it shows the cost of
distribution even when other work shares the machine). It reports

* the overhead against the ideal ``N·t/W`` (what ``W`` workers would take with free
  communication and an idle machine), and against the workers' own busy time
  (``Evaluation.busy_seconds / W``: rebuilding members and running the fitness, as slow as the
  machine made them), which is the cost of distribution alone;
* the bytes each evaluation serialised (``Evaluation.bytes_sent`` / ``bytes_received``) and, for
  Dask, the bytes that crossed the loopback interface (measured with psutil; machine-wide);
* the constants of the model in ``docs/scale_out.md``: fixed cost per generation and cost per
  task (from a sweep of ``chunks_per_worker`` with a trivial fitness), cost per broadcast byte
  (from a sweep of the parameter count) and cost per member rebuild, and the model's prediction
  beside every measured point.

What is cut on a 2-core machine (and said in the output): 4096 x 100 ms (205 s per generation
even on 2 workers); in process at 4096 (it is N times the per-member cost measured at 256);
threads with the cpu fitness at 4096 and 100 ms (it holds the GIL: threads run it one at a
time, as in process); 2 measured generations (after one warm-up generation with a 1 ms
fitness) for rows longer than 5 s per generation, 5 for the others.

Run ``python -m benchmarks.scaling [--workers 2] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt._evaluate import Evaluation, evaluate
from eggroll_opt._executors import ProcessPool

from ._measure import machine


class BusyFitness:
    """A fitness that does a fixed amount of pure-Python work (about ``seconds`` on this CPU).

    The work does not depend on the parameters (so every member costs the same); the value
    does, through the sum of the first leaf. Picklable, so worker processes can run it.
    """

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations

    def __call__(self, params: dict[str, Any]) -> float:
        total = 0
        for step in range(self.iterations):
            total += step & 7
        leaf = next(iter(params.values()))
        while isinstance(leaf, dict):
            leaf = next(iter(leaf.values()))
        return float(np.sum(leaf)) + total * 1e-12


class SleepFitness:
    """A fitness that waits ``seconds`` (no CPU), then returns the sum of the first leaf."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, params: dict[str, Any]) -> float:
        time.sleep(self.seconds)
        leaf = next(iter(params.values()))
        while isinstance(leaf, dict):
            leaf = next(iter(leaf.values()))
        return float(np.sum(leaf))


def make_fitness(kind: str, target_seconds: float) -> tuple[Any, float]:
    """A fitness of ``kind`` lasting about ``target_seconds``, and its measured duration."""
    if kind == "sleep":
        fitness = _importable(SleepFitness)(target_seconds)
        params = {"w": np.zeros(3)}
        times = []
        for _ in range(max(3, int(0.1 / max(target_seconds, 1e-3)))):
            start = time.perf_counter()
            fitness(params)
            times.append(time.perf_counter() - start)
        return fitness, statistics.median(times)
    return calibrate(target_seconds)


def calibrate(target_seconds: float) -> tuple[BusyFitness, float]:
    """A :class:`BusyFitness` lasting about ``target_seconds`` on an idle core, and that time.

    Both the rate and the duration are the fastest of several timings: what the work costs
    when nothing else runs on the core.
    """
    probe = BusyFitness(200_000)
    params = {"w": np.zeros(3)}
    times = []
    for _ in range(5):
        start = time.perf_counter()
        probe(params)
        times.append(time.perf_counter() - start)
    rate = probe.iterations / min(times)
    fitness = _importable(BusyFitness)(max(1, int(rate * target_seconds)))
    times = []
    for _ in range(max(5, int(0.3 / max(target_seconds, 1e-3)))):
        start = time.perf_counter()
        fitness(params)
        times.append(time.perf_counter() - start)
    return fitness, min(times)


def _importable(cls: type) -> Any:
    """The same class from its installed module name, so workers import it by reference."""
    try:
        return getattr(importlib.import_module("eggroll_opt.benchmarks.scaling"), cls.__name__)
    except (ImportError, AttributeError):  # run from a checkout without installing
        return cls


def model_params(size: int = 1) -> dict[str, Any]:
    """An MLP 32 -> 64 -> 8 (2,632 parameters), or a square leaf ``size`` x ``size``."""
    if size > 1:
        return {"w": np.zeros((size, size), np.float32)}
    return {
        "l1": {"w": np.zeros((64, 32), np.float32), "b": np.zeros(64, np.float32)},
        "l2": {"w": np.zeros((8, 64), np.float32), "b": np.zeros(8, np.float32)},
    }


def _loopback_bytes() -> int | None:
    try:
        import psutil

        counters = psutil.net_io_counters(pernic=True).get("lo")
    except ImportError:
        return None
    return None if counters is None else int(counters.bytes_sent)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _generations(
    strategy: eo.Eggroll,
    fitness: Callable[[Any], Any],
    executor: Any,
    count: int,
    workers: int = 1,
    **options: Any,
) -> dict[str, Any]:
    """Per generation: wall seconds, CPU seconds of this process (client, scheduler thread of a
    LocalCluster, pool threads), distribution time (wall minus the busy time of the slowest
    worker: what is left once the workers' own work is accounted for), loopback bytes."""
    runs: dict[str, Any] = {"seconds": [], "cpu": [], "spent": [], "loopback": []}
    evaluations: list[Evaluation] = []
    for _ in range(count):
        population = strategy.ask()
        before = _loopback_bytes()
        cpu = time.process_time()
        start = time.perf_counter()
        result = evaluate(population, fitness, executor, timeout=3600, **options)
        wall = time.perf_counter() - start
        runs["cpu"].append(time.process_time() - cpu)
        runs["seconds"].append(wall)
        slowest = max(result.worker_seconds.values(), default=result.busy_seconds)
        runs["spent"].append(wall - (result.busy_seconds if workers == 1 else slowest))
        after = _loopback_bytes()
        if before is not None and after is not None:
            runs["loopback"].append(after - before)
        if result.failures:
            raise RuntimeError(f"benchmark members failed: {list(result.failures.values())[:3]}")
        evaluations.append(result)
        strategy.tell(result.fitness)
    runs["evaluations"] = evaluations
    return runs


@contextlib.contextmanager
def executors(workers: int, names: list[str]) -> Iterator[dict[str, Any]]:
    """The executors to compare, started once and closed at the end."""
    made: dict[str, Any] = {"in-process": None}
    stack = contextlib.ExitStack()
    with stack:
        if "threads" in names:
            made["threads"] = stack.enter_context(concurrent.futures.ThreadPoolExecutor(workers))
        if "processes" in names:
            made["processes"] = stack.enter_context(ProcessPool(workers))
        if "dask" in names:
            try:
                import distributed
                from eggroll_opt.integrations.dask import DaskExecutor
            except ImportError:
                print("dask: distributed is not installed, skipped")
            else:
                cluster = stack.enter_context(
                    distributed.LocalCluster(
                        n_workers=workers,
                        threads_per_worker=1,
                        processes=True,
                        host="127.0.0.1",
                        dashboard_address="127.0.0.1:0",  # its HTTP server on a free local port
                        silence_logs=logging.ERROR,
                    )
                )
                client = stack.enter_context(distributed.Client(cluster))
                made["dask"] = DaskExecutor(client)
                stack.callback(made["dask"].shutdown)
        yield made


def run(
    *,
    workers: int,
    popsizes: list[int],
    fitness_ms: list[float],
    repeats: int,
    long_repeats: int,
    names: list[str],
    sweep_sizes: list[int],
    chunk_sweep: list[int],
    kinds: list[str],
    parts: tuple[str, ...] = ("constants", "grid"),
) -> dict[str, Any]:
    """Measure everything; returns rows, model constants and checks."""
    started = time.perf_counter()
    load_before = os.getloadavg()
    machine_before = machine()  # before Dask starts (its nanny sets thread variables)
    rows: list[dict[str, Any]] = []
    warm_fitness, warm_seconds = calibrate(0.001)
    zero_fitness, _ = calibrate(0.0)
    with executors(workers, names) as made:
        # -- constants: fixed and per-task cost, trivial fitness --------------------------------
        task_rows = []
        for name in ("processes", "dask"):
            if name not in made or "constants" not in parts:
                continue
            for chunks in chunk_sweep:
                es = eo.Eggroll(model_params(), popsize=256, sigma=0.1, learning_rate=0.01)
                _generations(es, zero_fitness, made[name], 1, chunks_per_worker=chunks)
                runs = _generations(
                    es, zero_fitness, made[name], repeats, workers, chunks_per_worker=chunks
                )
                task_rows.append(
                    {
                        "executor": name,
                        "tasks": runs["evaluations"][0].tasks,
                        "seconds": _summary(runs["seconds"]),
                        "distribution_s": _summary(runs["spent"]),
                        "parent_cpu_s": _summary(runs["cpu"]),
                    }
                )
        # -- constants: broadcast size (parameter count), trivial fitness -----------------------
        size_rows = []
        for size in sweep_sizes if "constants" in parts else []:
            es = eo.Eggroll(model_params(size), popsize=2 * workers, sigma=0.1, learning_rate=0.01)
            population = es.ask()
            start = time.perf_counter()
            for member in population:
                member.params()
            rebuild = (time.perf_counter() - start) / len(population)
            for name in ("processes", "dask"):
                if name not in made:
                    continue
                _generations(es, zero_fitness, made[name], 1)
                runs = _generations(es, zero_fitness, made[name], repeats, workers)
                loopback = runs["loopback"]
                size_rows.append(
                    {
                        "executor": name,
                        "params": es.num_params,
                        "param_bytes": 4 * es.num_params,
                        "seconds": _summary(runs["seconds"]),
                        "distribution_s": _summary(runs["spent"]),
                        "bytes_sent": runs["evaluations"][-1].bytes_sent,
                        "bytes_received": runs["evaluations"][-1].bytes_received,
                        "loopback_bytes": statistics.median(loopback) if loopback else None,
                        "member_rebuild_s": rebuild,
                    }
                )
        # -- the grid ---------------------------------------------------------------------------
        for kind in kinds if "grid" in parts else []:
            for popsize in popsizes:
                for milliseconds in fitness_ms:
                    fitness, fitness_seconds = make_fitness(kind, milliseconds / 1e3)
                    long = popsize * milliseconds / 1e3 / workers > 5
                    for name, executor in made.items():
                        key = {"kind": kind, "executor": name, "popsize": popsize}
                        key["fitness_ms"] = milliseconds
                        cut = _cut(kind, name, popsize, milliseconds)
                        if cut:
                            rows.append({**key, "cut": cut})
                            continue
                        es = eo.Eggroll(
                            model_params(), popsize=popsize, sigma=0.1, learning_rate=0.01, seed=0
                        )
                        if executor is not None:
                            _generations(es, warm_fitness, executor, 1)  # workers up, code loaded
                        count = (1 if executor is None else long_repeats) if long else repeats
                        slots = 1 if executor is None else workers
                        runs = _generations(es, fitness, executor, count, slots)
                        evaluations, loopback = runs["evaluations"], runs["loopback"]
                        busy = [e.busy_seconds for e in evaluations]
                        rows.append(
                            {
                                **key,
                                "fitness_s": fitness_seconds,
                                "workers": slots,
                                "generations": count,
                                "seconds": _summary(runs["seconds"]),
                                "ideal_s": popsize * fitness_seconds / slots,
                                "busy_per_worker_s": statistics.median(busy) / slots,
                                "distribution_s": _summary(runs["spent"]),
                                "parent_cpu_s": _summary(runs["cpu"]),
                                "tasks": evaluations[-1].tasks,
                                "bytes_sent": evaluations[-1].bytes_sent,
                                "bytes_received": evaluations[-1].bytes_received,
                                "loopback_bytes": statistics.median(loopback) if loopback else None,
                            }
                        )
    constants = _fit_constants(task_rows, size_rows, rows, workers)
    param_bytes = 4 * int(sum(np.size(v) for v in _flat_values(model_params())))
    for row in rows:
        if "seconds" in row:
            row["param_bytes"] = param_bytes
            row["model_s"] = _predict(constants, row, workers)
            row["model_distribution_s"] = _distribution_model(constants, row)
    return {
        "setup": {
            "workers": workers,
            "threads_per_worker": 1,
            "model_params": int(sum(np.size(v) for v in _flat_values(model_params()))),
            "process_start_method": _start_method(),
            "warm_fitness_s": warm_seconds,
        },
        "machine": machine_before,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "wall_seconds": time.perf_counter() - started,
        "task_rows": task_rows,
        "size_rows": size_rows,
        "rows": rows,
        "constants": constants,
        "checks": _checks(rows, workers),
    }


def _flat_values(tree: dict[str, Any]) -> Iterator[Any]:
    for value in tree.values():
        if isinstance(value, dict):
            yield from _flat_values(value)
        else:
            yield value


def _start_method() -> str:
    import multiprocessing

    return str(multiprocessing.get_start_method(allow_none=True) or "default")


def _cut(kind: str, name: str, popsize: int, milliseconds: float) -> str:
    if popsize >= 4096 and milliseconds >= 100:
        return "cut: 205 s per generation even on 2 workers"
    if name == "in-process" and popsize >= 4096:
        return "cut: N times the per-member cost measured at N=256"
    if name == "threads" and kind == "cpu" and (popsize >= 4096 or milliseconds >= 100):
        return "cut: the cpu fitness holds the GIL, threads run it as in process"
    return ""


def _fit_constants(
    task_rows: list[dict[str, Any]],
    size_rows: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    workers: int,
) -> dict[str, Any]:
    """Least-squares constants of the model, per executor."""
    constants: dict[str, Any] = {}
    for name in ("processes", "dask"):
        mine = [r for r in task_rows if r["executor"] == name]
        if len(mine) >= 2:
            tasks = np.array([r["tasks"] for r in mine], dtype=float)
            spent = np.array([r["distribution_s"]["median"] for r in mine])
            cpu = np.array([r["parent_cpu_s"]["median"] for r in mine])
            per_task, fixed = np.polyfit(tasks, spent, 1)
            cpu_per_task, cpu_fixed = np.polyfit(tasks, cpu, 1)
            constants[name] = {
                "fixed_s": float(fixed),
                "per_task_s": float(per_task),
                "parent_cpu_fixed_s": float(cpu_fixed),
                "parent_cpu_per_task_s": float(cpu_per_task),
            }
        sizes = [
            (r["param_bytes"], r["distribution_s"]["median"])
            for r in size_rows
            if r["executor"] == name
        ]
        if len(sizes) >= 2 and name in constants:
            nbytes, seconds = np.array(sizes, dtype=float).T
            per_byte, _ = np.polyfit(nbytes, seconds, 1)
            constants[name]["per_param_byte_s"] = float(per_byte)
    base = [r for r in rows if r["executor"] == "in-process" and "seconds" in r]
    if base:
        member = [r["seconds"]["median"] / r["popsize"] - r["fitness_s"] for r in base]
        constants["in-process"] = {"per_member_overhead_s": float(np.median(member))}
    return constants


def _distribution_model(constants: dict[str, Any], row: dict[str, Any]) -> float | None:
    """Modelled cost of distribution alone: fixed + per task + per broadcast byte."""
    fitted = constants.get(row["executor"])
    if row["executor"] in ("in-process", "threads"):
        return 0.0 if row["executor"] == "in-process" else None
    if fitted is None:
        return None
    per_byte = fitted.get("per_param_byte_s", 0.0)
    return float(
        fitted["fixed_s"] + fitted["per_task_s"] * row["tasks"] + per_byte * row["param_bytes"]
    )


def _predict(constants: dict[str, Any], row: dict[str, Any], workers: int) -> float | None:
    """The model's time per generation for a measured row (None where it has no constants)."""
    member = constants.get("in-process", {}).get("per_member_overhead_s")
    distribution = _distribution_model(constants, row)
    if member is None or distribution is None:
        return None
    slots = 1 if row["executor"] == "in-process" else workers
    return float(distribution + row["popsize"] * (row["fitness_s"] + member) / slots)


def _checks(rows: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    checks = []
    for row in rows:
        if row.get("popsize") == 256 and row.get("fitness_ms") == 10 and "seconds" in row:
            if row["executor"] in ("processes", "dask"):
                label = f"{row['executor']}, {row['kind']} fitness, N=256, 10 ms, {workers} workers"
                ideal = row["seconds"]["median"] / row["ideal_s"] - 1
                busy = row["distribution_s"]["median"] / row["ideal_s"]
                checks.append(
                    {
                        "check": f"{label}: (time - N·t/W) / (N·t/W)",
                        "value": ideal,
                        "target": "<= 0.20",
                        "met": bool(ideal <= 0.20),
                    }
                )
                checks.append(
                    {
                        "check": f"{label}: (time - slowest worker) / (N·t/W)",
                        "value": busy,
                        "target": "<= 0.20",
                        "met": bool(busy <= 0.20),
                    }
                )
    return checks


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown tables."""
    setup = result["setup"]
    workers = setup["workers"]
    lines = [
        f"{workers} workers (processes: eo.ProcessPool, start method "
        f"{setup['process_start_method']}; Dask: LocalCluster of {workers} worker processes x 1 "
        f"thread on 127.0.0.1; threads: ThreadPoolExecutor({workers})); model "
        f"{setup['model_params']} parameters, float32. Load average before/after: "
        f"{'/'.join(f'{v:.1f}' for v in result['load_average_before'])} -> "
        f"{'/'.join(f'{v:.1f}' for v in result['load_average_after'])}.",
        "",
        "| fitness | executor | N | t | gens | time/gen median (min-max) s | ideal N·t/W | "
        "vs ideal | busy/W | time - slowest worker median (min-max) s | model s | model "
        "distribution s | tasks | bytes sent | bytes back | loopback bytes |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        head = f"| {row['kind']} | {row['executor']} | {row['popsize']} | {row['fitness_ms']:g} ms"
        if "cut" in row:
            lines.append(f"{head} | - | {row['cut']} |" + " |" * 10)
            continue
        seconds, spent = row["seconds"], row["distribution_s"]
        ideal = row["ideal_s"]
        model = "-" if row.get("model_s") is None else f"{row['model_s']:.3f}"
        mdist = row.get("model_distribution_s")
        mdist_text = "-" if mdist is None else f"{mdist:.3f}"
        loop = "-" if row["loopback_bytes"] is None else f"{row['loopback_bytes']:,.0f}"
        lines.append(
            f"{head} | {row['generations']} | {seconds['median']:.3f} ({seconds['min']:.3f}-"
            f"{seconds['max']:.3f}) | {ideal:.3f} | {100 * (seconds['median'] / ideal - 1):+.0f}%"
            f" | "
            f"{row['busy_per_worker_s']:.3f} | {spent['median']:.3f} ({spent['min']:.3f}-"
            f"{spent['max']:.3f}) | {model} | {mdist_text} | {row['tasks']} | "
            f"{row['bytes_sent']:,} | {row['bytes_received']:,} | {loop} |"
        )
    lines += [
        "",
        "Trivial fitness, N=256: time per generation against tasks per generation.",
        "",
        "| executor | tasks | time median (min-max) ms | time - slowest worker median ms | "
        "CPU of this process median ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["task_rows"]:
        s = row["seconds"]
        lines.append(
            f"| {row['executor']} | {row['tasks']} | {1e3 * s['median']:.1f} "
            f"({1e3 * s['min']:.1f}-{1e3 * s['max']:.1f}) | "
            f"{1e3 * row['distribution_s']['median']:.1f} | "
            f"{1e3 * row['parent_cpu_s']['median']:.1f} |"
        )
    lines += [
        "",
        f"Trivial fitness, N={2 * workers}: time and traffic per generation against parameter "
        "count (one float32 leaf).",
        "",
        "| executor | parameters | time median (min-max) ms | time - slowest worker median ms | "
        "bytes sent | loopback bytes | member rebuild ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["size_rows"]:
        s = row["seconds"]
        loop = "-" if row["loopback_bytes"] is None else f"{row['loopback_bytes']:,.0f}"
        lines.append(
            f"| {row['executor']} | {row['params']:,} | {1e3 * s['median']:.1f} "
            f"({1e3 * s['min']:.1f}-{1e3 * s['max']:.1f}) | "
            f"{1e3 * row['distribution_s']['median']:.1f} | {row['bytes_sent']:,} | {loop} | "
            f"{1e3 * row['member_rebuild_s']:.3f} |"
        )
    lines += ["", "| model constant | value |", "|---|---:|"]
    for name, values in result["constants"].items():
        for key, value in values.items():
            lines.append(f"| {name}: {key} | {value:.3g} |")
    lines += ["", "| check | measured | target | met |", "|---|---:|---|---|"]
    for check in result["checks"]:
        lines.append(
            f"| {check['check']} | {check['value']:.3f} | {check['target']} | "
            f"{'yes' if check['met'] else 'NO'} |"
        )
    info = result["machine"]
    lines += [
        "",
        f"Machine: {info['cpus']} CPUs, numpy {info['numpy']}, BLAS {info['blas']}, thread "
        f"variables {info['env_threads'] or 'unset'}; total {result['wall_seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line: run, print the tables, write JSON and markdown to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument(
        "--executors",
        default="in-process,threads,processes,dask",
        help="comma-separated subset of in-process,threads,processes,dask",
    )
    parser.add_argument(
        "--fitness", default="cpu,sleep", help="comma-separated subset of cpu,sleep"
    )
    parser.add_argument(
        "--parts", default="constants,grid", help="comma-separated subset of constants,grid"
    )
    parser.add_argument("--popsizes", default=None, help="override, e.g. 256,4096")
    parser.add_argument("--fitness-ms", default=None, help="override, e.g. 1,10,100")
    parser.add_argument("--repeats", type=int, default=None, help="generations per row")
    parser.add_argument("--out", default=None, help="folder for scaling.json / scaling.md")
    args = parser.parse_args(argv)
    names = args.executors.split(",")
    if args.quick:
        settings: dict[str, Any] = dict(
            popsizes=[32],
            fitness_ms=[1.0],
            repeats=2,
            long_repeats=1,
            sweep_sizes=[32, 64],
            chunk_sweep=[1, 2],
        )
    else:
        settings = dict(
            popsizes=[256, 4096],
            fitness_ms=[1.0, 10.0, 100.0],
            repeats=5,
            long_repeats=2,
            sweep_sizes=[100, 316, 1000],
            chunk_sweep=[1, 4, 16, 64],
        )
    if args.popsizes:
        settings["popsizes"] = [int(value) for value in args.popsizes.split(",")]
    if args.fitness_ms:
        settings["fitness_ms"] = [float(value) for value in args.fitness_ms.split(",")]
    if args.repeats:
        settings["repeats"] = settings["long_repeats"] = args.repeats
    result = run(
        workers=args.workers,
        names=names,
        kinds=args.fitness.split(","),
        parts=tuple(args.parts.split(",")),
        **settings,
    )
    text = markdown(result)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scaling.json"), "w") as handle:
            json.dump(result, handle, indent=2, default=str)
        with open(os.path.join(args.out, "scaling.md"), "w") as handle:
            handle.write(text + "\n")
    return result


if __name__ == "__main__":
    main()
