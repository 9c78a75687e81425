"""The stand-in's device array, its ufuncs, and the audit of what reached the "device".

A device array wraps a NumPy array (its "device buffer"). Every way of reaching that buffer
from NumPy implicitly is refused as CuPy refuses it; every explicit way is counted:

* a *launch* is a call that computes on the device: it returns new device memory, writes into
  existing memory (``out=``, in-place operators and methods, ``__setitem__``), or reduces to a
  0-d result; a view (reshape, transpose, basic slicing, ``asarray`` of a device array) is not;
* a *sync* is a call that needs the data on the host: ``get``, ``tolist``, ``item``,
  ``float/int/bool/complex``, ``repr/str/format``, pickling, ``Device().synchronize()``, and a
  call whose result's size depends on the data (``nonzero``, ``unique``, a boolean mask);
* a *host-to-device copy* is host data given to ``asarray``/``array``, ``set``, an index or
  ``__setitem__``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))

_IMPLICIT_CONVERSION = (
    "Implicit conversion to a NumPy array is not allowed. "
    "Please use `.get()` to construct a NumPy array explicitly."
)

# Calls whose result's size depends on the data: CuPy waits for the device to learn it.
SIZE_FROM_DATA = frozenset(
    (
        *("nonzero", "argwhere", "flatnonzero", "compress", "extract", "trim_zeros"),
        *("unique", "unique_all", "unique_counts", "unique_inverse", "unique_values"),
        *("intersect1d", "setdiff1d", "setxor1d", "union1d"),
    )
)

# What CuPy accepts beside its own arrays as an operand of a ufunc or an operator.
_SCALARS = (bool, int, float, complex, np.generic)


class Audit:
    """Counts of launches, syncs and host-to-device copies since the last :meth:`reset`.

    Attributes:
        launches: calls that computed on the device (see the module docstring).
        syncs: calls that waited for device data on the host.
        host_to_device: copies of host data to the device.
        calls: ``(kind, name) -> count`` for each of the three kinds.
        sites: ``(kind, "file:line") -> count``, the first caller outside the stand-in, kept
            only while :attr:`trace` is true.
        trace: whether to record :attr:`sites` (slower).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fused = threading.local()
        self.trace = False
        self.reset()

    def reset(self) -> None:
        """Set every count back to zero."""
        with self._lock:
            self.launches = 0
            self.syncs = 0
            self.host_to_device = 0
            self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
            self.sites: collections.Counter[tuple[str, str]] = collections.Counter()

    def snapshot(self) -> dict[str, int]:
        """The three totals, as a dict."""
        return {
            "launches": self.launches,
            "syncs": self.syncs,
            "host_to_device": self.host_to_device,
        }

    def launch(self, name: str) -> None:
        """Record one kernel launch by ``name`` (none inside a ``cupy.fuse`` function)."""
        if getattr(self._fused, "depth", 0) == 0:
            self._record("launches", name)

    def sync(self, name: str) -> None:
        """Record one device-to-host synchronisation by ``name``."""
        self._record("syncs", name)

    def copy_to_device(self, name: str) -> None:
        """Record one host-to-device copy by ``name``."""
        self._record("host_to_device", name)

    @contextlib.contextmanager
    def fused(self, name: str) -> Iterator[None]:
        """Count everything launched inside the block as one launch, as ``cupy.fuse`` does."""
        self._fused.depth = getattr(self._fused, "depth", 0) + 1
        try:
            yield
        finally:
            self._fused.depth -= 1
        self.launch(name)

    def _record(self, kind: str, name: str) -> None:
        site = _caller() if self.trace else ""
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)
            self.calls[(kind, name)] += 1
            if site:
                self.sites[(kind, site)] += 1


def _caller() -> str:
    """``file:line`` of the first frame outside the stand-in and NumPy."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(_HERE) and f"{os.sep}numpy{os.sep}" not in filename:
            return f"{filename}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


audit = Audit()


def unsupported(value: Any) -> TypeError:
    """The error CuPy raises for an operand it cannot take, such as a NumPy array."""
    return TypeError(f"Unsupported type {type(value)}")


def is_host_data(value: Any) -> bool:
    """Whether ``value`` holds data that would have to be copied to the device."""
    if isinstance(value, ndarray):
        return False
    if isinstance(value, (np.ndarray, *_SCALARS)):
        return True
    if type(value) in (list, tuple):
        return any(is_host_data(item) for item in value)
    return False


def unwrap(value: Any, inputs: dict[int, ndarray], *, host: bool = False) -> Any:
    """``value`` with each device array (in lists and tuples too) replaced by its buffer.

    Each device array met is added to ``inputs`` by the id of its buffer.

    Raises:
        TypeError: a NumPy array is met and ``host`` is false.
    """
    if isinstance(value, ndarray):
        inputs[id(value._array)] = value
        return value._array
    if isinstance(value, np.ndarray):
        if not host:
            raise unsupported(value)
        return value
    if type(value) in (list, tuple):
        return type(value)(unwrap(item, inputs, host=host) for item in value)
    return value


def _leaves(value: Any) -> Iterator[Any]:
    if type(value) in (list, tuple):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _computed(result: Any, inputs: dict[int, ndarray]) -> bool:
    """Whether ``result`` holds device data that the call computed (not a view of an input)."""
    buffers = [device._array for device in inputs.values()]
    for leaf in _leaves(result):
        if isinstance(leaf, np.generic):
            return True
        if isinstance(leaf, bool | int | float | complex) and inputs:
            return True
        if isinstance(leaf, np.ndarray) and not any(
            np.may_share_memory(leaf, buffer) for buffer in buffers
        ):
            return True
    return False


def wrap(result: Any, inputs: dict[int, ndarray]) -> Any:
    """``result`` with NumPy arrays and scalars as device arrays.

    An input's own buffer comes back as that input (``asarray(x) is x``, ``out=`` is returned);
    a Python number computed from device inputs becomes a 0-d device array, as CuPy returns one.
    """
    if isinstance(result, np.ndarray):
        own = inputs.get(id(result))
        return ndarray._of(result) if own is None else own
    if isinstance(result, np.generic):
        return ndarray._of(np.asarray(result))
    if isinstance(result, bool | int | float | complex) and inputs:
        return ndarray._of(np.asarray(result))
    if type(result) in (list, tuple):
        return type(result)(wrap(item, inputs) for item in result)
    return result


def run(
    name: str,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    inputs: dict[int, ndarray] | None = None,
    host: bool = False,
    writes: bool = False,
) -> Any:
    """Call the NumPy ``function`` on the buffers of the device arguments; count what it did.

    Args:
        name: what the audit records.
        function: the NumPy implementation.
        args: positional arguments, device arrays among them.
        kwargs: keyword arguments, device arrays among them.
        inputs: device arrays already taken apart (a method's own array).
        host: whether NumPy arrays may be given (they are copied to the device).
        writes: whether the call writes into device memory that it was given.
    """
    inputs = {} if inputs is None else inputs
    raw_args = unwrap(args, inputs, host=host)
    raw_kwargs = {key: unwrap(value, inputs, host=host) for key, value in kwargs.items()}
    if host and is_host_data(args[:1]):
        audit.copy_to_device(name)
        if isinstance(raw_args[0], np.ndarray):  # a copy, as on a real device: never shared
            raw_args = (raw_args[0].copy(), *raw_args[1:])
    result = function(*raw_args, **raw_kwargs)
    writes = writes or kwargs.get("out") is not None or result is None
    if (writes or _computed(result, inputs)) and (inputs or not host):
        audit.launch(name)
    if name in SIZE_FROM_DATA:
        audit.sync(name)
    return wrap(result, inputs)


def _rebuild(array: np.ndarray) -> ndarray:
    """Unpickle a device array: its host copy goes back to the device."""
    audit.copy_to_device("unpickle")
    return ndarray._of(array)


class _Flags:
    """The flags CuPy reports (it has no ``writeable``)."""

    __slots__ = ("c_contiguous", "f_contiguous", "owndata")

    def __init__(self, array: np.ndarray) -> None:
        self.c_contiguous = bool(array.flags.c_contiguous)
        self.f_contiguous = bool(array.flags.f_contiguous)
        self.owndata = bool(array.flags.owndata)

    def __getitem__(self, name: str) -> bool:
        keys = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous"}
        keys["OWNDATA"] = "owndata"
        return bool(getattr(self, keys[name]))

    def __repr__(self) -> str:
        return (
            f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n"
            f"  OWNDATA : {self.owndata}"
        )


class ndarray:
    """A device array: a NumPy buffer that NumPy cannot reach implicitly.

    ``ndarray(shape, dtype)`` allocates, as in CuPy; the stand-in wraps results with
    :meth:`_of`.
    """

    __module__ = "cupy"
    __slots__ = ("__weakref__", "_array")
    __array_priority__ = 100.0
    __hash__ = None  # type: ignore[assignment]  # unhashable, as in CuPy

    def __init__(
        self,
        shape: Any,
        dtype: Any = float,
        memptr: Any = None,
        strides: Any = None,
        order: str = "C",
    ) -> None:
        if memptr is not None or strides is not None:
            raise NotImplementedError("the CuPy stand-in allocates only fresh arrays")
        self._array = np.empty(shape, dtype, order=order)  # type: ignore[call-overload]

    @classmethod
    def _of(cls, array: np.ndarray) -> ndarray:
        device = object.__new__(cls)
        device._array = array
        return device

    # -- refusals ------------------------------------------------------------------------

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(_IMPLICIT_CONVERSION)

    def __array_ufunc__(self, numpy_ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """``np.f(x)`` for a ufunc ``f`` runs ``cupy.f`` (which refuses NumPy operands)."""
        own = getattr(sys.modules["cupy"], numpy_ufunc.__name__, None)
        if not isinstance(own, ufunc):
            return NotImplemented
        if method == "__call__":
            return own(*inputs, **kwargs)
        if method in ("reduce", "accumulate", "reduceat", "outer", "at"):
            return getattr(own, method)(*inputs, **kwargs)
        return NotImplemented

    def __array_function__(
        self, function: Any, types: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``np.f(x)`` runs ``cupy.f`` (same module path and name), or NumPy finds none."""
        namespace: Any = sys.modules["cupy"]
        for part in function.__module__.split(".")[1:]:
            if part.startswith("_"):
                return NotImplemented
            namespace = getattr(namespace, part, None)
        own = getattr(namespace, function.__name__, None)
        if own is None or own is function:
            return NotImplemented
        return own(*args, **kwargs)

    # -- metadata (no device work) -------------------------------------------------------

    @property
    def shape(self) -> tuple[int, ...]:
        return self._array.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._array.dtype

    @property
    def ndim(self) -> int:
        return self._array.ndim

    @property
    def size(self) -> int:
        return self._array.size

    @property
    def strides(self) -> tuple[int, ...]:
        return self._array.strides

    @property
    def itemsize(self) -> int:
        return self._array.itemsize

    @property
    def nbytes(self) -> int:
        return self._array.nbytes

    @property
    def flags(self) -> _Flags:
        return _Flags(self._array)

    @property
    def base(self) -> ndarray | None:
        return None if self._array.base is None else ndarray._of(self._array.base)

    @property
    def device(self) -> Any:
        return sys.modules["cupy"].cuda.Device(0)

    @property
    def T(self) -> ndarray:
        return ndarray._of(self._array.T)

    @property
    def mT(self) -> ndarray:
        return ndarray._of(self._array.mT)

    @property
    def real(self) -> ndarray:
        return run("real", lambda: self._array.real, (), {}, inputs={id(self._array): self})

    @property
    def imag(self) -> ndarray:
        return run("imag", lambda: self._array.imag, (), {}, inputs={id(self._array): self})

    def __len__(self) -> int:
        return len(self._array)

    # -- syncs: the data comes to the host -------------------------------------------------

    def get(
        self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True
    ) -> Any:
        """A NumPy copy (or ``out`` filled), as ``cupy.ndarray.get``."""
        audit.sync("get")
        if out is not None:
            out[...] = self._array
            return out
        return np.array(self._array, order=order)  # type: ignore[call-overload]

    def set(self, array: np.ndarray, stream: Any = None) -> None:
        """Copy the host ``array`` into this one."""
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(array)}")
        audit.copy_to_device("set")
        self._array[...] = array

    def tolist(self) -> Any:
        audit.sync("tolist")
        return self._array.tolist()

    def item(self, *args: Any) -> Any:
        audit.sync("item")
        return self._array.item(*args)

    def tobytes(self, order: str = "C") -> bytes:
        audit.sync("tobytes")
        return self._array.tobytes(order)

    def dumps(self) -> bytes:
        audit.sync("dumps")
        return np.ndarray.dumps(self._array)

    def dump(self, file: Any) -> None:
        audit.sync("dump")
        self._array.dump(file)

    def tofile(self, fid: Any, sep: str = "", format: str = "%s") -> None:
        audit.sync("tofile")
        self._array.tofile(fid, sep, format)

    def __float__(self) -> float:
        audit.sync("float")
        return float(self._array)

    def __int__(self) -> int:
        audit.sync("int")
        return int(self._array)

    def __complex__(self) -> complex:
        audit.sync("complex")
        return complex(self._array)

    def __bool__(self) -> bool:
        audit.sync("bool")
        return bool(self._array)

    def __repr__(self) -> str:
        audit.sync("repr")
        return repr(self._array)

    def __str__(self) -> str:
        audit.sync("str")
        return str(self._array)

    def __format__(self, spec: str) -> str:
        audit.sync("format")
        return format(self._array, spec)

    def __reduce__(self) -> tuple[Any, ...]:
        audit.sync("pickle")
        return (_rebuild, (self._array.copy(),))

    # -- indexing --------------------------------------------------------------------------

    def __getitem__(self, key: Any) -> ndarray:
        inputs = {id(self._array): self}
        if _index_has_host_arrays(key):
            audit.copy_to_device("index")
        raw = _unwrap_index(key, inputs)
        result = self._array[raw]
        if not isinstance(result, np.ndarray):  # an element: a 0-d view, as CuPy gives
            result = self._array[(*raw, Ellipsis) if isinstance(raw, tuple) else (raw, Ellipsis)]
        if _computed(result, inputs):
            audit.launch("getitem")
        if any(device.dtype == np.bool_ for device in inputs.values() if device is not self):
            audit.sync("getitem")  # a boolean mask: the result's size depends on the data
        return ndarray._of(result)

    def __setitem__(self, key: Any, value: Any) -> None:
        inputs = {id(self._array): self}
        if _index_has_host_arrays(key) or isinstance(value, np.ndarray | list | tuple):
            audit.copy_to_device("setitem")
        raw_value = unwrap(value, inputs, host=True)
        self._array[_unwrap_index(key, inputs)] = raw_value
        audit.launch("setitem")

    def __delitem__(self, key: Any) -> None:
        raise ValueError("cannot delete array elements")

    def __iter__(self) -> Iterator[ndarray]:
        if self._array.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        for index in range(len(self._array)):
            yield self[index]

    def __copy__(self) -> ndarray:
        return self.copy()  # type: ignore[attr-defined]

    def __deepcopy__(self, memo: dict[int, Any]) -> ndarray:
        return self.copy()  # type: ignore[attr-defined]


def _index_has_host_arrays(key: Any) -> bool:
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(part, np.ndarray | list) for part in parts)


def _unwrap_index(key: Any, inputs: dict[int, ndarray]) -> Any:
    if isinstance(key, tuple):
        return tuple(_unwrap_index(part, inputs) for part in key)
    if isinstance(key, ndarray):
        inputs[id(key._array)] = key
        return key._array
    return key


class ufunc:
    """A CuPy ufunc: device arrays and scalars only; NumPy arrays and lists are refused."""

    __module__ = "cupy"

    _registry: ClassVar[dict[str, ufunc]] = {}

    def __init__(self, name: str, implementation: Callable[..., Any]) -> None:
        self.__name__ = name
        self._implementation = implementation

    @classmethod
    def of(cls, name: str, implementation: Callable[..., Any] | None = None) -> ufunc:
        """The stand-in's ufunc ``name`` (NumPy's of that name unless ``implementation``)."""
        if name not in cls._registry:
            cls._registry[name] = cls(name, implementation or getattr(np, name))
        return cls._registry[name]

    @property
    def nin(self) -> int:
        return int(getattr(self._implementation, "nin", 1))

    @property
    def nout(self) -> int:
        return int(getattr(self._implementation, "nout", 1))

    @property
    def nargs(self) -> int:
        return self.nin + self.nout

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for arg in args:
            if not isinstance(arg, (ndarray, *_SCALARS)):
                raise unsupported(arg)
        return run(self.__name__, self._implementation, args, kwargs)

    def _method(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if not isinstance(self._implementation, np.ufunc):
            raise NotImplementedError(f"{self.__name__}.{method} is not supported")
        for arg in args:
            if isinstance(arg, np.ndarray):
                raise unsupported(arg)
        name = f"{self.__name__}.{method}"
        return run(name, getattr(self._implementation, method), args, kwargs, writes=method == "at")

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("reduce", args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("accumulate", args, kwargs)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("reduceat", args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("outer", args, kwargs)

    def at(self, *args: Any, **kwargs: Any) -> Any:
        return self._method("at", args, kwargs)


# -- operators: each is the ufunc of the same meaning -------------------------------------

_BINARY = {
    "add": "add",
    "sub": "subtract",
    "mul": "multiply",
    "truediv": "divide",
    "floordiv": "floor_divide",
    "mod": "remainder",
    "pow": "power",
    "matmul": "matmul",
    "and": "bitwise_and",
    "or": "bitwise_or",
    "xor": "bitwise_xor",
    "lshift": "left_shift",
    "rshift": "right_shift",
    "divmod": "divmod",
}
_COMPARISONS = {
    "eq": "equal",
    "ne": "not_equal",
    "lt": "less",
    "le": "less_equal",
    "gt": "greater",
    "ge": "greater_equal",
}
_UNARY = {"neg": "negative", "pos": "positive", "abs": "absolute", "invert": "invert"}


def _operand(other: Any) -> bool:
    """Whether ``other`` can meet a device array in an operator; NumPy arrays are refused."""
    if isinstance(other, np.ndarray):
        raise unsupported(other)
    return isinstance(other, (ndarray, *_SCALARS))


def _binary(ufunc_name: str, *, reflected: bool = False, in_place: bool = False) -> Any:
    def operator(self: ndarray, other: Any) -> Any:
        if not _operand(other):
            return NotImplemented
        function = ufunc.of(ufunc_name)
        if in_place:
            return function(self, other, out=self)
        return function(other, self) if reflected else function(self, other)

    return operator


def _unary(ufunc_name: str) -> Any:
    def operator(self: ndarray) -> Any:
        return ufunc.of(ufunc_name)(self)

    return operator


for _name, _ufunc_name in _BINARY.items():
    setattr(ndarray, f"__{_name}__", _binary(_ufunc_name))
    setattr(ndarray, f"__r{_name}__", _binary(_ufunc_name, reflected=True))
    if _name not in ("divmod", "matmul"):  # CuPy has no in-place divmod or matmul
        setattr(ndarray, f"__i{_name}__", _binary(_ufunc_name, in_place=True))
for _name, _ufunc_name in _COMPARISONS.items():
    setattr(ndarray, f"__{_name}__", _binary(_ufunc_name))
for _name, _ufunc_name in _UNARY.items():
    setattr(ndarray, f"__{_name}__", _unary(_ufunc_name))


# -- methods: NumPy's, on the buffer; only those CuPy's ndarray has --------------------------

# Methods that change the array in place (return None).
_IN_PLACE = ("fill", "partition", "put", "sort")
_METHODS = (
    *_IN_PLACE,
    *("all", "any", "argmax", "argmin", "argpartition", "argsort", "astype", "byteswap"),
    *("choose", "clip", "compress", "conj", "conjugate", "copy", "cumprod", "cumsum"),
    *("diagonal", "dot", "flatten", "max", "mean", "min", "nonzero", "prod", "ravel"),
    *("repeat", "reshape", "round", "searchsorted", "squeeze", "std", "sum", "swapaxes"),
    *("take", "trace", "transpose", "var", "view"),
)


def _method(name: str) -> Any:
    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        function = getattr(self._array, name)
        return run(name, function, args, kwargs, inputs={id(self._array): self})

    method.__name__ = name
    return method


def _ptp(self: ndarray, *args: Any, **kwargs: Any) -> Any:
    return run("ptp", np.ptp, (self, *args), kwargs)


for _name in _METHODS:
    setattr(ndarray, _name, _method(_name))
ndarray.ptp = _ptp  # type: ignore[attr-defined]  # NumPy 2's ndarray lost ptp; CuPy's has it
