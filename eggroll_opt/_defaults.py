"""Defaults of ``popsize``, ``sigma`` and ``learning_rate``, from the problem's own numbers.

Each is documented where it is used (:class:`~eggroll_opt.Eggroll`) and measured in
``docs/blackbox.md``; set them yourself for networks (popsize in the hundreds, σ from the
weights' scale).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._backend import to_numpy

__all__ = ["default_learning_rate", "default_popsize", "default_sigma"]


def default_popsize(dimension: int, *, even: bool = True) -> int:
    """``4 + ⌊3 ln d⌋`` members for ``d`` searched numbers (CMA-ES's rule), at least 8.

    Rounded up to even when ``even`` (mirrored sampling needs pairs).

    Example:
        >>> default_popsize(2), default_popsize(100), default_popsize(1024)
        (8, 18, 24)
    """
    size = max(8, 4 + math.floor(3 * math.log(max(int(dimension), 1))))
    return size + size % 2 if even else size


def default_sigma(params: Mapping[str, Any]) -> float:
    """0.1 times the root mean square of the searched initial parameters; 0.1 if all are zero.

    Example:
        >>> import numpy as np
        >>> default_sigma({"w": np.full((2, 2), 3.0)}), default_sigma({"w": np.zeros(3)})
        (0.30000000000000004, 0.1)
    """
    total, count = 0.0, 0
    for value in params.values():
        host = to_numpy(value)
        total += float((host.astype("float64") ** 2).sum())
        count += host.size
    rms = math.sqrt(total / count) if count else 0.0
    return 0.1 * rms if rms > 0 else 0.1


# With an adaptation the learning rate is in units of the search distribution: SGD moves the
# mean by learning_rate · σ · Σ u_i ε̂_i (Σ|u| = 1); Adam by about learning_rate · σ per entry.
_ADAPTIVE = {"momentum": 1.0, "adam": 0.3}


def default_learning_rate(
    optimizer: str, sigma: float, *, adaptive: bool, lowrank_fraction: float = 1.0
) -> float:
    """The learning rate used when none is given.

    * With a ``sigma_adaptation`` and ``"sgd"`` (the natural-gradient step): 3 when low-rank
      leaves hold at least half of the searched numbers, else 1 (dense noise with 3 needed 2.4
      times the evaluations on the sphere at d = 100 and did not reach 1e-8 in 256,000 at
      d = 1024; ``docs/blackbox.md``);
      1 for ``"momentum"``, 0.3 for ``"adam"``.
    * With fixed σ: ``σ/2`` for Adam and momentum (a step of about half the noise per entry, as
      in OpenAI's ES: σ = 0.02, learning rate 0.01) and ``σ²`` for SGD, whose gradient
      estimate grows as ``1/σ``.

    Example:
        >>> default_learning_rate("adam", 0.1, adaptive=False)
        0.05
        >>> default_learning_rate("sgd", 0.1, adaptive=True, lowrank_fraction=0.0)
        1.0
    """
    if adaptive:
        if optimizer == "sgd":
            return 3.0 if lowrank_fraction >= 0.5 else 1.0
        return _ADAPTIVE.get(optimizer, 1.0)
    return sigma**2 if optimizer == "sgd" else sigma / 2
