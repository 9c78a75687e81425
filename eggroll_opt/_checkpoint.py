"""The checkpoint format: one ``.npz`` archive, readable without pickle.

Contents (format version 1):

* ``__meta__``: a JSON string with ``format`` (``"eggroll_opt-checkpoint"``), ``version``,
  ``strategy`` (class name), ``config`` (the constructor's settings, seed included),
  ``generation``, ``leaves`` (path, noise kind, shape, dtype of each leaf, in order) and
  ``optimizer_keys`` (the key paths of the optimizer state's leaves);
* ``param:<path>``: each parameter leaf;
* ``opt:<i>``: the i-th leaf of the optimizer state (arrays, or 0-d int64 for counters);
* ``adapt:<i>``: the i-th leaf of the step-size adaptation's state (float64 arrays), listed in
  the metadata's ``adaptation_keys`` (absent, or null, when σ is fixed); the metadata's
  ``restarts`` counts restarts of the run (0 when absent).

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
    adaptation_state: dict[str, np.ndarray] | None = None
    restarts: int = 0


def save(
    path: str | os.PathLike[str],
    *,
    strategy: str,
    config: Mapping[str, Any],
    leaves: list[LeafSpec],
    params: Mapping[str, np.ndarray],
    optimizer_state: Any,
    generation: int,
    adaptation_state: Any = None,
    restarts: int = 0,
) -> None:
    """Write a checkpoint atomically (temporary file in the same folder, then rename)."""
    state_leaves = flatten_state(optimizer_state)
    adaptation_leaves = None if adaptation_state is None else flatten_state(adaptation_state)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "strategy": strategy,
        "config": dict(config),
        "generation": generation,
        "leaves": [[leaf.path, leaf.kind, list(leaf.shape), leaf.dtype] for leaf in leaves],
        "optimizer_keys": [key for key, _ in state_leaves],
        "adaptation_keys": None
        if adaptation_leaves is None
        else [key for key, _ in adaptation_leaves],
        "restarts": restarts,
    }
    arrays: dict[str, np.ndarray] = {"__meta__": np.array(json.dumps(meta))}
    arrays.update({f"param:{p}": np.asarray(v) for p, v in params.items()})
    arrays.update({f"opt:{i}": np.asarray(to_numpy(v)) for i, (_, v) in enumerate(state_leaves)})
    arrays.update(
        {f"adapt:{i}": np.asarray(to_numpy(v)) for i, (_, v) in enumerate(adaptation_leaves or [])}
    )
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
        keys = meta.get("adaptation_keys")
        adaptation = (
            None if keys is None else {key: archive[f"adapt:{i}"] for i, key in enumerate(keys)}
        )
    return CheckpointData(
        meta["config"],
        leaves,
        params,
        state,
        int(meta["generation"]),
        adaptation,
        int(meta.get("restarts", 0)),
    )


def restore_optimizer_state(
    template: Any, saved: Mapping[str, np.ndarray], backend: Backend | None
) -> Any:
    """Fill a state shaped like ``template`` with saved leaves, on ``backend`` (None: host).

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
        key: value
        if backend is None or (value.ndim == 0 and value.dtype.kind == "i")
        else backend.asarray(value)
        for key, value in saved.items()
    }
    return unflatten_state(template, on_device)
