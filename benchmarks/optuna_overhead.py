"""Sampler overhead per trial: EggrollSampler beside Optuna's TPE, CMA-ES and random samplers.

For 10, 100 and 1000 float parameters (``suggest_float(name, -1, 1)``, objective: the sum of
squares) and in-memory storage, the sampler's own time per trial is measured at trial 100 and
at trial 1000: the median, over a window of trials starting there, of the time spent inside
the sampler's entry points (``infer_relative_search_space``, ``sample_relative``,
``sample_independent``, ``before_trial``, ``after_trial``; nested calls counted once), as CPU
time of the thread (robust to other work on the machine) and as wall time. The wall time of
the whole trial (Optuna's bookkeeping, the ``suggest_float`` calls, the objective) is given
beside it for scale.

How the history is built:

* ``EggrollSampler`` and ``CmaEsSampler`` keep state made from their own trials, so their
  studies really run every trial up to the window (a run stops early at ``--max-seconds``;
  windows it did not reach are marked).
* ``TPESampler`` and ``RandomSampler`` depend only on the trials in the study, so the history
  before each window is added with ``study.add_trials`` (uniform random parameters, their true
  objective values), then the window's trials run. This keeps TPE at 1000 parameters and 1000
  trials within minutes.

Run ``python -m benchmarks.optuna_overhead [--quick] [--window N] [--max-seconds S] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ._measure import machine, write_report

SAMPLERS = ("eggroll", "tpe", "cmaes", "random")
ENTRY_POINTS = (
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "before_trial",
    "after_trial",
)


class SamplerClock:
    """Wraps a sampler's entry points and adds up the time spent in them (outermost calls).

    ``seconds`` is wall time; ``cpu_seconds`` is the calling thread's CPU time, which other
    work on a busy machine inflates much less.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._depth = 0
        for name in ENTRY_POINTS:
            setattr(sampler, name, self._timed(getattr(sampler, name)))

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1
            start, cpu_start = time.perf_counter(), time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start
                    self.cpu_seconds += time.thread_time() - cpu_start

        return timed


def make_sampler(name: str, seed: int) -> Any:
    import optuna
    from eggroll_opt.integrations.optuna import EggrollSampler

    if name == "eggroll":
        return EggrollSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"`sampler` must be one of {SAMPLERS}, got {name!r}.")


def _objective(dimension: int) -> Callable[[Any], float]:
    names = [f"x{i:04d}" for i in range(dimension)]

    def objective(trial: Any) -> float:
        return float(sum(trial.suggest_float(name, -1.0, 1.0) ** 2 for name in names))

    return objective


def _prefill(study: Any, dimension: int, count: int, rng: np.random.Generator) -> None:
    """Add ``count`` finished trials with uniform parameters and their objective values."""
    import optuna

    distribution = optuna.distributions.FloatDistribution(-1.0, 1.0)
    names = [f"x{i:04d}" for i in range(dimension)]
    trials = []
    for _ in range(count):
        values = rng.uniform(-1.0, 1.0, dimension)
        trials.append(
            optuna.trial.create_trial(
                params=dict(zip(names, values.tolist(), strict=True)),
                distributions=dict.fromkeys(names, distribution),
                value=float(np.sum(values**2)),
            )
        )
    study.add_trials(trials)


def measure(
    name: str, dimension: int, marks: tuple[int, ...], window: int, max_seconds: float
) -> dict[str, Any]:
    """Sampler and trial milliseconds per trial in a window starting at each mark."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(name, seed=0)
    clock = SamplerClock(sampler)
    study = optuna.create_study(sampler=sampler)
    objective = _objective(dimension)
    rng = np.random.default_rng(0)
    prefill = name in ("tpe", "random")
    start = time.perf_counter()
    result: dict[str, Any] = {"sampler": name, "parameters": dimension, "windows": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mark in marks:
            done = len(study.get_trials(deepcopy=False))  # study.trials copies every trial
            if prefill:
                _prefill(study, dimension, mark - done, rng)
            else:
                left = max_seconds - (time.perf_counter() - start)
                if left > 0:
                    study.optimize(objective, n_trials=mark - done, timeout=left)
            reached = len(study.get_trials(deepcopy=False))
            if reached < mark:
                result["stopped"] = {"trials": reached, "seconds": max_seconds}
                break
            sampler_ms, sampler_cpu_ms, trial_ms = [], [], []
            for _ in range(window):
                before, cpu_before = clock.seconds, clock.cpu_seconds
                tick = time.perf_counter()
                study.optimize(objective, n_trials=1)
                trial_ms.append((time.perf_counter() - tick) * 1e3)
                sampler_ms.append((clock.seconds - before) * 1e3)
                sampler_cpu_ms.append((clock.cpu_seconds - cpu_before) * 1e3)
            result["windows"][str(mark)] = {
                "sampler_ms": statistics.median(sampler_ms),
                "sampler_cpu_ms": statistics.median(sampler_cpu_ms),
                "sampler_ms_max": max(sampler_ms),
                "trial_ms": statistics.median(trial_ms),
            }
    result["seconds"] = time.perf_counter() - start
    return result


def markdown(results: list[dict[str, Any]], marks: tuple[int, ...]) -> str:
    """Sampler CPU and wall ms per trial, and the whole trial's wall ms, at each mark."""
    header = "| parameters | sampler | " + " | ".join(
        f"sampler CPU ms @{mark} | sampler wall ms @{mark} | trial wall ms @{mark}"
        for mark in marks
    )
    lines = [header + " |", "|---:|---|" + "---:|---:|---:|" * len(marks)]
    for result in results:
        cells = []
        for mark in marks:
            window = result["windows"].get(str(mark))
            if window is None:
                stopped = result.get("stopped", {})
                cells += [f"n/a (stopped at trial {stopped.get('trials', '?')})", "", ""]
            else:
                cells += [
                    f"{window['sampler_cpu_ms']:.3g}",
                    f"{window['sampler_ms']:.3g}",
                    f"{window['trial_ms']:.3g}",
                ]
        lines.append(
            f"| {result['parameters']} | {result['sampler']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measure every sampler at every size; print the table (and save it with ``--out``)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samplers", default=",".join(SAMPLERS), help="comma list")
    parser.add_argument("--parameters", help="comma list of sizes (default 10,100,1000)")
    parser.add_argument("--window", type=int, default=20, help="trials timed per point")
    parser.add_argument(
        "--max-seconds", type=float, default=900, help="cap on building one study's history"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds")
    parser.add_argument("--out", help="folder for optuna_overhead.md and .json")
    args = parser.parse_args(argv)
    marks: tuple[int, ...] = (100, 1000)
    if args.quick:
        args.window, marks = 3, (10, 30)
    if args.parameters is None:
        args.parameters = "10,100" if args.quick else "10,100,1000"
    results = []
    for dimension in (int(d) for d in args.parameters.split(",")):
        for name in args.samplers.split(","):
            result = measure(name, dimension, marks, args.window, args.max_seconds)
            print(
                f"{name:>8} d={dimension:<5} "
                + "  ".join(
                    f"@{mark}: sampler {w['sampler_cpu_ms']:.3g} ms CPU, {w['sampler_ms']:.3g} ms "
                    f"wall; trial {w['trial_ms']:.3g} ms"
                    for mark, w in result["windows"].items()
                )
                + (f"  stopped: {result['stopped']}" if "stopped" in result else ""),
                flush=True,
            )
            results.append(result)
    text = markdown(results, marks)
    print(text)
    if args.out:
        write_report(args.out, "optuna_overhead", text, {"results": results, "machine": machine()})
    return results


if __name__ == "__main__":
    main()
