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

Writes are atomic: :func:`save` writes ``.<name>~<host>~<pid>~<random>.tmp`` beside the
target ``<name>`` and renames it over the target. A save killed before the rename leaves that
file behind; the next :func:`save` or :func:`load` of the same target removes it once its
writer is known to be gone:

* written by this process, and no save of this process is writing it now;
* written on this host by a process that no longer runs (POSIX only: a process id that a new
  process has taken keeps the file until that process ends too);
* otherwise (another host sharing the folder, or Windows): untouched for
  :data:`STALE_AFTER` seconds. A live save writes steadily, so only a writer stalled that
  long loses its file, and then its rename fails loudly, leaving the old checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from ._backend import to_numpy
from ._population import LeafSpec
from .optim import flatten_state, unflatten_state

if TYPE_CHECKING:
    from ._backend import Backend

FORMAT = "eggroll_opt-checkpoint"
VERSION = 1
STALE_AFTER = 3600.0
"""Seconds after which a temporary file whose writer cannot be checked counts as stale."""

_HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"
# Names of the temporary files this process's saves are writing now (names, not paths: a
# folder reached by another path then keeps a file rather than losing one).
_WRITING: set[str] = set()
_WRITING_LOCK = threading.Lock()
# What reading a damaged archive member raises (zipfile, zlib and numpy's .npy reader).
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


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
    """Write a checkpoint atomically (temporary file in the same folder, then rename).

    Stale temporary files of the same target, left by killed saves, are removed first.

    Raises:
        FileNotFoundError: if the folder of ``path`` does not exist.
        ValueError: if ``path`` is a folder.
        OSError: if writing fails (no space, no permission); it names ``path``, and the
            previous checkpoint at ``path``, if any, is left as it was.
    """
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"cannot save a checkpoint to `path` {target!r}: the folder {folder!r} does not exist."
        )
    if os.path.isdir(target):
        raise ValueError(
            f"`path` {target!r} is a folder; save needs a file name, such as "
            f"{os.path.join(target, 'run.ckpt')!r}."
        )
    remove_stale_temporaries(target)
    arrays = _arrays(
        strategy=strategy,
        config=config,
        leaves=leaves,
        params=params,
        optimizer_state=optimizer_state,
        generation=generation,
        adaptation_state=adaptation_state,
        restarts=restarts,
    )
    temporary = None
    try:
        with _WRITING_LOCK:
            handle, temporary = tempfile.mkstemp(
                prefix=_temporary_prefix(target), suffix=".tmp", dir=folder
            )
            _WRITING.add(os.path.basename(temporary))
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)  # type: ignore[arg-type]
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None:
            # The error would name the temporary file; name the user's path instead.
            raise OSError(
                error.errno, f"cannot write the checkpoint `path` {target!r}: {error.strerror}"
            ) from error
        raise
    finally:
        if temporary is not None:
            with _WRITING_LOCK:
                _WRITING.discard(os.path.basename(temporary))


def _arrays(
    *,
    strategy: str,
    config: Mapping[str, Any],
    leaves: list[LeafSpec],
    params: Mapping[str, np.ndarray],
    optimizer_state: Any,
    generation: int,
    adaptation_state: Any,
    restarts: int,
) -> dict[str, np.ndarray]:
    """The archive's members: the metadata, then parameters, optimizer and adaptation state."""
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
    return arrays


def _temporary_prefix(target: str) -> str:
    """``.<name>~<host>~<pid>~``: what :func:`save`'s temporary file for ``target`` starts with."""
    return f".{os.path.basename(target)}~{_HOST}~{os.getpid()}~"


def _temporary_writer(name: str, target_name: str) -> tuple[str, int] | None:
    """The (host, pid) that wrote ``name`` if it is a temporary file of ``target_name``.

    ``<name>`` may itself hold ``~``, but host and random part never do, so a file of
    another target (one with more or fewer ``~``) never matches.
    """
    prefix = f".{target_name}~"
    if not (name.startswith(prefix) and name.endswith(".tmp")):
        return None
    fields = name[len(prefix) : -len(".tmp")].split("~")
    if len(fields) != 3 or not fields[1].isdigit() or int(fields[1]) <= 0:
        return None
    return fields[0], int(fields[1])


def _process_runs(pid: int) -> bool | None:
    """Whether process ``pid`` runs on this host; None where that cannot be told."""
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    except OSError:
        return None
    return True


def _is_live(temporary: str, host: str, pid: int) -> bool:
    """Whether a save may still be writing ``temporary`` (see the module's rules)."""
    if host == _HOST:
        if pid == os.getpid():
            with _WRITING_LOCK:
                return os.path.basename(temporary) in _WRITING
        runs = _process_runs(pid)
        if runs is not None:
            return runs
    try:
        return time.time() - os.stat(temporary).st_mtime < STALE_AFTER
    except FileNotFoundError:
        return True  # gone already: nothing to remove


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files that killed saves of ``path`` left; return their paths.

    A file that cannot be removed (no permission) is reported with a warning and kept.
    """
    folder, target_name = os.path.split(os.path.abspath(os.fspath(path)))
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        writer = _temporary_writer(name, target_name)
        if writer is None:
            continue
        temporary = os.path.join(folder, name)
        if _is_live(temporary, *writer):
            continue
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            continue  # another save or load removed it meanwhile
        except OSError as error:
            warnings.warn(
                f"could not remove {temporary!r}, left by an interrupted save of "
                f"{os.fspath(path)!r}: {error}",
                RuntimeWarning,
                stacklevel=4,  # the caller of Eggroll.save or Eggroll.load
            )
            continue
        removed.append(temporary)
    return removed


def load(path: str | os.PathLike[str], *, strategy: str) -> CheckpointData:
    """Read and check a checkpoint written by :func:`save` for class ``strategy``.

    Stale temporary files of the same target, left by killed saves, are removed first.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if ``path`` is a folder, empty, truncated or otherwise damaged, not such a
            checkpoint (another file type, another ``.npz``), has another format version, or
            was written by another strategy class. The message names ``path``.
        OSError: if the file cannot be read (no permission).
    """
    name = os.fspath(path)
    removed = remove_stale_temporaries(name)
    _check_is_file(name, removed)
    with open(name, "rb") as file, _open_archive(file, name) as archive:
        meta = _metadata(archive, name)
        if meta["strategy"] != strategy:
            raise ValueError(
                f"checkpoint {name!r} holds a {meta['strategy']} strategy, not a {strategy}; "
                f"use {meta['strategy']}.load."
            )
        try:
            leaves = [
                LeafSpec(p, kind, tuple(shape), dtype) for p, kind, shape, dtype in meta["leaves"]
            ]
            optimizer_keys = list(meta["optimizer_keys"])
            adaptation_keys = meta.get("adaptation_keys")
            generation = int(meta["generation"])
            restarts = int(meta.get("restarts", 0))
            config = dict(meta["config"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"`path` {name!r} is damaged: its metadata is incomplete ({error!r})."
            ) from None
        params = {leaf.path: _member(archive, f"param:{leaf.path}", name) for leaf in leaves}
        for leaf in leaves:
            found = params[leaf.path]
            if found.shape != leaf.shape or found.dtype != np.dtype(leaf.dtype):
                raise ValueError(
                    f"`path` {name!r} is damaged: parameter {leaf.path!r} is "
                    f"{found.dtype}{list(found.shape)}, its metadata says "
                    f"{leaf.dtype}{list(leaf.shape)}."
                )
        state = {key: _member(archive, f"opt:{i}", name) for i, key in enumerate(optimizer_keys)}
        adaptation = (
            None
            if adaptation_keys is None
            else {
                key: _member(archive, f"adapt:{i}", name) for i, key in enumerate(adaptation_keys)
            }
        )
    return CheckpointData(config, leaves, params, state, generation, adaptation, restarts)


def _check_is_file(name: str, removed: list[str]) -> None:
    """Raise FileNotFoundError or ValueError unless ``name`` is a file."""
    if not os.path.exists(name):
        interrupted = (
            f"; an interrupted save had left {len(removed)} temporary file(s) for it, now removed"
            if removed
            else ""
        )
        raise FileNotFoundError(f"no checkpoint at `path` {name!r}: no such file{interrupted}.")
    if os.path.isdir(name):
        raise ValueError(f"`path` {name!r} is a folder, not a checkpoint file.")


def _open_archive(file: BinaryIO, name: str) -> Any:
    """Open ``file`` as an ``.npz`` archive (without pickle), or say what it is instead.

    numpy leaves the file open when the archive is damaged, so the caller owns ``file``.
    """
    start = file.read(8)
    file.seek(0)
    if not start:
        raise ValueError(f"`path` {name!r} is empty (0 bytes), not an eggroll_opt checkpoint.")
    if start.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"`path` {name!r} is a single NumPy array (.npy), not an eggroll_opt checkpoint "
            "(an .npz archive written by save)."
        )
    if not start.startswith(b"PK"):
        raise ValueError(
            f"`path` {name!r} is not an eggroll_opt checkpoint: not an .npz (zip) archive, "
            f"it starts with {start!r}."
        )
    try:
        return np.load(file, allow_pickle=False)
    except _READ_ERRORS as error:
        raise ValueError(
            f"`path` {name!r} is truncated or damaged: not a complete .npz archive ({error})."
        ) from None


def _member(archive: Any, key: str, name: str) -> np.ndarray:
    """Read the array ``key``; a missing or damaged member raises ValueError naming ``name``."""
    if key not in archive.files:
        raise ValueError(f"`path` {name!r} is damaged: it lacks the array {key!r}.")
    try:
        return np.asarray(archive[key])
    except _READ_ERRORS as error:
        raise ValueError(
            f"`path` {name!r} is damaged: its array {key!r} cannot be read ({error})."
        ) from None


def _metadata(archive: Any, name: str) -> dict[str, Any]:
    """The checked metadata: an eggroll_opt checkpoint of this format version."""
    if "__meta__" not in archive.files:
        raise ValueError(f"`path` {name!r} is not an eggroll_opt checkpoint (no metadata).")
    try:
        meta = json.loads(str(_member(archive, "__meta__", name)))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"`path` {name!r} is damaged: its metadata is not JSON ({error})."
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"`path` {name!r} is not an eggroll_opt checkpoint.")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"checkpoint {name!r} has format version {meta.get('version')!r}; this "
            f"eggroll_opt reads version {VERSION}."
        )
    if "strategy" not in meta:
        raise ValueError(f"`path` {name!r} is damaged: its metadata names no strategy.")
    return meta


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
