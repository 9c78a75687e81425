"""The names of the stand-in's namespaces, built from ``cupy_names.json``.

Only names that real CuPy 14.2 has are made, and of those only the ones whose behaviour the
stand-in can give without letting NumPy data through: a name left out raises
``AttributeError`` as a missing CuPy name would (see :data:`LEFT_OUT`).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._core import audit, ndarray, run, ufunc, unwrap

NAMES: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parent.parent / "cupy_names.json").read_text()
)

# Functions that take host data (a NumPy array, a list of numbers) and copy it to the device.
_CONSTRUCTORS: dict[str, Callable[..., Any]] = {
    "array": np.array,
    "asarray": np.asarray,
    "asanyarray": np.asarray,
    "asfarray": lambda a, dtype=np.float64: np.asarray(a, dtype=dtype),
}

# Functions that describe types or shapes: no device work, results stay on the host.
_METADATA = frozenset(
    (
        *("shape", "ndim", "size", "isscalar", "iscomplexobj", "isrealobj", "isfortran"),
        *("may_share_memory", "shares_memory", "result_type", "can_cast", "promote_types"),
        *("min_scalar_type", "common_type", "mintypecode", "iterable", "issubdtype"),
        *("isdtype", "broadcast_shapes", "typename", "base_repr", "binary_repr"),
        *("format_float_positional", "format_float_scientific"),
    )
)

# CuPy names whose NumPy counterpart has another name (NumPy 2 removed the old spellings).
_ALIASES = {
    "alltrue": "all",
    "sometrue": "any",
    "cumproduct": "cumprod",
    "product": "prod",
    "round_": "round",
    "trapz": "trapezoid",
    "in1d": "isin",
    "row_stack": "vstack",
    "float_": "float64",
    "cfloat": "complex128",
    "complex_": "complex128",
    "singlecomplex": "complex64",
}
_CONSTANTS = {
    "Inf": math.inf,
    "Infinity": math.inf,
    "infty": math.inf,
    "PINF": math.inf,
    "NINF": -math.inf,
    "NaN": math.nan,
    "NAN": math.nan,
    "PZERO": 0.0,
    "NZERO": -0.0,
}

# Names of CuPy that the stand-in does not provide, and why.
LEFT_OUT = {
    "compiled kernels (the library falls back to array operations without RawKernel)": (
        "RawKernel",
        "RawModule",
        "ElementwiseKernel",
        "ReductionKernel",
    ),
    "callbacks or objects that would hand NumPy data to user code": (
        *("apply_along_axis", "apply_over_axes", "piecewise", "fromfunction", "vectorize"),
        *("poly1d", "flatiter", "broadcast", "ndindex", "r_", "c_", "mgrid", "ogrid"),
    ),
    "file and text input/output, printing options": (
        *("load", "loadtxt", "genfromtxt", "save", "savetxt", "savez", "savez_compressed"),
        *("fromfile", "frombuffer", "fromstring", "fromiter", "DataSource", "safe_eval"),
        *("array2string", "array_repr", "array_str", "printoptions", "set_printoptions"),
        *("get_printoptions", "set_string_function", "disp", "who", "show_config"),
    ),
    "CuPy internals: DLPack, memoisation, pinned memory, struct dtypes": (
        *("fromDlpack", "from_dlpack", "memoize", "clear_memo", "make_aligned_dtype"),
        *("get_default_pinned_memory_pool", "format_parser", "get_array_wrap"),
        *("byte_bounds", "find_common_type", "issctype", "issubclass_", "issubsctype"),
        *("obj2sctype", "sctype2char", "msort", "disable_experimental_feature_warning"),
    ),
    "modules the stand-in does not model": ("fft", "polynomial", "testing", "typing", "exceptions"),
}
_LEFT_OUT = frozenset(name for names in LEFT_OUT.values() for name in names)


def function(name: str, implementation: Callable[..., Any], module: str = "cupy") -> Any:
    """The stand-in's ``module.name``: NumPy's ``implementation`` on device arrays only."""
    if name in _METADATA:
        wrapper = _metadata_function(implementation)
    elif name in _CONSTRUCTORS:
        wrapper = _constructor(name, implementation)
    else:
        wrapper = _device_function(name, implementation)
    wrapper.__name__ = wrapper.__qualname__ = name
    wrapper.__module__ = module
    wrapper.__doc__ = f"CuPy's ``{module}.{name}``, run by NumPy on the stand-in's buffers."
    return wrapper


def _device_function(name: str, implementation: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return run(name, implementation, args, kwargs)

    return call


def _constructor(name: str, implementation: Callable[..., Any]) -> Callable[..., Any]:
    def call(obj: Any, *args: Any, blocking: bool = False, **kwargs: Any) -> Any:
        return run(name, implementation, (obj, *args), kwargs, host=True)

    return call


def _metadata_function(implementation: Callable[..., Any]) -> Callable[..., Any]:
    """Shapes and types: answered from the buffers' metadata, nothing runs on the device."""

    def call(*args: Any, **kwargs: Any) -> Any:
        inputs: dict[int, ndarray] = {}
        raw_kwargs = {key: unwrap(value, inputs, host=True) for key, value in kwargs.items()}
        return implementation(*unwrap(args, inputs, host=True), **raw_kwargs)

    return call


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, **_: Any) -> Any:
    """A host copy of ``a`` (a device array is synchronised; host data passes through)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)  # type: ignore[call-overload]


def get_array_module(*args: Any) -> Any:
    """The stand-in ``cupy`` module if any argument is a device array, else NumPy."""
    return sys.modules["cupy"] if any(isinstance(a, ndarray) for a in args) else np


def is_available() -> bool:
    """A device is always there."""
    return True


def fuse(*args: Any, **kwargs: Any) -> Any:
    """``@cupy.fuse``: the function runs as written, and counts as one launch per call."""

    def decorate(target: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(target)
        def fused(*call_args: Any, **call_kwargs: Any) -> Any:
            with audit.fused(f"fuse:{target.__name__}"):
                return target(*call_args, **call_kwargs)

        return fused

    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


class _MemoryPool:
    """``cupy.get_default_memory_pool()``: memory is not modelled, so every figure is 0."""

    def used_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def free_bytes(self) -> int:
        return 0

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        return None

    def get_limit(self) -> int:
        return 0

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        return None


_POOL = _MemoryPool()

_SPECIAL: dict[str, Any] = {
    "asnumpy": asnumpy,
    "get_array_module": get_array_module,
    "is_available": is_available,
    "fuse": fuse,
    "get_default_memory_pool": lambda: _POOL,
    "ndarray": ndarray,
    "ufunc": ufunc,
}


def _numpy(name: str) -> Any:
    """NumPy's object for the CuPy name ``name``, or None."""
    name = _ALIASES.get(name, name)
    found = getattr(np, name, None)
    if found is None:
        found = getattr(np.exceptions, name, None)
    return found


def top_level() -> dict[str, Any]:
    """The names of ``cupy`` itself (submodules are added by the package)."""
    names: dict[str, Any] = {"__version__": NAMES["version"]}
    for name, kind in NAMES["namespace"].items():
        if name in _LEFT_OUT or kind == "module" or name == "annotations":
            continue
        if name in _SPECIAL:
            names[name] = _SPECIAL[name]
        elif name in _CONSTANTS:
            names[name] = _CONSTANTS[name]
        elif name in _CONSTRUCTORS:
            names[name] = function(name, _CONSTRUCTORS[name])
        elif (numpy_object := _numpy(name)) is None:
            continue
        elif kind == "ufunc":
            names[name] = ufunc.of(name, numpy_object)
        elif kind == "func":
            names[name] = function(name, numpy_object)
        else:  # a type (dtype, scalar type, exception) or a constant: NumPy's own
            names[name] = numpy_object
    return names


def submodule(path: str, numpy_module: Any) -> dict[str, Any]:
    """The functions of ``cupy.<path>`` that NumPy's ``numpy_module`` has."""
    names: dict[str, Any] = {}
    for name in NAMES[path]:
        found = getattr(numpy_module, name, None)
        if name == "annotations" or found is None:
            continue
        names[name] = found if isinstance(found, type) else function(name, found, f"cupy.{path}")
    return names


class _Random:
    """The device's random source: a NumPy ``Generator`` whose draws land on the device."""

    def __init__(self) -> None:
        self.generator = np.random.default_rng()

    def draw(self, name: str, method: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return run(name, getattr(self.generator, method), args, kwargs)

        call.__name__ = call.__qualname__ = name
        call.__module__ = "cupy.random"
        return call

    def seed(self, seed: int | None = None) -> None:
        self.generator = np.random.default_rng(seed)


def random_module() -> dict[str, Any]:
    """``cupy.random``'s module-level draws (not its generator classes)."""
    source = _Random()
    legacy = {"random_sample": "random", "ranf": "random", "sample": "random"}
    legacy["randint"] = "integers"
    names: dict[str, Any] = {"seed": source.seed}
    for name in NAMES["random"]:
        method = legacy.get(name, name)
        if hasattr(source.generator, method) and not name[0].isupper():
            names[name] = source.draw(name, method)
    names["rand"] = lambda *shape: names["random_sample"](shape)
    names["randn"] = lambda *shape: names["standard_normal"](shape)
    return names
