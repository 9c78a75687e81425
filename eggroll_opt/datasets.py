"""Data sets for examples and tests, read from files the user points to (never downloaded).

MNIST (LeCun, Cortes & Burges) in its standard gzipped IDX files::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

Pass the folder as ``directory`` or set the environment variable ``EGGROLL_OPT_MNIST``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

ENVIRONMENT_VARIABLE = "EGGROLL_OPT_MNIST"

# MD5 of the uncompressed files, as published with the data set.
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
}
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(data: bytes, name: str = "data") -> np.ndarray:
    """Parse an (uncompressed) IDX file: magic ``0 0 type ndim``, big-endian sizes, values.

    Raises:
        ValueError: if the header or the size does not match.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{name} is not an IDX file (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{name} has {len(data)} bytes, its header announces {expected}.")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_mnist(
    directory: str | os.PathLike[str] | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
    """Load MNIST: ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,), and the
    10,000 ``test_images`` / ``test_labels``.

    Args:
        directory: folder with the four gzipped IDX files; defaults to ``$EGGROLL_OPT_MNIST``.
        verify: check each file's MD5 against the published value.

    Raises:
        FileNotFoundError: naming the folder and every missing file.
        ValueError: for a corrupt file or an MD5 mismatch.
    """
    if directory is None:
        directory = os.environ.get(ENVIRONMENT_VARIABLE)
        if not directory:
            raise FileNotFoundError(
                f"MNIST folder not given: pass `directory=` (--mnist-dir in the examples) or set "
                f"{ENVIRONMENT_VARIABLE} to a folder holding "
                f"{', '.join(f for f, _ in MNIST_FILES.values())}."
            )
    folder = Path(directory)
    missing = [f for f, _ in MNIST_FILES.values() if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"MNIST folder {str(folder)!r} lacks {', '.join(missing)}.")
    out = {}
    for key, (filename, md5) in MNIST_FILES.items():
        with gzip.open(folder / filename, "rb") as file:
            data = file.read()
        if verify and hashlib.md5(data).hexdigest() != md5:
            raise ValueError(f"{filename} in {str(folder)!r} is corrupt (MD5 mismatch).")
        out[key] = read_idx(data, filename)
    return out
