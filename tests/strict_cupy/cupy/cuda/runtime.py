"""``cupy.cuda.runtime``: the calls the library makes to find a device."""

from __future__ import annotations

from .._core import audit

is_hip = False


class CUDARuntimeError(RuntimeError):
    """An error of the CUDA runtime."""


def getDeviceCount() -> int:
    """One device."""
    return 1


def deviceSynchronize() -> None:
    """Wait for the device: counted as a sync."""
    audit.sync("deviceSynchronize")


def getDeviceProperties(device: int) -> dict[str, object]:
    """A few of the properties CUDA reports, naming the device as the stand-in."""
    return {"name": b"CuPy stand-in (CPU)", "totalGlobalMem": 0, "major": 0, "minor": 0}
