"""``EggrollSampler``: EGGROLL evolution strategies as an Optuna sampler.

Each Optuna trial is one member of an EGGROLL population; a generation is told to the strategy
once every member slot has a finished trial. Install the extra with
``pip install "eggroll_opt[optuna]"``.

How a search space becomes strategy parameters (one encoding, fixed per search space):

* **Numbers.** Every ``FloatDistribution`` and ``IntDistribution`` is one coordinate of a 1-D
  float leaf ``"numeric"`` (``full`` noise). A coordinate ``x`` is read in the unit interval of
  its distribution through the reflecting map ``u = x mod 2`` (mirrored to ``2 - u`` above 1),
  so the mean can wander outside the box without getting stuck there. ``u`` is linear in the
  range, or in ``log`` of it for ``log=True``. Integers and stepped floats split the unit
  interval into one equal bin per grid point (``[low - step/2, high + step/2]`` relaxed, then
  rounded); log integers are relaxed to ``[low - 0.5, high + 0.5]`` in log space and rounded.
* **Choices.** A ``CategoricalDistribution`` with ``c`` choices is a row of ``c`` logits
  (zero at the start: every choice equally likely); the member's choice is the argmax of its
  perturbed logits. All categoricals with the same ``c`` form one matrix leaf ``(count, c)``.
  It gets ``full`` noise by default; with ``rank=r`` it gets EGGROLL's ``lowrank`` noise when
  ``r <= min(count, c)`` (``count >= 2``), so a huge categorical matrix costs ``r·(count + c)``
  noise numbers per member instead of ``count·c``. Low-rank noise correlates the choices of
  all rows of a member (with ``r = 1`` and zero logits every row picks one of the same two
  choices), which cost search quality in every measurement in ``docs/optuna.md``, so it is
  opt-in.
* Members are independent draws, not antithetic pairs: with zero logits the antithetic partner
  of a binary choice is its exact complement, and a problem that is symmetric under
  complement (MaxCut) then gives every pair equal fitness and the strategy no signal.
* Single-value distributions are not searched (Optuna returns their value).

What the study's storage holds (never the strategy's arrays):

* the study system attribute ``"eggroll_opt:sampler"``: ``{"seed": ..., "config": {...}}``,
  written by the first sampler that uses the study, so a sampler made with ``seed=None`` in
  another process, or after a restart, adopts the study's seed (a sampler with another seed or
  configuration warns that it starts a run of its own);
* the trial system attribute ``"eggroll_opt:member"``: ``[run, generation, member]``, where
  ``run`` fingerprints the sampler's configuration, seed and search space.

The state of generation ``g + 1`` is a pure function of the state of ``g`` and the fitness of
``g``'s trials, so any process rebuilds the current state by replaying the finished
generations from the trials in the storage. Each process caches its replay and extends it
incrementally: a call reads only trials it has not seen finished yet.

Member assignment and failures:

* A new trial takes the lowest member slot of the current generation that has no trial yet,
  after leaving one free slot to each earlier-numbered trial (in any process) that is running
  but has not taken its slot yet: trials asked at the same moment take distinct slots.
* When every slot has a trial and some are still running, the new trial waits (polling the
  storage) for the generation to complete, then takes a slot of the next one. It does not
  wait for a trial asked in its own thread (``study.ask()`` several times, then ``tell``), nor
  for one that has run longer than four times the median duration of the latest COMPLETE
  trials (at least 0.1 s): such a slot is handed out again (the one with the fewest trials,
  then the lowest index), the same candidate a second time. Ages are read from the trials'
  start times, so machines that share a storage should keep their clocks in step.
* The first finished trial of a slot (earliest completion time, then lowest trial number)
  gives its fitness; later duplicates are ignored. A slot whose counted trial FAILED or was
  PRUNED has fitness NaN and ranks worst (the strategy's ``nan_policy="worst"``). A generation
  in which every member failed is told as "no information" (all fitness equal), so only the
  optimizer's momentum moves the mean.
* So a generation completes as long as trials keep coming: a trial that was abandoned while
  RUNNING (a killed worker) is duplicated by the next trial once it is overdue, and blocks its
  generation for that long at most. Where to wait and which slot to take are decisions of
  each process; they never change what the replay counts.
* Processes agree on the counted duplicate when the storage shows finished trials in the order
  they finished. The one exception is a commit delayed past a later duplicate's finish: a
  process that told the generation in between counts the later duplicate. With a
  deterministic objective both duplicates have the same value and nothing differs.
* A trial enqueued with fixed values for searched parameters (``study.enqueue_trial``) is not a
  member: it gets the current mean for its other searched parameters and is not counted.

The relative search space is the intersection of the distributions of all COMPLETE trials
(as ``optuna.search_space.IntersectionSearchSpace`` computes it, kept incrementally here so
that thousands of parameters stay cheap). Parameters outside it (dynamic or conditional ones)
are sampled by the independent sampler, with one warning per parameter name. When the search
space changes, a new run starts from the centre of the new space; trials of an earlier run
keep their attributes and count again if that space comes back.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from eggroll_opt._backend import get_backend, is_cupy_array, namespace_of
from eggroll_opt._defaults import default_popsize as _library_popsize
from eggroll_opt._strategy import Eggroll, _check_float, _check_int
from eggroll_opt._tree import flatten
from eggroll_opt.adaptation import get_sigma_adaptation
from eggroll_opt.optim import OPTIMIZERS

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler
    from optuna.study import Study
    from optuna.trial import FrozenTrial, TrialState

    _OPTUNA_ERROR: ImportError | None = None
else:
    try:
        from optuna.samplers import BaseSampler

        _OPTUNA_ERROR = None
    except ImportError as error:  # the module still imports; the constructor explains
        BaseSampler = object
        _OPTUNA_ERROR = error

__all__ = ["MEMBER_ATTR", "SAMPLER_ATTR", "EggrollSampler", "default_popsize"]

MEMBER_ATTR = "eggroll_opt:member"
"""Trial system attribute: ``[run, generation, member]``."""
SAMPLER_ATTR = "eggroll_opt:sampler"
"""Study system attribute: ``{"seed": int, "config": {...}}``."""
_FORMAT = 2  # bump when the encoding or the replay rule changes: old runs then start afresh
_SIGMA = 0.2  # starting σ: a fifth of every numeric range, 0.2 in logit units
_SIGMA_BOUNDS = (1e-4, 5.0)  # adapted σ stays within [2e-5, 1] of a range

# A slot is handed out again once its running trials are older than _GRACE_FACTOR times the
# median duration of the latest _DURATIONS COMPLETE trials (at least _GRACE_MIN seconds).
_GRACE_FACTOR, _GRACE_MIN, _DURATIONS = 4.0, 0.1, 64
_POLL_MIN, _POLL_MAX = 0.005, 1.0  # seconds between looks at the storage while waiting

# Numeric coordinate kinds.
_LINEAR, _LOG, _GRID, _INT_LOG = 0, 1, 2, 3


def _require_optuna() -> None:
    if _OPTUNA_ERROR is not None:
        raise ImportError(
            "EggrollSampler needs Optuna, which is not installed: "
            'pip install "eggroll_opt[optuna]" (or pip install optuna).'
        ) from _OPTUNA_ERROR


def default_popsize(dimension: int) -> int:
    """The population size used when ``popsize=None``: ``4 + floor(3 ln d)``, at least 8.

    ``d`` counts the searched numbers: one per numeric parameter plus one logit per choice of
    every categorical parameter (the rule CMA-ES uses for its population; members are not
    mirrored here, so odd sizes are kept).

    Example:
        >>> default_popsize(2), default_popsize(100), default_popsize(1600)
        (8, 17, 26)
    """
    return _library_popsize(dimension, even=False)


def _host_arrays(arrays: Sequence[Any]) -> list[np.ndarray]:
    """Host copies of a strategy's arrays: CuPy ones in one device-to-host transfer."""
    if not any(is_cupy_array(array) for array in arrays):
        return [np.asarray(array) for array in arrays]
    xp = namespace_of(arrays[0])
    together = xp.concatenate([array.reshape(-1).astype(xp.float64) for array in arrays]).get()
    ends = np.cumsum([array.size for array in arrays])[:-1]
    return [
        part.reshape(array.shape)
        for part, array in zip(np.split(together, ends), arrays, strict=True)
    ]


def _reflect(x: np.ndarray) -> np.ndarray:
    """The reflecting map onto [0, 1]: ``x mod 2``, mirrored to ``2 - u`` above 1."""
    folded = np.mod(x, 2.0)
    return np.where(folded > 1.0, 2.0 - folded, folded)


class _Encoding:
    """How one search space maps to a parameter tree, and how members decode back to values."""

    def __init__(self, search_space: Mapping[str, BaseDistribution]) -> None:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        numeric: list[tuple[str, Any]] = []
        groups: dict[int, list[tuple[str, Any]]] = {}
        for name in sorted(search_space):
            distribution = search_space[name]
            if isinstance(distribution, CategoricalDistribution):
                groups.setdefault(len(distribution.choices), []).append((name, distribution))
            elif isinstance(distribution, FloatDistribution | IntDistribution):
                numeric.append((name, distribution))
            else:
                raise TypeError(
                    f"EggrollSampler cannot search {name!r} with distribution {distribution!r}; "
                    "expected FloatDistribution, IntDistribution or CategoricalDistribution."
                )
        self.names = [name for name, _ in numeric]
        size = len(numeric)
        self.kind = np.zeros(size, np.int64)
        self.low = np.zeros(size)
        self.span = np.zeros(size)
        self.step = np.ones(size)
        self.grid = np.zeros(size)  # number of grid intervals (points - 1)
        self.bottom = np.zeros(size)  # the distribution's own bounds, for the final clip
        self.high = np.zeros(size)
        self.is_int = np.zeros(size, bool)
        for j, (_, distribution) in enumerate(numeric):
            low, high = float(distribution.low), float(distribution.high)
            self.bottom[j], self.high[j] = low, high
            self.is_int[j] = isinstance(distribution, IntDistribution)
            if distribution.log and self.is_int[j]:
                self.kind[j] = _INT_LOG
                self.low[j] = math.log(low - 0.5)
                self.span[j] = math.log(high + 0.5) - self.low[j]
            elif distribution.log:
                self.kind[j] = _LOG
                self.low[j] = math.log(low)
                self.span[j] = math.log(high) - self.low[j]
            elif self.is_int[j] or distribution.step is not None:
                step = float(distribution.step)
                self.kind[j] = _GRID
                self.low[j], self.step[j] = low, step
                self.grid[j] = round((high - low) / step)
            else:
                self.kind[j] = _LINEAR
                self.low[j], self.span[j] = low, high - low
        self.columns = {kind: np.flatnonzero(self.kind == kind) for kind in range(4)}
        self.float_columns = np.flatnonzero(~self.is_int)
        self.int_columns = np.flatnonzero(self.is_int)
        self.float_names = [self.names[j] for j in self.float_columns]
        self.int_names = [self.names[j] for j in self.int_columns]
        self.groups = {
            choices: ([name for name, _ in members], [d.choices for _, d in members])
            for choices, members in sorted(groups.items())
        }
        self.dimension = size + sum(c * len(m[0]) for c, m in self.groups.items())

    @staticmethod
    def group_path(choices: int) -> str:
        return f"categorical/choices{choices}"

    def initial_params(self) -> dict[str, Any]:
        """The centre of the space: 0.5 in every unit interval, zero logits."""
        params: dict[str, Any] = {}
        if self.names:
            params["numeric"] = np.full(len(self.names), 0.5)
        if self.groups:
            params["categorical"] = {
                f"choices{c}": np.zeros((len(names), c)) for c, (names, _) in self.groups.items()
            }
        return params

    def noise_kinds(self, rank: int | None) -> dict[str, str]:
        """``full`` everywhere, or ``lowrank`` for categorical matrices that fit ``rank``."""
        kinds = {}
        if self.names:
            kinds["numeric"] = "full"
        for choices, (names, _) in self.groups.items():
            low_rank = rank is not None and len(names) >= 2 and rank <= min(len(names), choices)
            kinds[self.group_path(choices)] = "lowrank" if low_rank else "full"
        return kinds

    def decode(self, numeric: np.ndarray | None, logits: Mapping[int, np.ndarray]) -> list[dict]:
        """Parameter values of every row: ``numeric`` (rows, n), ``logits[c]`` (rows, count, c)."""
        rows = numeric.shape[0] if numeric is not None else next(iter(logits.values())).shape[0]
        decoded: list[dict[str, Any]] = [{} for _ in range(rows)]
        if numeric is not None and self.names:
            values = self._numeric_values(numeric)
            floats = values[:, self.float_columns].tolist()
            ints = np.rint(values[:, self.int_columns]).astype(np.int64).tolist()
            for row, float_row, int_row in zip(decoded, floats, ints, strict=True):
                row.update(zip(self.float_names, float_row, strict=True))
                row.update(zip(self.int_names, int_row, strict=True))
        for choices, (names, options) in self.groups.items():
            picks = np.argmax(logits[choices], axis=-1).tolist()
            for row, pick in zip(decoded, picks, strict=True):
                row.update(
                    (name, option[index])
                    for name, option, index in zip(names, options, pick, strict=True)
                )
        return decoded

    def _numeric_values(self, x: np.ndarray) -> np.ndarray:
        u = _reflect(np.asarray(x, dtype=np.float64))
        out = np.empty_like(u)
        linear = self.columns[_LINEAR]
        out[:, linear] = self.low[linear] + u[:, linear] * self.span[linear]
        log = self.columns[_LOG]
        out[:, log] = np.exp(self.low[log] + u[:, log] * self.span[log])
        grid = self.columns[_GRID]
        points = np.minimum(np.floor(u[:, grid] * (self.grid[grid] + 1)), self.grid[grid])
        out[:, grid] = self.low[grid] + points * self.step[grid]
        int_log = self.columns[_INT_LOG]
        out[:, int_log] = np.rint(np.exp(self.low[int_log] + u[:, int_log] * self.span[int_log]))
        # Values must stay inside [low, high]: exp/log and step arithmetic can round outside.
        return np.clip(out, self.bottom, self.high)


@dataclass
class _Slot:
    """The trials of one (generation, member): running ones and the counted finished one."""

    running: dict[int, datetime] = field(default_factory=dict)  # number: start
    result: tuple[datetime, int, float] | None = None  # (completed, number, fitness)


class _Run:
    """One strategy run: a search space with a configuration; its replayed state and slots."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.generation = 0
        self.slots: dict[int, dict[int, _Slot]] = {}
        self.strategy: Eggroll | None = None
        self.encoding: _Encoding | None = None
        self.candidates: list[dict[str, Any]] | None = None

    def observe(self, trial: FrozenTrial, generation: int, member: int) -> None:
        from optuna.trial import TrialState

        if generation < self.generation:
            return  # a late duplicate of a generation already told
        slot = self.slots.setdefault(generation, {}).setdefault(member, _Slot())
        if not trial.state.is_finished():
            slot.running.setdefault(trial.number, trial.datetime_start or datetime.now())
            return
        slot.running.pop(trial.number, None)
        value = trial.value if trial.state == TrialState.COMPLETE else None
        fitness = float("nan") if value is None else float(value)
        result = (trial.datetime_complete or datetime.max, trial.number, fitness)
        if slot.result is None or result[:2] < slot.result[:2]:
            slot.result = result

    def start(self, encoding: _Encoding, strategy: Eggroll) -> None:
        self.encoding, self.strategy = encoding, strategy

    def advance(self, record: bool = False) -> list[list[dict[str, Any]]]:
        """Tell every generation whose slots all have a finished trial, oldest first.

        Returns the decoded candidates of each generation told when ``record`` (for audits).
        """
        told: list[list[dict[str, Any]]] = []
        assert self.strategy is not None
        while True:
            slots = self.slots.get(self.generation, {})
            popsize = self.strategy.popsize
            results = [slots[m].result if m in slots else None for m in range(popsize)]
            if any(result is None for result in results):
                return told
            fitness = np.array([result[2] for result in results if result is not None])
            if np.isnan(fitness).all():
                fitness = np.zeros(popsize)  # no information: all members equal
            if record:
                told.append(self.current_candidates())
            self.strategy.ask()  # tell needs the population of this generation
            self.strategy.tell(fitness)
            del self.slots[self.generation]
            self.generation += 1
            self.candidates = None

    def current_candidates(self) -> list[dict[str, Any]]:
        """The decoded members of the current generation (decoded once per generation, from
        one host copy of the members' leaves)."""
        assert self.strategy is not None and self.encoding is not None
        if self.candidates is None:
            population = self.strategy.ask()
            self.candidates = self._decode(population.stacked)
        return self.candidates

    def mean_values(self) -> dict[str, Any]:
        """The current mean, decoded (what a non-member trial receives)."""
        assert self.strategy is not None
        mean = flatten(self.strategy.params)
        return self._decode(lambda path: mean[path][None])[0]

    def _decode(self, leaf: Callable[[str], Any]) -> list[dict[str, Any]]:
        """Decode rows of leaves, ``leaf(path)`` of shape (rows, *leaf shape), on any backend."""
        assert self.encoding is not None
        paths = ["numeric"] if self.encoding.names else []
        paths += [_Encoding.group_path(c) for c in self.encoding.groups]
        values = dict(zip(paths, _host_arrays([leaf(path) for path in paths]), strict=True))
        numeric = values.get("numeric")
        logits = {c: values[_Encoding.group_path(c)] for c in self.encoding.groups}
        return self.encoding.decode(numeric, logits)

    def assign(self, rank: int, live: Callable[[int, datetime], bool]) -> int | None:
        """The member slot a new trial takes, or None while it should wait for one.

        Args:
            rank: how many trials asked before this one are still to take a slot; they take
                the lowest free slots, so this trial takes the free slot after them.
            live: whether a running trial (number, start) may still finish; a slot is handed
                out again only when none of its running trials is live.
        """
        assert self.strategy is not None
        slots = self.slots.get(self.generation, {})
        free = [member for member in range(self.strategy.popsize) if member not in slots]
        if rank < len(free):
            return free[rank]
        stalled = [
            member
            for member, slot in slots.items()
            if slot.result is None
            and not any(live(number, start) for number, start in slot.running.items())
        ]
        if not stalled:
            return None
        return min(stalled, key=lambda member: (len(slots[member].running), member))


class _StudyState:
    """What one sampler knows about one study: the scan position, search space and runs."""

    def __init__(self) -> None:
        self.scanned = 0
        self.watched: set[int] = set()
        self.space: dict[str, BaseDistribution] | None = None
        self.space_names: list[str] = []
        self.space_types: list[type] = []
        self.space_fields: list[dict[str, Any]] = []
        self.relative: dict[str, BaseDistribution] = {}
        self.runs: dict[str, _Run] = {}
        self.seed: int | None = None
        self.key_cache: tuple[list[str], list[Any], list[int], str] | None = None
        # Running trials without a slot yet (asked, parameters not sampled): number: start.
        self.pending: dict[int, datetime] = {}
        # Unfinished trials this sampler saw asked: number: the asking thread.
        self.threads: dict[int, int] = {}
        # Seconds from start to completion of the latest COMPLETE trials.
        self.durations: deque[float] = deque(maxlen=_DURATIONS)

    def grace(self) -> float:
        """Seconds after its start when a running trial no longer holds its slot alone."""
        typical = statistics.median(self.durations) if self.durations else 0.0
        return max(_GRACE_FACTOR * typical, _GRACE_MIN)

    def poll_delay(self) -> float:
        """Seconds between two looks at the storage while a trial waits for a slot."""
        return min(max(self.grace() / (4 * _GRACE_FACTOR), _POLL_MIN), _POLL_MAX)

    def claims(self, number: int) -> tuple[int, Callable[[int, datetime], bool]]:
        """What :meth:`_Run.assign` needs for trial ``number``: its rank among the trials
        still to take a slot, and which running trials are live.

        A trial asked by the calling thread is never waited for (this thread would have to
        finish it first); any other one is, until it is older than :meth:`grace`.
        """
        now, grace, thread = datetime.now(), self.grace(), threading.get_ident()

        def live(other: int, start: datetime) -> bool:
            if self.threads.get(other) == thread:
                return False
            return (now - start).total_seconds() < grace

        rank = sum(
            1 for other, start in self.pending.items() if other < number and live(other, start)
        )
        return rank, live

    def intersect(self, distributions: Mapping[str, BaseDistribution]) -> None:
        """Intersect the search space with one COMPLETE trial's distributions."""
        if self.space is not None:
            names = list(distributions)
            if (
                names == self.space_names
                and [type(d) for d in distributions.values()] == self.space_types
                and [d.__dict__ for d in distributions.values()] == self.space_fields
            ):
                return  # the common case: the same distributions again
            space = {
                name: d for name, d in self.space.items() if distributions.get(name, None) == d
            }
            if len(space) == len(self.space):
                return
        else:
            space = dict(distributions)
        self.space = space
        self.space_names = list(space)
        self.space_types = [type(d) for d in space.values()]
        self.space_fields = [d.__dict__ for d in space.values()]
        self.relative = {name: space[name] for name in sorted(space) if not space[name].single()}


class EggrollSampler(BaseSampler):
    """An Optuna sampler that searches with EGGROLL evolution strategies.

    Every trial is one member of a population; once every member of a generation has a
    finished trial, the generation's objective values update the strategy's mean (a
    natural-gradient step on centered ranks) and its step sizes (one per coordinate and logit,
    learned from the same trials). Floats, integers (continuous relaxation, log
    space where asked) and categoricals (per-choice logits, ``lowrank`` noise for many
    categoricals with the same number of choices) are all searched by the strategy itself;
    see the module docstring for the encoding and the storage contract.

    Args:
        popsize: trials per generation. ``None`` picks :func:`default_popsize` of the search
            space's dimension.
        sigma: starting noise scale, in unit-interval units for numbers (the whole range is 1)
            and in logit units for choices.
        learning_rate: step size of the optimizer; None: the strategy's default
            (:func:`eggroll_opt.default_learning_rate`; with an adaptation and dense noise, 1:
            the mean moves by ``σ · Σ u_i ε_i`` with ``Σ|u| = 1``).
        rank: ``None`` (default): ``full`` noise for categorical matrices; an int ``r``:
            ``lowrank`` noise of rank ``r`` for each categorical matrix with
            ``r <= min(count, c)``, for very many categorical parameters.
        optimizer: ``"adam"``, ``"sgd"`` or ``"momentum"``; None: the strategy's default
            (``"sgd"`` with an adaptation, ``"adam"`` without).
        sigma_adaptation: ``"auto"`` (default): σ is learned per coordinate and per logit
            (:mod:`eggroll_opt.adaptation`), within ``[1e-4, 5]`` times ``sigma``; ``"leaf"``:
            one σ per leaf; None: σ stays fixed.
        seed: seed of every noise draw and of the default independent sampler. ``None`` adopts
            the seed stored in the study by an earlier sampler, or draws and stores one.
        independent_sampler: samples parameters outside the relative search space (and every
            parameter of the first trial, before any trial completed). Defaults to
            ``optuna.samplers.RandomSampler(seed=seed)``.
        warn_independent_sampling: warn once per parameter name sampled independently after
            the first trial completed.
        backend: the array library of the sampler's strategy: ``"numpy"`` (default),
            ``"cupy"`` or ``"auto"`` (CuPy where it sees a GPU), resolved in each process that
            uses the sampler. NumPy is the default because the sampler's work is small and on
            the host: Optuna's per-trial overhead (storage reads and writes, Python
            bookkeeping) dominates, and a generation's arrays have one number per searched
            coordinate or logit, too few to repay a GPU's kernel launches and transfers. CuPy
            may pay for spaces with very many parameters (thousands of categoricals); that has
            not been measured on a GPU. Either way the candidates handed to Optuna are host
            values, read back once per generation (not per trial). The backend is not part of
            the run's configuration: processes sharing a study may use different backends and
            continue the same run; their candidates agree to rounding (the noise words are the
            same, GPU arithmetic rounds differently), so a value that falls on a rounding
            boundary can decode differently in another process.

    Raises:
        ImportError: if Optuna is not installed.
        TypeError: for an argument of the wrong type.
        ValueError: for an out-of-range argument, and at sampling time for multi-objective
            studies.

    Example:
        >>> import optuna
        >>> from eggroll_opt.integrations.optuna import EggrollSampler
        >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
        >>> def objective(trial):
        ...     x = trial.suggest_float("x", -5.0, 5.0)
        ...     n = trial.suggest_int("n", 1, 64, log=True)
        ...     kind = trial.suggest_categorical("kind", ["a", "b", "c"])
        ...     return (x - 1.0) ** 2 + abs(n - 8) / 8 + (kind != "b")
        >>> study = optuna.create_study(sampler=EggrollSampler(popsize=8, seed=0))
        >>> study.optimize(objective, n_trials=160)
        >>> study.best_params["kind"], study.best_value < 0.5
        ('b', True)
    """

    def __init__(
        self,
        *,
        popsize: int | None = None,
        sigma: float = _SIGMA,
        learning_rate: float | None = None,
        rank: int | None = None,
        optimizer: str | None = None,
        sigma_adaptation: str | None = "auto",
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
        warn_independent_sampling: bool = True,
        backend: str = "numpy",
    ) -> None:
        _require_optuna()
        from optuna.samplers import BaseSampler as OptunaBaseSampler
        from optuna.samplers import RandomSampler

        self._popsize = None if popsize is None else _check_int("popsize", popsize, 2)
        self._sigma = _check_float("sigma", sigma, positive=True)
        self._learning_rate = (
            None
            if learning_rate is None
            else _check_float("learning_rate", learning_rate, positive=True)
        )
        self._rank = None if rank is None else _check_int("rank", rank, 1)
        if optimizer is not None and (
            not isinstance(optimizer, str) or optimizer not in OPTIMIZERS
        ):
            raise ValueError(
                f"`optimizer` must be None or one of {sorted(OPTIMIZERS)}, got {optimizer!r}."
            )
        self._optimizer = optimizer
        if sigma_adaptation is not None and not isinstance(sigma_adaptation, str):
            raise ValueError(
                f"`sigma_adaptation` must be None or a name, got {sigma_adaptation!r}."
            )
        get_sigma_adaptation(sigma_adaptation)  # names are checked here, not at the first trial
        self._sigma_adaptation = sigma_adaptation
        self._seed = None if seed is None else _check_int("seed", seed, 0)
        if independent_sampler is None:
            independent_sampler = RandomSampler(seed=self._seed)
        elif not isinstance(independent_sampler, OptunaBaseSampler):
            raise TypeError(
                "`independent_sampler` must be an optuna.samplers.BaseSampler, got "
                f"{independent_sampler!r}."
            )
        self._independent_sampler = independent_sampler
        if not isinstance(warn_independent_sampling, bool):
            raise TypeError(
                f"`warn_independent_sampling` must be a bool, got {warn_independent_sampling!r}."
            )
        self._warn_independent_sampling = warn_independent_sampling
        if not isinstance(backend, str):
            raise TypeError(f"`backend` must be 'numpy', 'cupy' or 'auto', got {backend!r}.")
        get_backend(backend)  # checks the name, and that CuPy can be used for "cupy"
        self._backend = backend
        self._lock = threading.RLock()
        self._studies: dict[tuple[int, int], _StudyState] = {}
        self._warned: set[str] = set()

    # -- pickling: the lock and the replay caches are rebuilt, never shipped ---------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        state["_studies"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    # -- BaseSampler ---------------------------------------------------------------------------
    def reseed_rng(self) -> None:
        """Reseed the independent sampler; the strategy's noise stays tied to the seed."""
        self._independent_sampler.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        """The intersection of the COMPLETE trials' distributions, without single values."""
        self._check_single_objective(study)
        with self._lock:
            state = self._state(study)
            return dict(state.relative)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        """Make ``trial`` a member of the current generation and return its candidate."""
        self._check_single_objective(study)
        if not search_space:
            return {}
        fixed = trial.system_attrs.get("fixed_params") or {}
        while True:
            with self._lock:
                state = self._state(study)
                run = self._run(study, state, search_space)
                run.advance()
                if any(name in search_space for name in fixed):
                    mean = run.mean_values()
                    return {name: value for name, value in mean.items() if name not in fixed}
                member = run.assign(*state.claims(trial.number))
                if member is not None:
                    study._storage.set_trial_system_attr(
                        trial._trial_id, MEMBER_ATTR, [run.key, run.generation, member]
                    )
                    slots = run.slots.setdefault(run.generation, {})
                    slot = slots.setdefault(member, _Slot())
                    slot.running[trial.number] = trial.datetime_start or datetime.now()
                    state.pending.pop(trial.number, None)
                    return dict(run.current_candidates()[member])
                delay = state.poll_delay()
            time.sleep(delay)  # every slot is taken by a live trial: wait for them

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Sample a parameter outside the relative search space with the independent sampler."""
        self._check_single_objective(study)
        if self._warn_independent_sampling:
            with self._lock:
                state = self._studies.get((id(study._storage), study._study_id))
                warn = state is not None and state.space is not None
                warn = warn and param_name not in self._warned
                if warn:
                    self._warned.add(param_name)
            if warn:
                warnings.warn(
                    f"EggrollSampler samples `{param_name}` with its independent sampler "
                    f"({type(self._independent_sampler).__name__}): it is outside the relative "
                    "search space (a dynamic range or a conditional parameter). Pass "
                    "warn_independent_sampling=False to silence this warning.",
                    UserWarning,
                    stacklevel=2,
                )
        return self._independent_sampler.sample_independent(
            study, trial, param_name, param_distribution
        )

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        """Note the thread that asks ``trial``; let the independent sampler prepare it."""
        with self._lock:
            self._cached_state(study).threads[trial.number] = threading.get_ident()
        self._independent_sampler.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        """Let the independent sampler see the result (the replay reads it from the storage)."""
        self._independent_sampler.after_trial(study, trial, state, values)

    # -- results -------------------------------------------------------------------------------
    def mean_params(self, study: Study) -> dict[str, Any]:
        """The current mean of the search distribution, decoded to parameter values.

        The mean is the strategy's estimate of a good configuration (for categoricals, the
        choice with the largest mean logit). It is often better than the average member and it
        is not a trial: evaluate it yourself, e.g. with ``study.enqueue_trial(...)``.

        Raises:
            ValueError: if no trial has completed yet (there is no search space).
        """
        self._check_single_objective(study)
        with self._lock:
            state = self._state(study)
            if not state.relative:
                raise ValueError(
                    "`study` has no relative search space yet: no trial has completed."
                )
            run = self._run(study, state, state.relative)
            run.advance()
            return run.mean_values()

    # -- state ---------------------------------------------------------------------------------
    def _check_single_objective(self, study: Study) -> None:
        if study._is_multi_objective():
            raise ValueError(
                f"EggrollSampler optimizes a single objective, but this study has "
                f"{len(study.directions)} directions; use a multi-objective sampler such as "
                "optuna.samplers.NSGAIISampler."
            )

    def _state(self, study: Study) -> _StudyState:
        """This study's replay state, brought up to date with the storage (call under lock)."""
        state = self._cached_state(study)
        self._scan(study, state)
        return state

    def _cached_state(self, study: Study) -> _StudyState:
        """This study's replay state as last scanned (call under lock)."""
        key = (id(study._storage), study._study_id)
        state = self._studies.get(key)
        if state is None:
            state = self._studies[key] = _StudyState()
        return state

    def _scan(self, study: Study, state: _StudyState) -> None:
        """Read the trials that are new or were unfinished at the last scan."""
        from optuna.trial import TrialState

        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if trials and trials[-1].number != len(trials) - 1:
            by_number = {t.number: t for t in trials}
            top = max(by_number) + 1
        else:
            by_number = None
            top = len(trials)
        numbers = sorted(state.watched) + list(range(state.scanned, top))
        state.scanned = top
        for number in numbers:
            trial = by_number.get(number) if by_number is not None else trials[number]
            if trial is None:
                continue
            attr = trial.system_attrs.get(MEMBER_ATTR)
            if isinstance(attr, list) and len(attr) == 3:
                run = state.runs.get(attr[0])
                if run is None:
                    run = state.runs[attr[0]] = _Run(attr[0])
                run.observe(trial, int(attr[1]), int(attr[2]))
            if trial.state.is_finished():
                state.watched.discard(number)
                state.pending.pop(number, None)
                state.threads.pop(number, None)
                if trial.state == TrialState.COMPLETE:
                    state.intersect(trial.distributions)
                    if trial.datetime_start is not None and trial.datetime_complete is not None:
                        duration = trial.datetime_complete - trial.datetime_start
                        state.durations.append(duration.total_seconds())
            else:
                state.watched.add(number)
                fixed = trial.system_attrs.get("fixed_params") or {}
                if (
                    trial.state == TrialState.RUNNING
                    and attr is None
                    and not any(name in state.relative for name in fixed)
                ):
                    state.pending.setdefault(number, trial.datetime_start or datetime.now())
                else:
                    state.pending.pop(number, None)

    def _settings(self) -> dict[str, Any]:
        """The configuration a run depends on (besides the seed and the search space)."""
        return {
            "format": _FORMAT,
            "popsize": self._popsize,
            "sigma": self._sigma,
            "learning_rate": self._learning_rate,
            "rank": self._rank,
            "optimizer": self._optimizer,
            "sigma_adaptation": self._sigma_adaptation,
        }

    def _study_seed(self, study: Study, state: _StudyState) -> int:
        """This study's seed: the sampler's own, else the stored one, else a new one (stored).

        The first sampler to use a study stores ``{"seed": ..., "config": ...}`` in it. A later
        sampler with another seed or configuration gets a warning: it starts its own run, and
        the members of the earlier run do not count for it.
        """
        if state.seed is None:
            stored = study._storage.get_study_system_attrs(study._study_id).get(SAMPLER_ATTR)
            stored = stored if isinstance(stored, dict) else {}
            stored_seed = stored.get("seed")
            if self._seed is not None:
                state.seed = self._seed
            elif isinstance(stored_seed, int):
                state.seed = stored_seed
            else:
                state.seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
            if not stored:
                study._storage.set_study_system_attr(
                    study._study_id, SAMPLER_ATTR, {"seed": state.seed, "config": self._settings()}
                )
            elif stored_seed != state.seed or stored.get("config") != self._settings():
                warnings.warn(
                    f"study {study.study_name!r} was sampled by an EggrollSampler with seed "
                    f"{stored_seed} and configuration {stored.get('config')}; this sampler "
                    f"(seed {state.seed}, {self._settings()}) starts its own run, in which the "
                    "earlier members do not count.",
                    UserWarning,
                    stacklevel=4,
                )
        return state.seed

    def _run(
        self, study: Study, state: _StudyState, search_space: Mapping[str, BaseDistribution]
    ) -> _Run:
        """The run of this configuration and search space, created and replayed if needed."""
        names = list(search_space)
        values = list(search_space.values())
        identities = list(map(id, values))
        cached = state.key_cache
        # The cache holds the distributions themselves, so equal ids mean the same objects.
        if cached is not None and cached[0] == names and cached[2] == identities:
            key = cached[3]
        else:
            seed = self._study_seed(study, state)
            description = {
                **self._settings(),
                "seed": seed,
                "space": [f"{name}={search_space[name]!r}" for name in sorted(search_space)],
            }
            digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode())
            key = digest.hexdigest()[:16]
            state.key_cache = (names, values, identities, key)
        run = state.runs.get(key)
        if run is None:
            run = state.runs[key] = _Run(key)
        if run.strategy is None:
            from optuna.study import StudyDirection

            encoding = _Encoding(search_space)
            popsize = self._popsize or default_popsize(encoding.dimension)
            strategy = Eggroll(
                encoding.initial_params(),
                popsize=popsize,
                sigma=self._sigma,
                learning_rate=self._learning_rate,
                rank=self._rank or 1,
                optimizer=self._optimizer,
                sigma_adaptation=self._sigma_adaptation,
                sigma_bounds=None if self._sigma_adaptation is None else _SIGMA_BOUNDS,
                seed=self._study_seed(study, state),
                maximize=study.direction == StudyDirection.MAXIMIZE,
                mirrored=False,
                noise_kinds=encoding.noise_kinds(self._rank),
                backend=self._backend,
            )
            run.start(encoding, strategy)
        return run

    def _audit(self, study: Study) -> dict[int, dict[str, Any]]:
        """Replay ``study`` from scratch; the candidate each member trial should have had.

        Returns ``{trial number: expected params}`` for every trial with a member attribute of
        a run this sampler can rebuild (its search space is the trial's current relative one).
        Used by tests to check that processes sharing a storage agree.
        """
        with self._lock:
            state = _StudyState()
            self._scan(study, state)
            expected: dict[int, dict[str, Any]] = {}
            run = self._run(study, state, state.relative)
            members: dict[tuple[int, int], list[int]] = {}
            for trial in study._storage.get_all_trials(study._study_id, deepcopy=False):
                attr = trial.system_attrs.get(MEMBER_ATTR)
                if isinstance(attr, list) and attr[0] == run.key:
                    members.setdefault((int(attr[1]), int(attr[2])), []).append(trial.number)
            generation = 0
            for candidates in [*run.advance(record=True), run.current_candidates()]:
                for member, params in enumerate(candidates):
                    for number in members.get((generation, member), []):
                        expected[number] = params
                generation += 1
            return expected
