"""Shared fixtures: every numeric test runs on each available backend.

With ``EGGROLL_STRICT_CUPY=1`` in the environment, ``import cupy`` loads the strict CuPy
stand-in in ``tests/strict_cupy`` (here and in the processes the tests start), so the
``"cupy"`` backend and ``"auto"`` run on it without a GPU; see ``docs/gpu.md``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from eggroll_opt._backend import Backend, cupy_available, get_backend

STRICT_CUPY = os.environ.get("EGGROLL_STRICT_CUPY") == "1"
STANDIN_PATH = str(Path(__file__).resolve().parent / "strict_cupy")
if STRICT_CUPY:
    sys.path.insert(0, STANDIN_PATH)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        part for part in (STANDIN_PATH, os.environ.get("PYTHONPATH")) if part
    )


def pytest_report_header() -> str | None:
    """Say so when CuPy is the stand-in."""
    return f"cupy: the strict stand-in in {STANDIN_PATH}" if STRICT_CUPY else None


_BACKENDS = [
    "numpy",
    # The generic array-operation generator that CuPy uses, exercised on the CPU.
    "numpy-arrays",
    pytest.param("cupy", marks=pytest.mark.gpu),
]


def make_backend(name: str) -> Backend:
    if name == "numpy-arrays":
        return Backend("numpy", np, generator="arrays")
    if name == "cupy" and not cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    return get_backend(name)


@pytest.fixture(params=_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """A :class:`Backend` to pass as ``backend=``; CuPy only where a GPU is present."""
    return make_backend(request.param)


def host(value):
    """Host copy of an array of any backend."""
    from eggroll_opt import to_numpy

    return to_numpy(value)
