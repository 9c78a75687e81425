"""A worker process for the multi-process EggrollSampler test (run as a script).

``python tests/_optuna_worker.py URL STUDY TRIALS SEED`` loads the study from the RDB storage at
``URL`` and runs ``TRIALS`` trials of :func:`objective` with ``EggrollSampler(seed=SEED)``.
``TRIALS = -1`` instead asks one trial, suggests its parameters and exits without telling it,
as a worker that dies mid-trial would, leaving the trial RUNNING for ever.
"""

from __future__ import annotations

import os
import sys
import time

import optuna
from eggroll_opt.integrations.optuna import EggrollSampler


def objective(trial: optuna.Trial) -> float:
    """A deterministic function of the parameters, with a short pause to interleave workers."""
    x = trial.suggest_float("x", -3.0, 3.0)
    n = trial.suggest_int("n", 0, 20)
    kind = trial.suggest_categorical("kind", ["a", "b", "c", "d"])
    time.sleep(0.003 + 0.004 * ((trial.number * 7) % 5) / 5)
    return (x - 1.0) ** 2 + abs(n - 13) / 5 + (kind != "c")


def storage(url: str) -> optuna.storages.RDBStorage:
    """The shared storage, with a generous SQLite lock timeout for concurrent writers."""
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def main(argv: list[str]) -> int:
    url, name, trials, seed = argv[0], argv[1], int(argv[2]), int(argv[3])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name=name, storage=storage(url), sampler=EggrollSampler(seed=seed)
    )
    if trials < 0:
        trial = study.ask()
        objective_without_tell = trial.suggest_float("x", -3.0, 3.0)
        trial.suggest_int("n", 0, 20)
        trial.suggest_categorical("kind", ["a", "b", "c", "d"])
        print(trial.number, objective_without_tell, flush=True)
        os._exit(0)  # die without telling: the trial stays RUNNING
    study.optimize(objective, n_trials=trials)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
