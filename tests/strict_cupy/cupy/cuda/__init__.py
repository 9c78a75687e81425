"""``cupy.cuda``: one device, whose synchronisation is counted as a sync."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from .._core import audit
from . import runtime


def is_available() -> bool:
    """A device is always there."""
    return True


class _Context:
    """``with`` does nothing: there is one device and work on a stream runs at once."""

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        return None


class Device(_Context):
    """Device ``device`` (only 0 exists)."""

    def __init__(self, device: int | None = None) -> None:
        self.id = 0 if device is None else int(device)
        if self.id >= runtime.getDeviceCount():
            raise runtime.CUDARuntimeError("cudaErrorInvalidDevice: invalid device ordinal")

    def synchronize(self) -> None:
        """Wait for the device: counted as a sync."""
        audit.sync("Device.synchronize")

    def use(self) -> None:
        """Make this the current device (there is only one)."""

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class Stream(_Context):
    """A stream: work on it runs at once, so only its synchronisation is recorded."""

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False) -> None:
        self.null = null

    def synchronize(self) -> None:
        """Wait for the stream: counted as a sync."""
        audit.sync("Stream.synchronize")

    def use(self) -> Stream:
        return self


def get_current_stream() -> Stream:
    """The null stream."""
    return Stream(null=True)
