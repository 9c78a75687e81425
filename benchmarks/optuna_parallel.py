"""Processes sharing one SQLite study: how often does a trial run a candidate twice?

``--workers`` processes each run ``--trials`` trials of one study in a fresh SQLite file, all
with ``EggrollSampler(seed=0)`` (default population size: 9 for this search space). The
objective (a float, an int and a four-way choice) sleeps ``--seconds`` times 1 to 1.8, so the
processes interleave. Before the workers start, this process runs the first trial (it defines
the search space).

A *duplicate* is a member trial whose ``(run, generation, member)`` slot already had a trial:
the same candidate evaluated again. Reported per repeat: member trials, duplicates and their
fraction, generations the strategy was told, wall seconds of the workers, and distinct
candidates evaluated per second.

Run ``python -m benchmarks.optuna_parallel [--workers 4] [--trials 50] [--seconds 0.003]
[--repeats 3] [--quick] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._measure import machine, write_report

if TYPE_CHECKING:
    import optuna

ROOT = Path(__file__).resolve().parent.parent


def objective(trial: optuna.Trial, seconds: float) -> float:
    """A deterministic function of the parameters that takes ``seconds`` times 1 to 1.8."""
    x = trial.suggest_float("x", -3.0, 3.0)
    n = trial.suggest_int("n", 0, 20)
    kind = trial.suggest_categorical("kind", ["a", "b", "c", "d"])
    time.sleep(seconds * (1.0 + 0.2 * ((trial.number * 7) % 5)))
    return (x - 1.0) ** 2 + abs(n - 13) / 5 + (kind != "c")


def _storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def work(url: str, trials: int, seconds: float) -> None:
    """One worker process: ``trials`` trials of the study ``"parallel"`` at ``url``."""
    import optuna
    from eggroll_opt.integrations.optuna import EggrollSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name="parallel", storage=_storage(url), sampler=EggrollSampler(seed=0)
    )
    study.optimize(lambda trial: objective(trial, seconds), n_trials=trials)


def measure(workers: int, trials: int, seconds: float) -> dict[str, Any]:
    """Run the workers on a fresh study; count member trials, duplicates and generations."""
    import optuna
    from eggroll_opt.integrations.optuna import MEMBER_ATTR, EggrollSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'parallel.db'}"
        study = optuna.create_study(
            storage=_storage(url), study_name="parallel", sampler=EggrollSampler(seed=0)
        )
        study.optimize(lambda trial: objective(trial, seconds), n_trials=1)
        command = [sys.executable, "-m", "benchmarks.optuna_parallel", "--worker", url]
        command += ["--trials", str(trials), "--seconds", str(seconds)]
        start = time.perf_counter()
        processes = [subprocess.Popen(command, cwd=ROOT) for _ in range(workers)]
        codes = [process.wait() for process in processes]
        wall = time.perf_counter() - start
        if any(codes):
            raise RuntimeError(f"a worker process failed: exit codes {codes}")
        slots = [
            tuple(trial.system_attrs[MEMBER_ATTR])
            for trial in study.get_trials(deepcopy=False)
            if MEMBER_ATTR in trial.system_attrs
        ]
    distinct = set(slots)
    complete: dict[int, set[int]] = {}  # generation: members with a trial
    for _, generation, member in distinct:
        complete.setdefault(generation, set()).add(member)
    popsize = max(len(members) for members in complete.values())
    return {
        "workers": workers,
        "trials_per_worker": trials,
        "seconds": seconds,
        "members": len(slots),
        "duplicates": len(slots) - len(distinct),
        "fraction": (len(slots) - len(distinct)) / len(slots),
        "generations": sum(len(members) == popsize for members in complete.values()),
        "wall_s": wall,
        "candidates_per_s": len(distinct) / wall,
    }


def markdown(results: list[dict[str, Any]]) -> str:
    """One table row per repeat."""
    lines = [
        "| workers | trials | objective s | members | duplicates | fraction | generations "
        "| wall s | candidates/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['workers']} | {r['workers'] * r['trials_per_worker']} | {r['seconds']:g} "
            f"| {r['members']} | {r['duplicates']} | {100 * r['fraction']:.1f}% "
            f"| {r['generations']} | {r['wall_s']:.1f} | {r['candidates_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure ``--repeats`` runs; print the table (and save it with ``--out``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--trials", type=int, default=50, help="trials per worker")
    parser.add_argument("--seconds", type=float, default=0.003, help="objective sleep")
    parser.add_argument("--repeats", type=int, default=3, help="fresh studies measured")
    parser.add_argument("--quick", action="store_true", help="2 workers, 10 trials, once")
    parser.add_argument("--out", help="folder for optuna_parallel.md and .json")
    parser.add_argument("--worker", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        work(args.worker, args.trials, args.seconds)
        return []
    if args.quick:
        args.workers, args.trials, args.repeats = 2, 10, 1
    results = []
    for _ in range(args.repeats):
        result = measure(args.workers, args.trials, args.seconds)
        print(
            f"{result['members']} member trials, {result['duplicates']} duplicates "
            f"({100 * result['fraction']:.1f}%), {result['generations']} generations, "
            f"{result['wall_s']:.1f} s",
            flush=True,
        )
        results.append(result)
    text = markdown(results)
    print(text)
    if args.out:
        write_report(args.out, "optuna_parallel", text, {"results": results, "machine": machine()})
    return results


if __name__ == "__main__":
    main()
