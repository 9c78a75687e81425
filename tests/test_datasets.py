"""The MNIST loader: IDX parsing, checks, and clear messages."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from eggroll_opt import datasets

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_read_idx_round_trip_and_errors():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(datasets.read_idx(_idx(array)), array)
    with pytest.raises(ValueError, match="bad magic number"):
        datasets.read_idx(b"\x01\x00\x08\x01")
    with pytest.raises(ValueError, match="header announces"):
        datasets.read_idx(_idx(array)[:-1])


def test_missing_folder_and_files_are_named(tmp_path, monkeypatch):
    monkeypatch.delenv(datasets.ENVIRONMENT_VARIABLE, raising=False)
    with pytest.raises(FileNotFoundError, match="EGGROLL_OPT_MNIST"):
        datasets.load_mnist()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as file:
        file.write(_idx(np.zeros((1, 2, 2))))
    with pytest.raises(FileNotFoundError, match=r"lacks train-labels-idx1-ubyte\.gz, t10k"):
        datasets.load_mnist(tmp_path)


def test_corrupt_files_are_refused(tmp_path):
    for filename, _ in datasets.MNIST_FILES.values():
        with gzip.open(tmp_path / filename, "wb") as file:
            file.write(_idx(np.zeros((2, 2, 2))))
    with pytest.raises(ValueError, match="MD5 mismatch"):
        datasets.load_mnist(tmp_path)
    assert datasets.load_mnist(tmp_path, verify=False)["test_labels"].shape == (2, 2, 2)


@pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository"
)
def test_real_mnist_loads_and_checks(monkeypatch):
    monkeypatch.setenv(datasets.ENVIRONMENT_VARIABLE, os.fspath(SHARED_MNIST))
    data = datasets.load_mnist()
    assert data["train_images"].shape == (60000, 28, 28)
    assert data["test_labels"].shape == (10000,)
    assert set(np.unique(data["train_labels"])) == set(range(10))
