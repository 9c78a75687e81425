"""EGGROLL side by side with two peer libraries, in one run, on one task.

The task, the same for every library: a linear model without bias, ``W`` of 1024 x 1024
(1,048,576 float32 parameters, starting at zero), trained to reproduce a fixed target model
``W*`` (seeded normal / sqrt(1024)). A member's fitness is the mean squared error between its
outputs and the target's outputs on a fixed probe batch ``x`` of 32 seeded inputs. popsize 256,
sigma 0.01, z-score fitness shaping (the one shaping all three offer), plain SGD with the same
step, mirrored sampling. The step is ``lr / (N sigma) * sum_i z_i E_i`` (``E_i`` a member's
unit-sigma noise) in eggroll_opt and evosax; eggroll-trainer's is ``lr * sqrt(N) * mean_i(z_i
sigma E_i)``, so it is given ``lr / (sigma**2 * sqrt(N))``.

Each library evaluates the population its own way:

* ``eggroll_opt`` (``Eggroll``, rank 1): ``pop.linear("w", x)`` gives every member's outputs at
  once, no member materialised;
* ``evosax`` (``Open_ES``, JAX on CPU): full-rank noise, a population array of shape
  (popsize, 1024, 1024) and a vectorised fitness, the whole generation under one ``jax.jit``;
* ``eggroll-trainer`` (``EGGROLLTrainer``, PyTorch on CPU, rank 1): its ``step()``, which sets
  each member's weights into the model in turn and calls the fitness function once per member.

Every library runs in its own fresh subprocess. Seconds per generation exclude warm-up
generations (and JAX's compilation, which is timed on its own); memory is the peak resident set
size (``ru_maxrss``) of that process, and its increase over the resident set size after
imports and setup. The loss of each library's mean parameters is computed with the same NumPy
code after the same number of generations.

A second task, ``--task mnist-cnn``, trains the CNN of ``examples/mnist.py`` on MNIST with
eggroll_opt's Eggroll and OpenES, eggroll-trainer's two trainers, EvoTorch's PGPE and evosax's
Open_ES, beside inference-only floors, at each of ``--threads`` (see
:mod:`benchmarks.peers_mnist`).

Run ``PYTHONPATH=. python -m benchmarks.peers [--task linear|mnist-cnn|all] [--threads 1,2]
[--quick] [--out DIR]`` from the repository; a peer that is not installed gives a row with the
reason (see ``docs/peers.md`` to install them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import numpy as np

from ._measure import command_line, describe, machine

MB = 2**20
WIDTH = 1024  # W is WIDTH x WIDTH
PROBE = 32  # inputs in the probe batch
SIGMA = 0.01
RANK = 1
RESULT_MARK = "PEERS-RESULT "

#: Each library: the module it needs to import, the modules whose versions a row records.
LIBRARIES: dict[str, dict[str, Any]] = {
    "eggroll_opt": {
        "needs": ["eggroll_opt"],
        "versions": ["eggroll_opt", "numpy", "scipy"],
    },
    "evosax": {
        "needs": ["evosax", "jax", "optax"],
        "versions": ["evosax", "jax", "jaxlib", "optax", "flax", "numpy"],
    },
    "eggroll-trainer": {
        "needs": ["eggroll_trainer", "torch"],
        "versions": ["eggroll-trainer", "torch", "numpy"],
    },
}


def plan(quick: bool) -> dict[str, Any]:
    """Sizes of a run: popsize, warm-up and timed generations, learning rate."""
    if quick:
        return {"popsize": 32, "warmup": 1, "timed": 5, "learning_rate": 5e-5, "timeout": 120}
    return {"popsize": 256, "warmup": 2, "timed": 18, "learning_rate": 2e-4, "timeout": 1800}


# -- what every worker shares -----------------------------------------------------------------
def make_task(seed: int = 0) -> dict[str, np.ndarray]:
    """The target ``W*``, the probe batch ``x``, the target outputs ``y`` and the start ``W0``."""
    rng = np.random.default_rng(seed)
    target = (rng.standard_normal((WIDTH, WIDTH)) / math.sqrt(WIDTH)).astype(np.float32)
    x = rng.standard_normal((PROBE, WIDTH)).astype(np.float32)
    return {"target": target, "x": x, "y": x @ target.T, "w0": np.zeros((WIDTH, WIDTH), np.float32)}


def task_loss(w: np.ndarray, task: dict[str, np.ndarray]) -> float:
    """Mean squared error of ``x @ w.T`` against the target outputs (the same for every library)."""
    w = np.asarray(w, dtype=np.float32).reshape(WIDTH, WIDTH)
    return float(np.mean((task["x"] @ w.T - task["y"]) ** 2))


def rss_now() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc``; else the peak so far)."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss()


def peak_rss() -> int:
    """Peak resident set size of this process so far, in bytes (``ru_maxrss``)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def versions(names: list[str]) -> dict[str, str]:
    """Installed distribution versions (``"not installed"`` for a missing one)."""
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def thread_info() -> dict[str, Any]:
    """Thread settings in this process: variables, thread pools, PyTorch's and JAX's own."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "env": {
            name: os.environ[name]
            for name in (
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "MKL_NUM_THREADS",
                "XLA_FLAGS",
            )
            if name in os.environ
        },
    }
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [
            f"{pool.get('internal_api')} {pool.get('version')} ({pool.get('num_threads')})"
            for pool in threadpool_info()
        ]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch"] = (
            f"intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}"
        )
    if hasattr(os, "sched_getaffinity"):
        info["cpus_allowed"] = sorted(os.sched_getaffinity(0))
    try:
        with open("/proc/self/status") as file:
            info["os_threads"] = next(
                int(line.split()[1]) for line in file if line.startswith("Threads:")
            )
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    if "jax" in sys.modules:
        jax = sys.modules["jax"]
        devices = jax.devices()
        info["jax"] = (
            f"{len(devices)} {devices[0].platform} device(s); XLA CPU threads follow the "
            f"{os.cpu_count()} CPUs unless XLA_FLAGS says otherwise"
        )
    return info


def _run_generations(
    generation: Callable[[], None], warmup: int, timed: int
) -> tuple[dict[str, float], list[float]]:
    """Run ``warmup + timed`` generations; statistics of the timed ones and every duration."""
    seconds = []
    for _ in range(warmup + timed):
        start = time.perf_counter()
        generation()
        seconds.append(time.perf_counter() - start)
    kept = seconds[warmup:]
    stats = {"median": statistics.median(kept), "min": min(kept), "max": max(kept)}
    return stats, seconds


# -- the three workers (each runs in its own subprocess) --------------------------------------
def _worker_eggroll_opt(config: dict[str, Any]) -> dict[str, Any]:
    import eggroll_opt as eo

    task = make_task()
    popsize, lr = config["popsize"], config["learning_rate"]
    es = eo.Eggroll(
        {"w": task["w0"].copy()},
        popsize=popsize,
        sigma=SIGMA,
        learning_rate=lr,
        rank=RANK,
        mirrored=True,
        fitness_shaping="zscore",
        optimizer="sgd",
        seed=0,
        backend="numpy",
    )
    x, y = task["x"], task["y"]
    initial = task_loss(es.params["w"], task)
    baseline = rss_now()

    def generation() -> None:
        pop = es.ask()
        out = pop.linear("w", x)  # (popsize, PROBE, WIDTH), all members at once
        es.tell(((out - y) ** 2).mean(axis=(1, 2)))

    stats, seconds = _run_generations(generation, config["warmup"], config["timed"])
    return {
        "method": "Eggroll (low-rank ES)",
        "settings": (
            f"rank {RANK}, mirrored=True, fitness_shaping='zscore', optimizer='sgd', "
            f"learning_rate={lr:g}, backend='numpy'; fitness via pop.linear"
        ),
        "seconds_per_generation": stats,
        "generation_seconds": seconds,
        "compile_seconds": None,
        "rss_after_setup_bytes": baseline,
        "initial_loss": initial,
        "loss": task_loss(es.params["w"], task),
    }


def _worker_evosax(config: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax
    from evosax.algorithms import Open_ES
    from evosax.core.fitness_shaping import standardize_fitness_shaping_fn

    task = make_task()
    popsize, lr = config["popsize"], config["learning_rate"]
    es = Open_ES(
        popsize,
        {"w": jnp.asarray(task["w0"])},
        use_antithetic_sampling=True,
        optimizer=optax.sgd(learning_rate=lr),
        std_schedule=optax.constant_schedule(SIGMA),
        fitness_shaping_fn=standardize_fitness_shaping_fn,
    )
    params = es.default_params
    key = jax.random.key(0)
    key, init_key = jax.random.split(key)
    state = es.init(init_key, {"w": jnp.asarray(task["w0"])}, params)
    x, y = jnp.asarray(task["x"]), jnp.asarray(task["y"])

    def losses(weights: Any) -> Any:  # (popsize, m, n) -> (popsize,)
        out = jnp.einsum("bn,pmn->pbm", x, weights)
        return jnp.mean((out - y) ** 2, axis=(1, 2))

    def one_generation(state: Any, key: Any) -> tuple[Any, Any]:
        key, ask_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        state, _ = es.tell(tell_key, population, losses(population["w"]), state, params)
        return state, key

    jax.block_until_ready(state)
    initial = task_loss(np.asarray(es.get_mean(state)["w"]), task)
    baseline = rss_now()
    start = time.perf_counter()
    compiled = jax.jit(one_generation).lower(state, key).compile()
    compile_seconds = time.perf_counter() - start
    carry = [state, key]

    def generation() -> None:
        carry[0], carry[1] = compiled(carry[0], carry[1])
        jax.block_until_ready(carry[0])

    stats, seconds = _run_generations(generation, config["warmup"], config["timed"])
    return {
        "method": "Open_ES (full-rank ES)",
        "settings": (
            f"use_antithetic_sampling=True, std_schedule=constant {SIGMA:g}, "
            f"optimizer=optax.sgd({lr:g}), fitness_shaping_fn=standardize; "
            "ask + vectorised fitness + tell in one jax.jit"
        ),
        "seconds_per_generation": stats,
        "generation_seconds": seconds,
        "compile_seconds": compile_seconds,
        "rss_after_setup_bytes": baseline,
        "initial_loss": initial,
        "loss": task_loss(np.asarray(es.get_mean(carry[0])["w"]), task),
    }


def _worker_eggroll_trainer(config: dict[str, Any]) -> dict[str, Any]:
    import torch
    from eggroll_trainer import EGGROLLTrainer

    task = make_task()
    popsize = config["popsize"]
    # Its step is lr * sqrt(N) * mean_i(z_i * sigma * E_i): this lr takes the same step as
    # lr / (N sigma) * sum_i z_i E_i in the other two libraries.
    lr = config["learning_rate"] / (SIGMA**2 * math.sqrt(popsize))
    model = torch.nn.Linear(WIDTH, WIDTH, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(task["w0"]))
    x, y = torch.from_numpy(task["x"]), torch.from_numpy(task["y"])

    def fitness(member: Any) -> float:  # maximised by the trainer: minus the loss
        with torch.no_grad():
            return -float(torch.mean((member(x) - y) ** 2))

    trainer = EGGROLLTrainer(
        model.parameters(),
        model=model,
        fitness_fn=fitness,
        population_size=popsize,
        learning_rate=lr,
        sigma=SIGMA,
        rank=RANK,
        noise_reuse=2,
        group_size=0,
        seed=0,
    )
    initial = task_loss(model.weight.detach().numpy(), task)
    baseline = rss_now()

    # In 0.1.0, step() builds each member from the previous member's weights and restores the
    # mean after the loop: with noise_reuse=2, member 2k+1 is the mean itself (docs/peers.md).
    # The work per member, which is what the time measures, is the same either way.
    def generation() -> None:
        with torch.no_grad():
            trainer.step()

    stats, seconds = _run_generations(generation, config["warmup"], config["timed"])
    return {
        "method": "EGGROLLTrainer (low-rank ES)",
        "settings": (
            f"rank {RANK}, noise_reuse=2 (antithetic pairs), group_size=0 (global z-score), "
            f"learning_rate={lr:g} (same step as the others), step() under torch.no_grad(); "
            "fitness called once per member"
        ),
        "seconds_per_generation": stats,
        "generation_seconds": seconds,
        "compile_seconds": None,
        "rss_after_setup_bytes": baseline,
        "initial_loss": initial,
        "loss": task_loss(model.weight.detach().numpy(), task),
    }


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "eggroll_opt": _worker_eggroll_opt,
    "evosax": _worker_evosax,
    "eggroll-trainer": _worker_eggroll_trainer,
}


def load_average() -> float | None:
    """The 1-minute load average (other work on the machine shows here), None if unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _task_module() -> Any:
    """:mod:`benchmarks.peers_mnist`, imported when a task needs it (it imports this module)."""
    from . import peers_mnist

    return peers_mnist


def _spec(library: str, config: dict[str, Any]) -> dict[str, Any]:
    """What ``library`` (a row name for the MNIST task) needs and records, for ``config``'s task."""
    if config.get("task", "linear") == "linear":
        return LIBRARIES[library]
    spec: dict[str, Any] = _task_module().ROWS[library]
    return spec


def pin_to_cpus(threads: int | None) -> None:
    """Keep this process on its first ``threads`` allowed CPUs (Linux), when that is fewer.

    The thread variables do not hold every library to a thread count: XLA's CPU runtime in
    jax 0.10 ran a convolution on both CPUs with ``XLA_FLAGS`` asking for one intra-op thread
    (CPU seconds per wall second 1.9); on one allowed CPU it used one.
    """
    if not threads or not hasattr(os, "sched_setaffinity"):
        return
    allowed = sorted(os.sched_getaffinity(0))
    if threads < len(allowed):
        os.sched_setaffinity(0, allowed[:threads])


def run_worker(library: str, config: dict[str, Any]) -> dict[str, Any]:
    """Inside the subprocess: measure ``library`` and add versions, memory, threads and load."""
    pin_to_cpus(config.get("threads"))
    before = load_average()
    if config.get("task", "linear") == "linear":
        row = WORKERS[library](config)
    else:
        row = _task_module().WORKERS[library](config)
    row["load_average"] = {"before": before, "after": load_average()}
    row["peak_rss_bytes"] = peak_rss()
    row["rss_increase_bytes"] = row["peak_rss_bytes"] - row["rss_after_setup_bytes"]
    row["versions"] = versions(_spec(library, config)["versions"])
    row["threads"] = thread_info()
    return row


# -- the parent: one subprocess per library ---------------------------------------------------
def _missing(library: str, config: dict[str, Any] | None = None) -> list[str]:
    needs = _spec(library, config or {})["needs"]
    return [name for name in needs if importlib.util.find_spec(name) is None]


#: XLA_FLAGS for a JAX worker at one thread (jax 0.10's XLA accepts both; see thread_env).
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def thread_env(threads: int) -> dict[str, str]:
    """Variables that hold a worker to ``threads`` threads, set before it imports anything.

    BLAS and OpenMP (NumPy, PyTorch) read the ``*_NUM_THREADS`` variables; PyTorch's workers
    also call ``torch.set_num_threads``. XLA (JAX) reads ``XLA_FLAGS``: at one thread Eigen's
    pool is switched off and the intra-op pool has one thread; above one, the intra-op pool gets
    ``threads`` threads. jax 0.10 accepts these flags but still spreads work over every allowed
    CPU, so the worker also pins itself to ``threads`` CPUs (:func:`pin_to_cpus`).
    """
    value = str(threads)
    xla = (
        XLA_ONE_THREAD
        if threads == 1
        else f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}"
    )
    return {
        "OMP_NUM_THREADS": value,
        "OPENBLAS_NUM_THREADS": value,
        "MKL_NUM_THREADS": value,
        "XLA_FLAGS": xla,
    }


def _module_command() -> tuple[list[str], dict[str, str]]:
    """How to start this module in a fresh interpreter (and the PYTHONPATH it needs)."""
    spec = globals().get("__spec__")
    name = spec.name if spec is not None else "benchmarks.peers"
    env = dict(os.environ)
    if name.startswith("benchmarks."):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", name], env


def measure_library(library: str, config: dict[str, Any]) -> dict[str, Any]:
    """One library's row, measured in a fresh subprocess (a ``skipped`` row if it cannot run)."""
    spec = _spec(library, config)
    head: dict[str, Any] = {
        "library": spec.get("library", library),
        "popsize": config["popsize"],
        "params": config.get("params", WIDTH * WIDTH),
        "loss_generations": config["warmup"] + config["timed"],
        "warmup_generations": config["warmup"],
        "timed_generations": config["timed"],
    }
    if config.get("task", "linear") != "linear":
        head |= {
            "task": config["task"],
            "row": library,
            "thread_count": config.get("threads"),
            "held_out": config.get("held_out"),
        }
    missing = _missing(library, config)
    if missing:
        return head | {
            "version": "not installed",
            "skipped": f"{', '.join(missing)} not installed in this environment "
            "(docs/peers.md says how to install the peers)",
        }
    if config.get("task", "linear") != "linear":
        reason = _task_module().unavailable(config)
        if reason is not None:
            return head | {"version": "?", "skipped": reason}
    command, env = _module_command()
    if config.get("threads"):
        env.update(thread_env(config["threads"]))
    command += ["--worker", library, "--config", json.dumps(config)]
    start = time.perf_counter()
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=config["timeout"]
        )
    except subprocess.TimeoutExpired:
        return head | {"version": "?", "skipped": f"run exceeded {config['timeout']} s"}
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return head | {
            "version": "?",
            "skipped": f"run failed (exit {done.returncode}): {last}",
        }
    row = head | json.loads(lines[-1][len(RESULT_MARK) :])
    row["version"] = row["versions"].get(spec["versions"][0], "?")
    row["wall_seconds"] = wall
    return row


TASKS = ("linear", "mnist-cnn")


def section_peers(
    quick: bool,
    task: str = "linear",
    threads: list[int] | None = None,
    mnist_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Rows of one task: each library (for ``"mnist-cnn"``, each row of
    :data:`benchmarks.peers_mnist.ROWS`) at each thread count, in this order (a library's thread
    counts one after the other, so that they share the machine's load of the moment).

    ``threads``: the thread counts to run each row at (None: no thread variables set, the
    machine's defaults). ``mnist_dir``: the MNIST folder (default: ``$EGGROLL_OPT_MNIST``, else
    ``shared/data/mnist`` beside the repository).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
    if task == "linear":
        config, names = plan(quick), list(LIBRARIES)
    else:
        config, names = _task_module().plan(quick, mnist_dir), list(_task_module().ROWS)
    rows = []
    counts: list[int | None] = list(threads) if threads else [None]
    for library in names:
        for count in counts:
            row = measure_library(library, config | ({"threads": count} if count else {}))
            rows.append(row)
            label = library + (f" ({count} thread{'s' if count > 1 else ''})" if count else "")
            if "skipped" in row:
                print(f"  peers: {label}: skipped: {row['skipped']}", flush=True)
                continue
            seconds = row["seconds_per_generation"]["median"]
            loss = "" if row.get("loss") is None else f" -> {row['loss']:.4f}"
            print(
                f"  peers: {label}: {seconds:.3f} s/generation, peak RSS "
                f"{row['peak_rss_bytes'] / MB:.0f} MB (+{row['rss_increase_bytes'] / MB:.0f} MB), "
                f"loss {row['initial_loss']:.4f}{loss}",
                flush=True,
            )
    return rows


# -- report ------------------------------------------------------------------------------------
def _seconds(stats: dict[str, float]) -> str:
    return f"{stats['median']:.3f} ({stats['min']:.3f}-{stats['max']:.3f})"


def markdown_peers(rows: list[dict[str, Any]]) -> str:
    """A table of the rows, the ratios of each peer to eggroll_opt, settings and threads.

    Rows of the MNIST task (``row["task"] == "mnist-cnn"``) get their own section after the
    linear task's.
    """
    mnist = [row for row in rows if row.get("task") == "mnist-cnn"]
    linear = [row for row in rows if row.get("task") != "mnist-cnn"]
    if mnist:
        parts = [markdown_peers(linear)] if linear else []
        return "\n\n".join([*parts, _task_module().markdown(mnist)])
    if not rows:
        return "No peer rows."
    first = rows[0]
    lines = [
        f"## EGGROLL against peer libraries ({first['params']:,} parameters, popsize "
        f"{first['popsize']}, rank {RANK}, sigma {SIGMA:g})",
        "",
        f"Seconds per generation over {first['timed_generations']} generations after "
        f"{first['warmup_generations']} warm-up generations; each library in its own process; "
        f"loss of the mean after {first['loss_generations']} generations.",
        "",
        "| library | method | version | s / generation, median (min-max) | compile s | "
        "RSS after setup MB | peak RSS MB | RSS increase MB | loss: start -> after |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(
                f"| {row['library']} | | {row['version']} | skipped: {row['skipped']} | | | | | |"
            )
            continue
        compile_s = row["compile_seconds"]
        lines.append(
            f"| {row['library']} | {row['method']} | {row['version']} | "
            f"{_seconds(row['seconds_per_generation'])} | "
            f"{'-' if compile_s is None else f'{compile_s:.2f}'} | "
            f"{row['rss_after_setup_bytes'] / MB:.0f} | {row['peak_rss_bytes'] / MB:.0f} | "
            f"{row['rss_increase_bytes'] / MB:.0f} | "
            f"{row['initial_loss']:.4f} -> {row['loss']:.4f} |"
        )
    ours = next((r for r in rows if r["library"] == "eggroll_opt" and "skipped" not in r), None)
    peers = [r for r in rows if r["library"] != "eggroll_opt" and "skipped" not in r]
    if ours is not None and peers:
        lines += [
            "",
            "| peer / eggroll_opt (same run) | time per generation | peak RSS | RSS increase |",
            "|---|---:|---:|---:|",
        ]
        for row in peers:
            time_ratio = (
                row["seconds_per_generation"]["median"] / ours["seconds_per_generation"]["median"]
            )
            peak_ratio = row["peak_rss_bytes"] / max(ours["peak_rss_bytes"], 1)
            rise_ratio = row["rss_increase_bytes"] / max(ours["rss_increase_bytes"], 1)
            lines.append(
                f"| {row['library']} | {time_ratio:.1f}x | {peak_ratio:.1f}x | {rise_ratio:.1f}x |"
            )
    lines += [
        "",
        *settings_lines(rows),
    ]
    return "\n".join(lines)


def settings_lines(
    rows: list[dict[str, Any]], *, name: str = "library", with_threads: bool = False
) -> list[str]:
    """A heading, then one bullet per measured row: settings, versions, thread pools, variables
    and load.

    ``name`` is the row field that names the row; ``with_threads`` adds the thread count the
    parent asked for and the process's OS threads at the end.
    """
    lines = [
        "Settings, versions, threads and the machine's load (a load average above the CPU count "
        "means other work shared the CPUs during that measurement):",
        "",
    ]
    for row in rows:
        if "skipped" in row:
            continue
        used = ", ".join(f"{k} {v}" for k, v in row["versions"].items())
        threads = row["threads"]
        pools = threads["threadpools"]
        pools = "; ".join(pools) if isinstance(pools, list) else pools
        extra = "; ".join(f"{k}: {threads[k]}" for k in ("torch", "jax") if k in threads)
        env = ", ".join(f"{k}={v}" for k, v in threads["env"].items()) or "no thread variables set"
        load = row.get("load_average", {})
        loads = "unknown"
        if load.get("before") is not None and load.get("after") is not None:
            loads = f"{load['before']:.1f} before, {load['after']:.1f} after"
        label = row[name]
        if with_threads:
            label += f" ({row.get('thread_count') or 'default'} thread(s))"
            if threads.get("os_threads") is not None:
                extra += ("; " if extra else "") + f"OS threads at the end: {threads['os_threads']}"
            if threads.get("cpus_allowed") is not None:
                allowed = ",".join(map(str, threads["cpus_allowed"]))
                extra += ("; " if extra else "") + f"CPUs allowed: {allowed}"
        lines.append(
            f"* {label}: {row['settings']}. Versions: {used}. Threads: {pools}"
            + (f"; {extra}" if extra else "")
            + f"; {env}. 1-minute load average: {loads}."
        )
    return lines


def parse_threads(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]`` (each a positive integer)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected thread counts like 1,2; got {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.peers [--task T] [--threads 1,2] [--quick] [--out DIR]``."""
    parser = command_line("python -m benchmarks.peers", __doc__)
    parser.add_argument(
        "--task",
        choices=[*TASKS, "all"],
        default="all",
        help="linear (1024 x 1024 linear model), mnist-cnn (the CNN of examples/mnist.py) or "
        "all (default)",
    )
    parser.add_argument(
        "--threads",
        type=parse_threads,
        default=None,
        help="thread counts of the mnist-cnn rows, e.g. 1,2 (default: 1,2; with --quick: 1); "
        "the linear task keeps the machine's defaults",
    )
    parser.add_argument(
        "--mnist-dir",
        default=None,
        help="folder with the MNIST IDX files (default: $EGGROLL_OPT_MNIST, else "
        "shared/data/mnist beside the repository)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="popsize 32 and a few generations (a minute or two)",
    )
    parser.add_argument("--out", default=None, help="also write peers.md and peers.json here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        row = run_worker(args.worker, json.loads(args.config))
        print(RESULT_MARK + json.dumps(row, default=float), flush=True)
        return 0
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    start = time.perf_counter()
    threads = args.threads or ([1] if args.quick else [1, 2])
    rows = []
    if args.task in ("linear", "all"):
        rows += section_peers(args.quick)
    if args.task in ("mnist-cnn", "all"):
        rows += section_peers(args.quick, "mnist-cnn", threads, args.mnist_dir)
    total = time.perf_counter() - start
    command = "PYTHONPATH=. python -m benchmarks.peers" + (" --quick" if args.quick else "")
    if args.task != "all":
        command += f" --task {args.task}"
    if args.task != "linear":
        command += f" --threads {','.join(map(str, threads))}"
    text = "\n".join(
        [
            markdown_peers(rows),
            "",
            f"Command: `{command}`; started {started}; {total:.0f} s in all.",
            "",
            f"Machine: {describe(machine())}.",
        ]
    )
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "peers.md"), "w") as file:
            file.write(text + "\n")
        with open(os.path.join(args.out, "peers.json"), "w") as file:
            json.dump(
                {
                    "command": command,
                    "started": started,
                    "total_seconds": total,
                    "machine": machine(),
                    "rows": rows,
                },
                file,
                indent=1,
                default=float,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
