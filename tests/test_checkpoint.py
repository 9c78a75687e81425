"""Checkpoints: exact resume, format checks, no pickle, atomic writes."""

from __future__ import annotations

import json
import os

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
