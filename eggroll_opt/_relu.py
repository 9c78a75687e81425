"""ReLU for NumPy arrays, at close to the speed of a copy.

NumPy's ``maximum(x, 0)`` compares each element with a scalar, and its loop for a scalar
operand is slower than its loop for two contiguous arrays.
Side by side on the 2-core project machine (``python -m benchmarks.cnn_profile --threads 1``,
two runs each, against the same command with ``_relu.ROW = 10**15``, which sends every array
to ``np.maximum(x, 0)``), the generation's ReLU row took 0.022-0.025 s against 0.035-0.037 s
and the whole forward 0.186-0.203 s against 0.216-0.233 s.

:func:`relu` takes the second loop: it compares the array's memory, as rows of :data:`ROW`
values, with one reused row of zeros. The values are those of ``maximum(x, 0)``,
bit for bit (NaN stays NaN, ``-0.0`` stays ``-0.0``), and the result has the memory layout of
``x``, so a view in another axis order (a convolution's output) stays one.
"""

from __future__ import annotations

import functools

import numpy as np

ROW = 2**14  # 64 KiB of float32 zeros: stays in the L1/L2 cache while the array streams by


@functools.cache
def _zeros(dtype: np.dtype, length: int) -> np.ndarray:
    zeros = np.zeros(length, dtype)
    zeros.flags.writeable = False  # shared by every call
    return zeros


def _memory_order(x: np.ndarray) -> list[int]:
    """The axes of ``x`` from the largest stride to the smallest."""
    return sorted(range(x.ndim), key=lambda axis: -abs(x.strides[axis]))


def relu(x: np.ndarray) -> np.ndarray:
    """``np.maximum(x, 0)`` for a floating-point NumPy array (see the module docstring)."""
    if x.dtype.kind != "f" or x.size < ROW:
        return np.maximum(x, 0)
    order = _memory_order(x)
    out = np.empty_like(x)  # the same memory order as x (order="K")
    source, target = x.transpose(order), out.transpose(order)
    if not (source.flags.c_contiguous and target.flags.c_contiguous):
        return np.maximum(x, 0)  # x is not one block of memory (a slice, negative strides)
    source, target = source.reshape(-1), target.reshape(-1)
    whole = source.size - source.size % ROW
    rows = (whole // ROW, ROW)
    zeros = _zeros(x.dtype, ROW)
    np.maximum(source[:whole].reshape(rows), zeros, out=target[:whole].reshape(rows))
    np.maximum(source[whole:], 0, out=target[whole:])
    return out
