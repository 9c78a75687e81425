"""Keep a ``tell`` from committing a non-finite mean or optimizer state.

Fitness is arbitrary: raw values of 1e20, 1e308 or mixed ``±1e308`` reach the update with
``fitness_shaping="raw"``. Three things here make ``tell`` safe for them:

* **A safe scale for the sum.** :func:`split_exponent` factors the shaped weights into
  ``unit · 2**e`` with ``|unit| < 1``; the gradient is summed from ``unit`` and multiplied by
  ``2**e`` afterwards (``ldexp``, exact), so the sum cannot overflow on the way to a
  representable result. Typical weights (``|w| < 2**32``) are left as they are, bit for bit.
* **A safe norm.** :func:`leaf_norm` rescales a leaf whose plain norm overflows.
* **A rollback.** ``tell`` checks the new mean (and, where an overflow was possible, the new
  optimizer state) and raises :class:`NonFiniteStepError` instead of committing: the strategy
  stays as it was and the same ``tell`` can be retried with other fitness. Optimizers update
  their state in place (see :mod:`eggroll_opt.optim`), so the state is copied first, but only
  when :func:`may_overflow` says an overflow is possible: for the built-in optimizers that
  needs gradients or parameters within a factor ``2**20`` of ``sqrt`` of the float range, far
  beyond any normal run; a custom optimizer is always copied. The gradient's bound is known on
  the host before the step (every normal of the generator is below ``MAX_NORMAL``), so the
  check costs no read-back; the norms and the new mean's norms come back in one transfer
  (:func:`read_back`). The new mean is written into one buffer per dtype (:func:`packed_like`),
  so that one norm per dtype checks all its leaves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._backend import to_numpy

_KEEP_BELOW = 2.0**32  # weights below this are summed as they are
_MARGIN = 2.0**20  # how far from overflow the built-in optimizers are trusted


class NonFiniteStepError(ValueError):
    """``tell`` would have made the mean or the optimizer state non-finite; nothing changed."""


def split_exponent(weights: np.ndarray) -> tuple[np.ndarray, int]:
    """``(unit, e)`` with ``weights == ldexp(unit, e)`` exactly; ``e = 0`` for normal weights.

    Example:
        >>> unit, e = split_exponent(np.array([1e300, -3.0]))
        >>> e, bool(np.abs(unit).max() < 1), bool(np.ldexp(unit, e)[0] == 1e300)
        (997, True, True)
    """
    peak = float(np.abs(weights).max(initial=0.0))
    if peak < _KEEP_BELOW:
        return weights, 0
    exponent = int(np.frexp(peak)[1])
    return np.ldexp(weights, -exponent), exponent


def mean(values: np.ndarray) -> float:
    """The mean of finite float64 ``values`` without overflow in the sum (NaN if empty)."""
    if values.size == 0:
        return float("nan")
    unit, exponent = split_exponent(values)
    return float(np.ldexp(unit.mean(), exponent))


def leaf_norm(xp: Any, array: Any) -> float:
    """The Euclidean norm of ``array`` as a float, without overflow in the squares."""
    flat = array.reshape(-1)
    with np.errstate(over="ignore"):
        norm = float(xp.linalg.norm(flat))
    if math.isinf(norm):
        peak = peak_magnitude(xp, flat)
        if math.isfinite(peak) and peak > 0:
            norm = peak * float(xp.linalg.norm(flat / peak))
    return norm


def peak_magnitude(xp: Any, array: Any) -> float:
    """``max |array|`` (NaN if any entry is NaN), without allocating ``|array|``."""
    return max(float(xp.max(array)), -float(xp.min(array)))


def peak_magnitudes(xp: Any, arrays: Mapping[str, Any]) -> dict[str, float]:
    """:func:`peak_magnitude` of each array, read back to the host in one transfer."""
    if not arrays:
        return {}
    extremes = xp.stack(
        [xp.stack([xp.max(a), -xp.min(a)]).astype(xp.float64) for a in arrays.values()]
    )
    values = np.asarray(to_numpy(extremes)).max(axis=1)
    return {path: float(value) for path, value in zip(arrays, values, strict=True)}


def copy_tree(tree: Any) -> Any:
    """A copy of a nest of dicts/tuples/lists whose array leaves are copied (ints kept)."""
    if isinstance(tree, Mapping):
        return {key: copy_tree(value) for key, value in tree.items()}
    if isinstance(tree, tuple | list):
        copied = [copy_tree(value) for value in tree]
        return type(tree)(*copied) if hasattr(tree, "_fields") else type(tree)(copied)
    return tree.copy() if hasattr(tree, "copy") and hasattr(tree, "dtype") else tree


def packed_like(
    xp: Any, arrays: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, tuple[Any, list[str]]]]:
    """Fresh arrays shaped and typed like ``arrays``: views of one flat buffer per dtype.

    Returns ``(views, groups)``: ``views[path]`` is C-contiguous, uninitialised, and shares no
    memory with ``arrays``; ``groups[dtype name]`` is ``(buffer, paths)``, the flat buffer and
    the paths whose views lie in it. One reduction over a buffer covers all its leaves (the new
    mean's norms: one launch per dtype instead of one per leaf). A view keeps its whole buffer
    alive.

    Example:
        >>> views, groups = packed_like(np, {"w": np.ones((2, 3)), "b": np.ones(3)})
        >>> views["w"].shape, groups["float64"][0].shape, groups["float64"][1]
        ((2, 3), (9,), ['w', 'b'])
    """
    members: dict[str, list[str]] = {}
    for path, array in arrays.items():
        members.setdefault(np.dtype(array.dtype).name, []).append(path)
    views: dict[str, Any] = {}
    groups: dict[str, tuple[Any, list[str]]] = {}
    for name, paths in members.items():
        sizes = [math.prod(arrays[path].shape) for path in paths]
        buffer = xp.empty(sum(sizes), dtype=name)
        start = 0
        for path, size in zip(paths, sizes, strict=True):
            views[path] = buffer[start : start + size].reshape(arrays[path].shape)
            start += size
        groups[name] = (buffer, paths)
    return views, groups


def read_back(xp: Any, *groups: Mapping[str, Any]) -> tuple[dict[str, float], ...]:
    """Host floats of dicts of 0-d device values (or floats), in one device-to-host transfer."""
    keys = [(index, path) for index, group in enumerate(groups) for path in group]
    device = [groups[index][path] for index, path in keys if hasattr(groups[index][path], "dtype")]
    host = iter(np.asarray(to_numpy(xp.stack(device))).tolist() if device else [])
    out: list[dict[str, float]] = [{} for _ in groups]
    for index, path in keys:
        value = groups[index][path]
        out[index][path] = float(next(host)) if hasattr(value, "dtype") else float(value)
    return tuple(out)


def all_finite(xp: Any, tree: Any) -> bool:
    """Whether every array leaf of a nest of dicts/tuples/lists is finite (ints pass)."""
    if isinstance(tree, Mapping):
        return all(all_finite(xp, value) for value in tree.values())
    if isinstance(tree, tuple | list):
        return all(all_finite(xp, value) for value in tree)
    if hasattr(tree, "dtype") and np.dtype(tree.dtype).kind == "f":
        return bool(xp.isfinite(tree).all())
    return True


def may_overflow(
    gradient_bounds: Mapping[str, float],
    param_peaks: Mapping[str, float],
    dtypes: Mapping[str, Any],
    growth: float,
) -> bool:
    """Whether a built-in optimizer step could overflow for these gradients and parameters.

    ``gradient_bounds`` bound ``max |g|`` per leaf and ``param_peaks`` ``max |μ|``; ``growth``
    bounds how much the step can exceed the gradient (learning rate, weight decay, σ and noise
    scales). A leaf is at risk when ``growth · max |g|`` comes within ``2**20`` of ``sqrt`` of
    its dtype's largest value (Adam squares the gradient) or its mean within ``2**20`` of the
    largest value itself. Away from both, the squares in the norms cannot overflow either.
    """
    for path, bound in gradient_bounds.items():
        largest = float(np.finfo(dtypes[path]).max)
        if not bound * growth * _MARGIN < math.sqrt(largest):
            return True
        if not param_peaks.get(path, 0.0) * _MARGIN < largest:
            return True
    return False
