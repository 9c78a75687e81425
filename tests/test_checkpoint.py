"""Checkpoints: exact resume, format checks, no pickle, atomic writes, clear read errors."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import eggroll_opt as eo
from eggroll_opt import _checkpoint


def _make(cls, backend="numpy", **kwargs):
    rng = np.random.default_rng(0)
    params = {
        "layer": {
            "w": rng.standard_normal((6, 5)).astype(np.float32),
            "b": np.zeros(6, np.float32),
        },
        "frozen": np.ones(2),
    }
    settings = dict(
        popsize=8,
        sigma=0.1,
        learning_rate=0.05,
        seed=11,
        backend=backend,
        noise_kinds={"frozen": "frozen"},
        noise_reuse=3,
    )
    settings.update(kwargs)
    return cls(params, **settings)


def _fitness(pop):
    return [float(np.sum((m.params()["layer"]["w"] - 0.5) ** 2)) for m in pop]


def _run(es, generations):
    for _ in range(generations):
        es.tell(_fitness(es.ask()))


@pytest.mark.parametrize("cls", [eo.Eggroll, eo.OpenES])
@pytest.mark.parametrize("optimizer", ["adam", "momentum", "sgd"])
def test_resume_is_bit_identical(tmp_path, cls, optimizer):
    straight = _make(cls, optimizer=optimizer)
    _run(straight, 24)
    first = _make(cls, optimizer=optimizer)
    _run(first, 10)
    first.ask()  # a pending population is not part of the checkpoint
    first.save(tmp_path / "run.ckpt")
    resumed = cls.load(tmp_path / "run.ckpt", backend="numpy")
    assert resumed.generation == 10 and resumed.seed == 11
    _run(resumed, 14)
    for name in ("w", "b"):
        np.testing.assert_array_equal(resumed.params["layer"][name], straight.params["layer"][name])
    assert resumed.params["layer"]["w"].dtype == np.float32
    assert resumed.noise_kinds == straight.noise_kinds


def test_restore_into_a_strategy_and_custom_callables(tmp_path):
    shaping = eo.shaping.group_zscore(4)
    es = _make(eo.Eggroll, fitness_shaping=shaping)
    _run(es, 3)
    es.save(tmp_path / "c.ckpt")
    with pytest.raises(ValueError, match="pass it again as `fitness_shaping=`"):
        eo.Eggroll.load(tmp_path / "c.ckpt")
    loaded = eo.Eggroll.load(tmp_path / "c.ckpt", fitness_shaping=shaping, backend="numpy")
    other = _make(eo.Eggroll, fitness_shaping=shaping)
    other.restore(tmp_path / "c.ckpt")
    _run(es, 2)
    _run(loaded, 2)
    _run(other, 2)
    np.testing.assert_array_equal(loaded.params["layer"]["w"], es.params["layer"]["w"])
    np.testing.assert_array_equal(other.params["layer"]["w"], es.params["layer"]["w"])


def test_custom_optimizer_must_be_given_again(tmp_path):
    es = _make(eo.Eggroll, optimizer=eo.optim.momentum(0.01, nesterov=True))
    _run(es, 2)
    es.save(tmp_path / "o.ckpt")
    with pytest.raises(ValueError, match="pass it again as `optimizer=`"):
        eo.Eggroll.load(tmp_path / "o.ckpt")
    loaded = eo.Eggroll.load(
        tmp_path / "o.ckpt", optimizer=eo.optim.momentum(0.01, nesterov=True), backend="numpy"
    )
    assert loaded.generation == 2


def test_restore_refuses_other_leaves_or_seed(tmp_path):
    es = _make(eo.Eggroll)
    es.save(tmp_path / "a.ckpt")
    different = eo.Eggroll(
        {"w": np.zeros((6, 5), np.float32)},
        popsize=8,
        sigma=0.1,
        learning_rate=0.1,
        seed=11,
        backend="numpy",
    )
    with pytest.raises(ValueError, match="has other leaves than this strategy"):
        different.restore(tmp_path / "a.ckpt")
    other_seed = _make(eo.Eggroll, seed=12)
    with pytest.raises(ValueError, match="has seed 11, this strategy 12"):
        other_seed.restore(tmp_path / "a.ckpt")


def test_load_refuses_other_versions_classes_and_files(tmp_path):
    es = _make(eo.Eggroll)
    es.save(tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="holds a Eggroll strategy, not a OpenES"):
        eo.OpenES.load(tmp_path / "a.ckpt")
    with np.load(tmp_path / "a.ckpt") as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(str(arrays["__meta__"]))
    meta["version"] = 99
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(tmp_path / "v99.ckpt", "wb") as file:
        np.savez(file, **arrays)
    with pytest.raises(ValueError, match="format version 99; this eggroll_opt reads version 1"):
        eo.Eggroll.load(tmp_path / "v99.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not an eggroll_opt checkpoint"):
        eo.Eggroll.load(tmp_path / "junk.ckpt")
    with open(tmp_path / "other.npz", "wb") as file:
        np.savez(file, x=np.zeros(2))
    with pytest.raises(ValueError, match="no metadata"):
        eo.Eggroll.load(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        eo.Eggroll.load(tmp_path / "missing.ckpt")


def test_checkpoint_is_plain_arrays_written_atomically(tmp_path, monkeypatch):
    es = _make(eo.Eggroll)
    _run(es, 2)
    path = tmp_path / "a.ckpt"
    es.save(path)
    with np.load(path, allow_pickle=False) as archive:  # loadable without pickle
        assert "param:layer/w" in archive.files
        meta = json.loads(str(archive["__meta__"]))
    assert meta["generation"] == 2 and meta["config"]["seed"] == 11
    before = path.read_bytes()

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(_checkpoint.np, "savez", broken_savez)
    _run(es, 1)
    with pytest.raises(OSError, match="disk full"):
        es.save(path)
    assert path.read_bytes() == before  # the old checkpoint survives a failed write
    assert os.listdir(tmp_path) == ["a.ckpt"]  # and no temporary file is left behind


def test_write_errors_name_the_users_path(tmp_path, monkeypatch):
    es = _make(eo.Eggroll)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_checkpoint.np, "savez", full_disk)
    path = tmp_path / "a.ckpt"
    with pytest.raises(
        OSError, match=re.escape(f"`path` {str(path)!r}: No space left on device")
    ) as info:
        es.save(path)
    assert info.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_folder_or_onto_a_folder(tmp_path):
    es = _make(eo.Eggroll)
    missing = tmp_path / "nowhere" / "a.ckpt"
    with pytest.raises(
        FileNotFoundError, match=r"`path` .*nowhere.*a\.ckpt'.*does not exist"
    ) as info:
        es.save(missing)
    assert ".tmp" not in str(info.value)  # the user's path, not the temporary file's
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match=r"`path` .*runs' is a folder; save needs a file name"):
        es.save(tmp_path / "runs")


def _only_metadata(good, folder):
    (folder / "good.ckpt").write_bytes(good)
    with np.load(folder / "good.ckpt") as archive, open(folder / "meta.npz", "wb") as file:
        np.savez(file, __meta__=archive["__meta__"])
    return (folder / "meta.npz").read_bytes()


def _npy(good, folder):
    with open(folder / "array.npy", "wb") as file:
        np.save(file, np.zeros(3))
    return (folder / "array.npy").read_bytes()


def _corrupted(good, folder):
    damaged = bytearray(good)
    damaged[120:180] = bytes(60)  # inside the first member's data: its CRC fails
    return bytes(damaged)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda good, folder: good[: len(good) // 2], "is truncated or damaged: not a complete"),
        (lambda good, folder: good[:-10], "is truncated or damaged: not a complete .npz"),
        (lambda good, folder: b"", r"is empty \(0 bytes\)"),
        (_npy, r"is a single NumPy array \(.npy\), not an eggroll_opt checkpoint"),
        (
            lambda good, folder: np.random.default_rng(0).bytes(1000),
            r"is not an eggroll_opt checkpoint: not an .npz \(zip\) archive",
        ),
        (_corrupted, "is damaged: its array '__meta__' cannot be read"),
        (_only_metadata, "is damaged: it lacks the array 'param:"),
    ],
    ids=["truncated", "tail-cut", "empty", "npy", "random", "bad-crc", "no-params"],
)
def test_load_of_a_damaged_or_foreign_file_says_what_is_wrong(tmp_path, content, reason):
    es = _make(eo.Eggroll)
    es.save(tmp_path / "run.ckpt")
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content((tmp_path / "run.ckpt").read_bytes(), tmp_path))
    with pytest.raises(ValueError, match="^" + re.escape(f"`path` {str(path)!r} ") + reason):
        eo.Eggroll.load(path)
    with pytest.raises(ValueError, match=reason):
        es.restore(path)


def test_load_of_a_folder_or_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"`path` .* is a folder, not a checkpoint file"):
        eo.Eggroll.load(tmp_path)
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"no checkpoint at `path` {str(missing)!r}: no such")
    ):
        eo.Eggroll.load(missing)


def _temporaries(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


_STALLED_SAVE = """
import sys, time
import numpy as np
import eggroll_opt as eo

def stalled_savez(file, **arrays):  # a save that is killed while writing
    file.write(b"half an archive")
    file.flush()
    print("writing", flush=True)
    time.sleep(60)

np.savez = stalled_savez
eo.Eggroll({"w": np.zeros(3)}, popsize=4, sigma=0.1, learning_rate=0.1, seed=0).save(sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="writers are told live by their process id on POSIX")
def test_killed_saves_leave_no_temporary_files(tmp_path):
    path = tmp_path / "run.ckpt"
    es = _make(eo.Eggroll)
    es.save(path)
    writers, files = [], []
    try:
        for _ in range(2):  # one save to be killed, one still writing
            writers.append(
                subprocess.Popen(
                    [sys.executable, "-c", _STALLED_SAVE, str(path)],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
            assert writers[-1].stdout.readline() == "writing\n"
            (new,) = set(_temporaries(tmp_path)) - set(files)
            files.append(new)
        live_file = files[1]
        writers[0].send_signal(signal.SIGKILL)
        writers[0].wait()
        es.save(path)  # removes the killed save's file, keeps the one still being written
        assert _temporaries(tmp_path) == [live_file]
        eo.Eggroll.load(path)
        assert _temporaries(tmp_path) == [live_file]
        writers[1].send_signal(signal.SIGKILL)
        writers[1].wait()
        eo.Eggroll.load(path)  # a load removes it too
        assert _temporaries(tmp_path) == []
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
            writer.stdout.close()


def test_which_temporary_files_count_as_stale(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    mine = _checkpoint._temporary_prefix(str(path))
    prefix = ".run.ckpt~"
    files = {
        "mine": f"{mine}abc.tmp",  # this process, but no save of it is writing: a leftover
        "other_host_old": f"{prefix}elsewhere~123~abc.tmp",
        "other_host_new": f"{prefix}elsewhere~124~abc.tmp",
        "other_target": f".run.ckpt~x~{mine[len(prefix) :]}abc.tmp",  # of 'run.ckpt~x'
        "unrelated": "run.ckpt.tmp",
    }
    for name in files.values():
        (tmp_path / name).write_bytes(b"partial")
    old = time.time() - _checkpoint.STALE_AFTER - 60
    os.utime(tmp_path / files["other_host_old"], (old, old))
    seen_while_writing = []
    real_savez = np.savez

    def savez_and_look(file, **arrays):
        real_savez(file, **arrays)
        ours = [name for name in os.listdir(tmp_path) if name.startswith(mine)]
        _checkpoint.remove_stale_temporaries(path)  # e.g. a load from another thread
        seen_while_writing.extend(name for name in ours if (tmp_path / name).exists())

    monkeypatch.setattr(_checkpoint.np, "savez", savez_and_look)
    _make(eo.Eggroll).save(path)
    assert len(seen_while_writing) == 1  # the file being written survived the cleanup
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["run.ckpt", files["other_host_new"], files["other_target"], files["unrelated"]]
    )


def test_a_stale_file_that_cannot_be_removed_is_reported(tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    stale = tmp_path / f"{_checkpoint._temporary_prefix(str(path))}abc.tmp"
    stale.write_bytes(b"partial")
    real_unlink = os.unlink

    def refuse_stale(name):
        if os.fspath(name) == str(stale):
            raise PermissionError(errno.EACCES, "Permission denied", name)
        real_unlink(name)

    monkeypatch.setattr(_checkpoint.os, "unlink", refuse_stale)
    with pytest.warns(RuntimeWarning, match=f"could not remove {re.escape(repr(str(stale)))}"):
        _make(eo.Eggroll).save(path)
    assert path.exists() and stale.exists()
