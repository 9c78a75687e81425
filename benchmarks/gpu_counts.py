"""Launches and syncs per ``ask``, per ``tell`` and per population forward, on CuPy.

Two workloads at popsize 256 (rank 1, mirrored, Adam, float32): one 1024 x 1024 leaf, and an
MLP of five dense layers with biases (10 leaves, widths 64-256-256-256-256-10). After one
warm-up generation (kernels compiled, buffers allocated), each step of two more generations is
counted on its own: ``ask``, the population forward of a batch of 8 shared inputs
(:class:`eggroll_opt.nn.PopulationLayers`), ``tell`` with host fitness (a NumPy array) and
``tell`` with device fitness (the forward's losses, a CuPy array). Both generators are counted:
``arrays`` (Philox rounds as array operations, the reference) and ``kernel`` (the fused kernel
of :mod:`eggroll_opt._philox_kernel`, what real CuPy uses by default).

What a count is depends on where it runs, and the report says which:

* **The strict CuPy stand-in** (``--stand-in``, or ``tests/strict_cupy`` first on the import
  path; see ``docs/gpu.md``): the counts of ``cupy._audit``. *launches*: calls that compute (a
  namespace function, a ufunc, an operator, a ``cupy.fuse`` function once); *syncs*: calls that
  need device data on the host; *copies*: host-to-device copies. The stand-in has no
  ``RawKernel``, so the ``kernel`` rows are **modelled**: each ``RawKernel`` call is counted as
  one launch and computed on the host with NumPy's Philox and the library's transform.
* **Real CuPy**: CUPTI's callback API (``libcupti``, loaded with ctypes; nothing to install
  beyond the CUDA toolkit's or the ``nvidia-cuda-cupti`` wheel's library). *launches*: kernel
  launch and memset calls of the driver or runtime API (a runtime call that goes through the
  driver counts once); *syncs*: calls that block the host (``*Synchronize`` and non-``Async``
  memcpy); *copies*: memcpy calls in any direction. Implicit synchronisation inside
  ``cudaMalloc``/``cudaFree`` is not counted. Where CUPTI cannot be loaded or subscribed to,
  every count reads ``n/a`` and the reason is printed: CuPy itself has no kernel-launch hook
  (its ``MemoryHook`` sees allocations only, ``cupyx.profiler`` only brackets a profiler).

A calibration row counts a known expression, ``float((x * 2 + 1).sum())``, so a reader can
judge each platform's counts: the stand-in gives 3 launches and 1 sync.

Targets (issue 13), checked on the ``kernel`` rows: one 1024² leaf: ask ≤ 2 launches; the
10-leaf MLP: ask ≤ 20, tell ≤ 40 launches; a tell with host fitness exactly 1 sync (the stats'
read-back). A tell with device fitness reads the fitness back first (shaping runs on the
host), so its second sync is by design and has no target.

Run ``python -m benchmarks.gpu_counts [--stand-in] [--out DIR]``. The CUPTI path awaits its
first run on a GPU: it is checked on the CPU only through :class:`ApiTally`, its bookkeeping.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import functools
import glob
import importlib
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import eggroll_opt as eo
from eggroll_opt import _noise, _philox_kernel, nn
from eggroll_opt._backend import Backend

from ._measure import command_line, describe, machine, write_report
from .bench import mlp_forward

STAND_IN_PATH = Path(__file__).resolve().parent.parent / "tests" / "strict_cupy"
POPSIZE = 256
LEAF_SIZE = 1024
MLP_WIDTHS = (64, 256, 256, 256, 256, 10)
BATCH = 8
KINDS = ("launches", "syncs", "copies")
STEPS = ("ask", "forward", "tell (host fitness)", "tell (device fitness)")
# (workload, step, kind) -> (comparison, bound), checked on the kernel generator's rows.
TARGETS: dict[tuple[str, str, str], tuple[str, int]] = {
    ("1024² leaf", "ask", "launches"): ("<=", 2),
    ("10-leaf MLP", "ask", "launches"): ("<=", 20),
    ("10-leaf MLP", "tell (host fitness)", "launches"): ("<=", 40),
    ("10-leaf MLP", "tell (device fitness)", "launches"): ("<=", 40),
    ("1024² leaf", "tell (host fitness)", "syncs"): ("==", 1),
    ("10-leaf MLP", "tell (host fitness)", "syncs"): ("==", 1),
}


def use_stand_in() -> None:
    """Make ``import cupy`` load the strict stand-in, here and in processes started from here.

    Raises:
        ValueError: if a CuPy other than the stand-in is already imported.
    """
    loaded = sys.modules.get("cupy")
    if loaded is not None and not hasattr(loaded, "_audit"):
        raise ValueError(f"`cupy` is already imported from {loaded.__file__!r}, not the stand-in.")
    path = str(STAND_IN_PATH)
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(part for part in (path, *parts) if part)


def is_stand_in(cupy: ModuleType) -> bool:
    """Whether ``cupy`` is the strict stand-in of the tests (it has the ``_audit`` counts)."""
    return hasattr(cupy, "_audit")


# -- counting on the stand-in ----------------------------------------------------------------
class StandInCounts:
    """The stand-in's ``cupy._audit``, read as launches, syncs and host-to-device copies."""

    source = (
        "the strict CuPy stand-in (tests/strict_cupy): cupy._audit counts calls that compute "
        "(launches), that need device data on the host (syncs) and host-to-device copies"
    )

    def __init__(self, cupy: ModuleType) -> None:
        self._audit = cupy._audit

    def reset(self) -> None:
        """Start counting from zero."""
        self._audit.reset()

    def read(self) -> dict[str, int]:
        """The counts since :meth:`reset`."""
        return {
            "launches": self._audit.launches,
            "syncs": self._audit.syncs,
            "copies": self._audit.host_to_device,
        }

    def close(self) -> None:
        """Nothing to release."""


class _ModelKernel:
    """``cupy.RawKernel`` of the fused generator, modelled on the stand-in: one counted launch.

    It writes what the CUDA kernel writes (see :data:`eggroll_opt._philox_kernel.SOURCE`): the
    words of blocks ``first_block ..``, or each member's cosines then sines cut to ``size``,
    computed with NumPy's Philox and :func:`eggroll_opt._noise.words_to_normals`.
    """

    def __init__(self, cupy: ModuleType, name: str) -> None:
        self._audit = cupy._audit
        self._name = name

    def __call__(
        self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple[Any, ...]
    ) -> None:
        *scalars, out = args
        key = np.array(scalars[:2], dtype=np.uint64)
        epoch, first_block = int(scalars[2]), int(scalars[3])
        host = _noise.raw_words(Backend("numpy", np), key, epoch, first_block, int(scalars[-1]))
        if self._name == _philox_kernel.WORDS_KERNEL:
            out._array[...] = host
        else:
            blocks, size = int(scalars[4]), int(scalars[5])
            words = host.reshape(-1, _noise.WORDS_PER_BLOCK * blocks)
            out._array[...] = _noise.words_to_normals(np, words, out.dtype)[:, :size]
        self._audit.launch(f"RawKernel {self._name}")


@contextlib.contextmanager
def modelled_kernel(cupy: ModuleType) -> Iterator[None]:
    """On the stand-in, ``_philox_kernel.compiled`` gives :class:`_ModelKernel` inside the block."""
    original = _philox_kernel.compiled
    _philox_kernel.compiled = lambda xp, name: _ModelKernel(cupy, name)  # type: ignore[assignment]
    try:
        yield
    finally:
        _philox_kernel.compiled = original


# -- counting on a GPU: CUPTI's callback API -------------------------------------------------
_DRIVER_DOMAIN = 1  # CUPTI_CB_DOMAIN_DRIVER_API
_RUNTIME_DOMAIN = 2  # CUPTI_CB_DOMAIN_RUNTIME_API
_API_ENTER = 0  # CUPTI_API_ENTER


def api_kinds(name: str) -> tuple[str, ...]:
    """What one CUDA driver or runtime API call by ``name`` counts as."""
    if name.startswith(("cuLaunch", "cudaLaunch")) and "HostFunc" not in name:
        return ("launches",)
    if "Memset" in name:
        return ("launches",)
    if "Memcpy" in name:
        return ("copies",) if "Async" in name else ("copies", "syncs")
    if "Synchronize" in name:
        return ("syncs",)
    return ()


class ApiTally:
    """Counts of CUDA API calls by kind, fed one call at a time by a CUPTI callback.

    A runtime call that calls the driver (``cudaLaunchKernel`` calling ``cuLaunchKernel``)
    counts once: driver calls made while a runtime call of the same thread is in progress are
    skipped.
    """

    def __init__(self) -> None:
        self._depth: collections.Counter[int] = collections.Counter()
        self.reset()

    def reset(self) -> None:
        """Start counting from zero (calls in progress stay in progress)."""
        self.counts = dict.fromkeys(KINDS, 0)
        self.calls: collections.Counter[str] = collections.Counter()

    def record(self, domain: int, entering: bool, name: str) -> None:
        """One callback: ``domain`` 1 (driver) or 2 (runtime), at the call's entry or exit."""
        thread = threading.get_ident()
        if domain == _RUNTIME_DOMAIN:
            if not entering:
                self._depth[thread] = max(0, self._depth[thread] - 1)
                return
            self._depth[thread] += 1
        elif not entering or self._depth[thread] > 0:
            return
        kinds = api_kinds(name)
        for kind in kinds:
            self.counts[kind] += 1
        if kinds:
            self.calls[name] += 1


class _CallbackData(ctypes.Structure):
    """The head of CUPTI's ``CUpti_CallbackData``: entry or exit, and the API's name."""

    _fields_ = [("callback_site", ctypes.c_int), ("function_name", ctypes.c_char_p)]


_CALLBACK = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(_CallbackData)
)


def cupti_candidates(cupy: ModuleType | None = None) -> list[str]:
    """Where ``libcupti`` may be: the loader's search, CUDA toolkits, NVIDIA's wheels."""
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    with contextlib.suppress(Exception):
        roots.append(cupy.cuda.get_cuda_path() if cupy is not None else None)
    found = []
    for root in filter(None, roots):
        for folder in ("extras/CUPTI/lib64", "lib64", "lib", "targets/x86_64-linux/lib"):
            found += sorted(glob.glob(os.path.join(root, folder, "libcupti.so*")))
    for entry in sys.path:
        found += sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libcupti.so*")))
    by_loader = ctypes.util.find_library("cupti")
    return list(dict.fromkeys([*found, *([by_loader] if by_loader else []), "libcupti.so"]))


class CuptiCounts:
    """Counts of kernel launches, blocking calls and copies seen by a CUPTI subscriber.

    Build it with :meth:`subscribe`; :meth:`close` unsubscribes.
    """

    source = (
        "CUPTI callbacks on the CUDA driver and runtime APIs: launches = kernel launch and "
        "memset calls, syncs = *Synchronize and blocking memcpy calls, copies = memcpy calls "
        "(any direction)"
    )

    def __init__(self, library: ctypes.CDLL, subscriber: ctypes.c_void_p, callback: Any) -> None:
        self.tally = ApiTally()
        self._library = library
        self._subscriber = subscriber
        self._callback = callback  # kept alive as long as CUPTI may call it

    @classmethod
    def subscribe(cls, candidates: list[str]) -> tuple[CuptiCounts | None, str]:
        """The first library of ``candidates`` that subscribes, or ``None`` and why none did."""
        reasons = []
        for path in candidates:
            try:
                library = ctypes.CDLL(path)
            except OSError as error:
                reasons.append(f"{path}: {error}")
                continue
            counts, reason = cls._subscribe(library)
            if counts is not None:
                return counts, path
            reasons.append(f"{path}: {reason}")
        return None, "; ".join(reasons) or "no libcupti candidate"

    @classmethod
    def _subscribe(cls, library: ctypes.CDLL) -> tuple[CuptiCounts | None, str]:
        library.cuptiSubscribe.argtypes = [
            ctypes.POINTER(ctypes.c_void_p),
            _CALLBACK,
            ctypes.c_void_p,
        ]
        library.cuptiEnableDomain.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_int]
        library.cuptiUnsubscribe.argtypes = [ctypes.c_void_p]
        tally_holder: list[ApiTally] = []

        def on_call(_user: Any, domain: int, _callback_id: int, data: Any) -> None:
            try:
                record = data.contents
                name = (record.function_name or b"").decode("ascii", "replace")
                tally_holder[0].record(domain, record.callback_site == _API_ENTER, name)
            except Exception:  # never raise into the CUDA library
                pass

        callback = _CALLBACK(on_call)
        subscriber = ctypes.c_void_p()
        status = library.cuptiSubscribe(ctypes.byref(subscriber), callback, None)
        if status != 0:
            return None, f"cuptiSubscribe: {_cupti_error(library, status)}"
        counts = cls(library, subscriber, callback)
        tally_holder.append(counts.tally)
        for domain in (_DRIVER_DOMAIN, _RUNTIME_DOMAIN):
            status = library.cuptiEnableDomain(1, subscriber, domain)
            if status != 0:
                counts.close()
                return None, f"cuptiEnableDomain({domain}): {_cupti_error(library, status)}"
        return counts, ""

    def reset(self) -> None:
        """Start counting from zero."""
        self.tally.reset()

    def read(self) -> dict[str, int]:
        """The counts since :meth:`reset`."""
        return dict(self.tally.counts)

    def close(self) -> None:
        """Unsubscribe."""
        self._library.cuptiUnsubscribe(self._subscriber)


def _cupti_error(library: ctypes.CDLL, status: int) -> str:
    text = ctypes.c_char_p()
    with contextlib.suppress(Exception):
        library.cuptiGetResultString(ctypes.c_int(status), ctypes.byref(text))
    return f"error {status}" + (f" ({text.value.decode()})" if text.value else "")


def counter_for(cupy: ModuleType) -> tuple[Any, str]:
    """A counter for ``cupy`` (``None`` if no counting is possible) and what it counts."""
    if is_stand_in(cupy):
        return StandInCounts(cupy), StandInCounts.source
    counts, detail = CuptiCounts.subscribe(cupti_candidates(cupy))
    if counts is None:
        return None, f"n/a: CUPTI could not be used ({detail})"
    return counts, f"{CuptiCounts.source}; library {detail}"


# -- the workloads ---------------------------------------------------------------------------
def leaf_params() -> dict[str, Any]:
    """One 1024 x 1024 float32 leaf: the weight of dense layer ``l0``, without bias."""
    return {"l0": {"w": np.zeros((LEAF_SIZE, LEAF_SIZE), np.float32)}}


def mlp_params(widths: tuple[int, ...] = MLP_WIDTHS) -> dict[str, Any]:
    """Dense layers ``l0 ..`` with weights and biases: ``2 * (len(widths) - 1)`` leaves."""
    rng = np.random.default_rng(0)
    return {
        f"l{i}": {
            "w": (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32),
            "b": np.zeros(out, np.float32),
        }
        for i, (inp, out) in enumerate(itertools.pairwise(widths))
    }


def population_forward(pop: eo.Population, x: Any, layers: int) -> Any:
    """The bench's tanh MLP (:func:`benchmarks.bench.mlp_forward`) over the population."""
    return mlp_forward(nn.PopulationLayers(pop), x, layers)


def count_workload(
    counter: Any,
    backend: Backend,
    params: dict[str, Any],
    layers: int,
    popsize: int,
    repeats: int = 2,
) -> dict[str, list[dict[str, int]]]:
    """The counts of each step, ``repeats`` times each, after two warm-up generations.

    Generations alternate host and device fitness (the warm-up has one of each), so every step
    is counted ``repeats`` times.
    """
    xp = backend.xp
    es = eo.Eggroll(
        params,
        popsize=popsize,
        sigma=0.01,
        learning_rate=1e-3,
        optimizer="adam",
        seed=0,
        backend=backend,
    )
    width = params["l0"]["w"].shape[1]
    x = xp.asarray(np.random.default_rng(1).standard_normal((BATCH, width)), dtype=xp.float32)
    host_fitness = np.random.default_rng(2).standard_normal(popsize)
    counts: dict[str, list[dict[str, int]]] = {step: [] for step in STEPS}

    def counted(record: bool, step: str, function: Callable[[], Any]) -> Any:
        if not record:
            return function()
        counter.reset()
        result = function()
        counts[step].append(counter.read())
        return result

    for generation in range(2 + 2 * repeats):
        record = generation >= 2
        pop = counted(record, "ask", es.ask)
        out = counted(record, "forward", functools.partial(population_forward, pop, x, layers))
        if generation % 2:
            losses = (out * out).mean(axis=(1, 2))
            counted(record, "tell (device fitness)", functools.partial(es.tell, losses))
        else:
            counted(record, "tell (host fitness)", functools.partial(es.tell, host_fitness))
    return counts


def _summary(values: list[int]) -> int | str:
    low, high = min(values), max(values)
    return low if low == high else f"{low}-{high}"


def _met(value: int | str | None, comparison: str, bound: int) -> bool | None:
    if not isinstance(value, int):  # n/a, or counts that varied: judged on the largest
        if not isinstance(value, str):
            return None
        value = int(value.split("-")[1])
    return value <= bound if comparison == "<=" else value == bound


def run(*, popsize: int = POPSIZE, repeats: int = 2) -> dict[str, Any]:
    """Count every step of both workloads with both generators; returns rows and checks."""
    cupy = importlib.import_module("cupy")
    stand_in = is_stand_in(cupy)
    counter, source = counter_for(cupy)
    workloads = {
        "1024² leaf": (leaf_params(), 1),
        "10-leaf MLP": (mlp_params(), len(MLP_WIDTHS) - 1),
    }
    rows: list[dict[str, Any]] = []
    try:
        calibration = cupy.arange(1024, dtype=cupy.float32)
        if counter is not None:
            counter.reset()
            float((calibration * 2 + 1).sum())
            rows.append(
                {"workload": "calibration", "generator": "-", "step": "float((x * 2 + 1).sum())"}
                | counter.read()
            )
        for generator in ("arrays", "kernel"):
            backend = Backend("cupy", cupy, generator=generator)
            modelled = stand_in and generator == "kernel"
            label = f"{generator} (modelled)" if modelled else generator
            for workload, (params, layers) in workloads.items():
                if counter is None:
                    rows += [
                        {"workload": workload, "generator": label, "step": step}
                        | dict.fromkeys(KINDS)
                        for step in STEPS
                    ]
                    continue
                with modelled_kernel(cupy) if modelled else contextlib.nullcontext():
                    counts = count_workload(counter, backend, params, layers, popsize, repeats)
                for step, measured in counts.items():
                    row: dict[str, Any] = {"workload": workload, "generator": label, "step": step}
                    for kind in KINDS:
                        row[kind] = _summary([one[kind] for one in measured])
                    rows.append(row)
    finally:
        if counter is not None:
            counter.close()
    checks = []
    for row in rows:
        if not row["generator"].startswith("kernel"):
            continue
        for kind in KINDS:
            target = TARGETS.get((row["workload"], row["step"], kind))
            if target is not None:
                checks.append(
                    {
                        "check": f"{row['workload']}, {row['step']}: {kind}",
                        "value": row[kind],
                        "target": f"{target[0]} {target[1]}",
                        "met": _met(row[kind], *target),
                    }
                )
    return {
        "platform": "stand-in" if stand_in else "cuda",
        "cupy": getattr(cupy, "__version__", "?"),
        "source": source,
        "setup": {
            "popsize": popsize,
            "rank": 1,
            "optimizer": "adam",
            "leaf": [LEAF_SIZE, LEAF_SIZE],
            "mlp_widths": list(MLP_WIDTHS),
            "batch": BATCH,
            "repeats": repeats,
        },
        "machine": machine(),
        "rows": rows,
        "checks": checks,
    }


def _cell(value: Any) -> str:
    return "n/a" if value is None else str(value)


def markdown(result: dict[str, Any]) -> str:
    """The result as markdown: what was counted, the counts, the targets."""
    setup = result["setup"]
    lines = [
        f"Counts on {result['platform']} (CuPy {result['cupy']}), popsize {setup['popsize']}, "
        f"rank 1, Adam; each step counted {setup['repeats']} times after a warm-up (a-b: the "
        f"counts varied).",
        f"What is counted: {result['source']}.",
        "",
        "| workload | generator | step | launches | syncs | copies |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in result["rows"]:
        cells = " | ".join(_cell(row[kind]) for kind in KINDS)
        lines.append(f"| {row['workload']} | {row['generator']} | {row['step']} | {cells} |")
    lines += ["", "| target (kernel generator) | measured | target | met |", "|---|---:|---|---|"]
    for check in result["checks"]:
        met = {True: "yes", False: "NO", None: "n/a"}[check["met"]]
        lines.append(f"| {check['check']} | {_cell(check['value'])} | {check['target']} | {met} |")
    lines += ["", f"Machine: {describe(result['machine'])}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = command_line("python -m benchmarks.gpu_counts", __doc__)
    parser.add_argument(
        "--stand-in", action="store_true", help="count on the strict CuPy stand-in (no GPU)"
    )
    parser.add_argument("--popsize", type=int, default=POPSIZE)
    parser.add_argument("--repeats", type=int, default=2, help="counts of each step")
    parser.add_argument("--out", help="folder for gpu_counts.md and gpu_counts.json")
    args = parser.parse_args(argv)
    if args.stand_in:
        use_stand_in()
    result = run(popsize=args.popsize, repeats=args.repeats)
    text = markdown(result)
    print(text)
    if args.out:
        write_report(args.out, "gpu_counts", text, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
