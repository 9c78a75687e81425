"""What an evaluation gives back: :class:`Evaluation`, :class:`MemberFailure` and
:class:`EvaluationError`.

Shared by the evaluation loop (``_evaluate.py``) and vectorised evaluation in parts on threads
(``_parts.py``); it imports neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ._backend import host_values

FailureReason = Literal["raised", "invalid", "worker_lost", "data_lost", "timeout"]


@dataclass(frozen=True)
class MemberFailure:
    """Why one member has no fitness value.

    Attributes:
        index: the member's position in the population.
        reason: ``"raised"`` (the fitness function raised), ``"invalid"`` (it returned something
            that is not one real number), ``"worker_lost"`` (its worker died every time it ran
            the member alone), ``"data_lost"`` (the broadcast could not be delivered) or
            ``"timeout"`` (the generation's deadline passed first).
        message: one line, ``"ExceptionType: text"`` for a raised error.
        traceback: the formatted traceback where the error was raised ("" if none).
        error: the exception object itself when it could be brought back, else None.
        attempts: how many tasks included the member.
    """

    index: int
    reason: FailureReason
    message: str
    traceback: str = ""
    error: BaseException | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Evaluation:
    """The outcome of :func:`evaluate` for one generation.

    Attributes:
        generation: the population's generation.
        fitness: float64 array (popsize,), NaN where a member failed; what ``tell`` receives.
        failures: the failed members, by index.
        attempts: int array (popsize,): how many tasks included each member.
        seconds: wall time of the evaluation.
        tasks: tasks submitted (including retries).
        lost_tasks: tasks whose worker died or whose broadcast was lost.
        duplicates: results received for members already recorded (ignored).
        bytes_sent: bytes this evaluation serialised for workers: the broadcast times the
            copies it travels as (per task for process pools, per worker for Dask, none for
            threads) plus the task arguments.
        bytes_received: serialised size of the results that came back.
        workers: the workers that returned results (``"host:pid"``, plus ``":thread"`` for
            threads of this process).
        busy_seconds: time the workers spent rebuilding members and running the fitness,
            summed over the results received (in process: the evaluation's own time).
        worker_seconds: that busy time per worker (``"host:pid"``); ``seconds`` minus its
            largest value is what distribution cost the generation beyond its slowest worker.
    """

    generation: int
    fitness: np.ndarray
    failures: Mapping[int, MemberFailure]
    attempts: np.ndarray
    seconds: float
    tasks: int = 0
    lost_tasks: int = 0
    duplicates: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    workers: tuple[str, ...] = ()
    busy_seconds: float = 0.0
    worker_seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[int]:
        """Indices of the failed members, sorted."""
        return sorted(self.failures)

    @property
    def num_failed(self) -> int:
        """How many members failed."""
        return len(self.failures)


class EvaluationError(RuntimeError):
    """A generation could not be evaluated (or had failures under ``failure_policy="raise"``).

    Attributes:
        evaluation: the :class:`Evaluation`, when there is one.
    """

    def __init__(self, message: str, evaluation: Evaluation | None = None) -> None:
        super().__init__(message)
        self.evaluation = evaluation


def values_of(raw: Any, size: int) -> np.ndarray:
    """A vectorised ``fitness_fn``'s return value as float64 of shape ``(size,)``.

    Raises:
        TypeError: if it is not an array of real numbers.
        ValueError: if its shape is not ``(size,)``.
    """
    try:
        values = np.asarray(host_values(raw), dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"vectorised `fitness_fn` must return {size} real numbers, got {error}"
        ) from None
    if values.shape != (size,):
        raise ValueError(
            f"vectorised `fitness_fn` must return shape ({size},), got {values.shape}."
        )
    return values
