"""The checkpoint format: one ``.npz`` archive, readable without pickle.

Contents (format version 1):

* ``__meta__``: a JSON string with ``format`` (``"eggroll_opt-checkpoint"``), ``version``,
  ``strategy`` (class name), ``config`` (the constructor's settings, seed included),
  ``generation``, ``leaves`` (path, noise kind, shape, dtype of each leaf, in order) and
  ``optimizer_keys`` (the key paths of the optimizer state's leaves);
* ``param:<path>``: each parameter leaf;
* ``opt:<i>``: the i-th leaf of the optimizer state (arrays, or 0-d int64 for counters).

Nothing else is needed to resume: the noise is a pure function of the seed and counters.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._backend import to_numpy
from ._population import LeafSpec
from .optim import flatten_state, unflatten_state

if TYPE_CHECKING:
    from ._backend import Backend

FORMAT = "eggroll_opt-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class CheckpointData:
    """The contents of a checkpoint, on the host."""

    config: dict[str, Any]
    leaves: list[LeafSpec]
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    generation: int


def save(
    path: str | os.PathLike[str],
    *,
    strategy: str,
    config: Mapping[str, Any],
    leaves: list[LeafSpec],
    params: Mapping[str, np.ndarray],
    optimizer_state: Any,
    generation: int,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then rename)."""
    state_leaves = flatten_state(optimizer_state)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "strategy": strategy,
        "config": dict(config),
        "generation": generation,
        "leaves": [[leaf.path, leaf.kind, list(leaf.shape), leaf.dtype] for leaf in leaves],
        "optimizer_keys": [key for key, _ in state_leaves],
    }
    arrays: dict[str, np.ndarray] = {"__meta__": np.array(json.dumps(meta))}
    arrays.update({f"param:{p}": np.asarray(v) for p, v in params.items()})
    arrays.update({f"opt:{i}": np.asarray(to_numpy(v)) for i, (_, v) in enumerate(state_leaves)})
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    handle, temporary = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load(path: str | os.PathLike[str], *, strategy: str) -> CheckpointData:
    """Read and check a checkpoint written by :func:`save` for class ``strategy``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not such a checkpoint, has another format version, or was
            written by another strategy class.
    """
    name = os.fspath(path)
    try:
        archive = np.load(name, allow_pickle=False)
    except (ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"`path` {name!r} is not an eggroll_opt checkpoint: {error}") from None
    with archive:
        if "__meta__" not in getattr(archive, "files", ()):
            raise ValueError(f"`path` {name!r} is not an eggroll_opt checkpoint (no metadata).")
        meta = json.loads(str(archive["__meta__"]))
        if meta.get("format") != FORMAT:
            raise ValueError(f"`path` {name!r} is not an eggroll_opt checkpoint.")
        if meta.get("version") != VERSION:
            raise ValueError(
                f"checkpoint {name!r} has format version {meta.get('version')!r}; this "
                f"eggroll_opt reads version {VERSION}."
            )
        if meta["strategy"] != strategy:
            raise ValueError(
                f"checkpoint {name!r} holds a {meta['strategy']} strategy, not a {strategy}; "
                f"use {meta['strategy']}.load."
            )
        leaves = [
            LeafSpec(p, kind, tuple(shape), dtype) for p, kind, shape, dtype in meta["leaves"]
        ]
        params = {leaf.path: archive[f"param:{leaf.path}"] for leaf in leaves}
        state = {key: archive[f"opt:{i}"] for i, key in enumerate(meta["optimizer_keys"])}
    return CheckpointData(meta["config"], leaves, params, state, int(meta["generation"]))


def restore_optimizer_state(
    template: Any, saved: Mapping[str, np.ndarray], backend: Backend
) -> Any:
    """Fill an optimizer state shaped like ``template`` with saved leaves, on ``backend``.

    Raises:
        ValueError: if the saved state does not match the optimizer's structure.
    """
    expected = [key for key, _ in flatten_state(template)]
    if sorted(expected) != sorted(saved):
        raise ValueError(
            "checkpoint optimizer state does not match this optimizer: "
            f"{sorted(saved)} vs {sorted(expected)}."
        )
    on_device = {
        key: value if value.ndim == 0 and value.dtype.kind == "i" else backend.asarray(value)
        for key, value in saved.items()
    }
    return unflatten_state(template, on_device)
