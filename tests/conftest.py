"""Shared fixtures: every numeric test runs on each available backend."""

from __future__ import annotations

import numpy as np
import pytest

from eggroll_opt._backend import Backend, cupy_available, get_backend

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
