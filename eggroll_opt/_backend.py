"""Choice of array backend: NumPy on the CPU, CuPy on an NVIDIA GPU.

CuPy is detected without importing it at module import time. A :class:`Backend` carries the
array namespace ``xp`` and the few operations whose implementation differs between the two
libraries; everything else in the package is written once against ``xp``.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np

BackendName = Literal["auto", "numpy", "cupy"]
_NAMES = ("auto", "numpy", "cupy")


@dataclass(frozen=True)
class Backend:
    """An array namespace and how to move arrays in and out of it.

    Attributes:
        name: ``"numpy"`` or ``"cupy"``.
        xp: the array module.
        generator: how Philox bits are made (by default the best one for ``xp``): ``"numpy"``
            (``numpy.random.Philox``, C speed on the CPU), ``"kernel"`` (one fused CuPy kernel
            per leaf, see :mod:`eggroll_opt._philox_kernel`) or ``"arrays"`` (the same rounds as
            array operations, for any backend).
    """

    name: str
    xp: ModuleType
    generator: str = ""

    def __post_init__(self) -> None:
        if not self.generator:  # the default follows the array library
            object.__setattr__(self, "generator", _default_generator(self.name, self.xp))

    def asarray(self, value: Any, dtype: Any = None) -> Any:
        """Return ``value`` as an array of this backend, converting from the other once."""
        if self.name == "numpy":
            return np.asarray(to_numpy(value), dtype=dtype)
        return self.xp.asarray(value, dtype=dtype)

    def is_native(self, value: Any) -> bool:
        """Whether ``value`` is already an array of this backend."""
        return isinstance(value, self.xp.ndarray)


def is_cupy_array(value: Any) -> bool:
    """Whether ``value`` is a CuPy array, without importing CuPy."""
    return type(value).__module__.split(".")[0] == "cupy"


def to_numpy(value: Any) -> Any:
    """Return ``value`` as a NumPy array if it is a CuPy array, else unchanged.

    Use it (through :func:`eggroll_opt.to_numpy`) to get host arrays from a strategy that runs
    on the GPU.
    """
    if is_cupy_array(value):
        return value.get()
    return value


def host_values(values: Any) -> Any:
    """``values`` (an array, or a list/tuple of numbers or 0-d arrays) as a host NumPy array.

    A list of 0-d CuPy arrays (what ``xp.sum`` returns per member) is stacked on the device and
    copied to the host once, instead of failing (CuPy refuses implicit conversion) or syncing
    once per element.
    """
    if isinstance(values, list | tuple) and any(is_cupy_array(v) for v in values):
        cupy = importlib.import_module("cupy")
        return cupy.stack([cupy.asarray(v).reshape(()) for v in values]).get()
    return np.asarray(to_numpy(values))


def namespace_of(array: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) that ``array`` belongs to."""
    if is_cupy_array(array):
        return importlib.import_module("cupy")
    return np


def cupy_available() -> bool:
    """Whether CuPy imports and sees at least one GPU."""
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        cupy = importlib.import_module("cupy")
        return bool(cupy.cuda.runtime.getDeviceCount() > 0)
    except Exception:  # CuPy installed without a usable driver or device.
        return False


def get_backend(name: str | Backend = "auto") -> Backend:
    """Resolve ``backend=`` as given to a strategy.

    ``"auto"`` picks CuPy when it imports and sees a GPU, else NumPy.

    Raises:
        ValueError: for an unknown name, or ``"cupy"`` without CuPy or a GPU.
    """
    if isinstance(name, Backend):
        return name
    if name not in _NAMES:
        raise ValueError(f"`backend` must be one of {_NAMES}, got {name!r}.")
    if name == "numpy" or (name == "auto" and not cupy_available()):
        return Backend("numpy", np)
    if not cupy_available():
        raise ValueError(
            "`backend`='cupy' needs CuPy and an NVIDIA GPU, and none was found "
            "(pip install 'eggroll_opt[cuda]' on a machine with a GPU, or use backend='numpy')."
        )
    return Backend("cupy", importlib.import_module("cupy"))


def _default_generator(name: str, xp: ModuleType) -> str:
    """``"numpy"`` for NumPy; for CuPy the fused kernel, which needs NVRTC (``RawKernel``).

    A CuPy-like module without it, such as a CPU stand-in, runs the same Philox rounds as array
    operations.
    """
    if name == "numpy":
        return "numpy"
    return "kernel" if hasattr(xp, "RawKernel") else "arrays"


def read_only(array: Any) -> Any:
    """A read-only view of a NumPy array; a copy of a CuPy array (CuPy has no read-only flag)."""
    if is_cupy_array(array):
        return array.copy()
    view = array.view()
    view.flags.writeable = False
    return view
