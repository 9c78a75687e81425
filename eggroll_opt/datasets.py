"""Data sets for examples and tests: read from a folder, or downloaded into one on request.

MNIST (LeCun, Cortes & Burges) in its standard gzipped IDX files::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz
    t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz

Pass the folder as ``directory`` or set the environment variable ``EGGROLL_OPT_MNIST``. Nothing is
downloaded unless asked: ``load_mnist(download=True)`` fetches the missing files from
``MNIST_MIRRORS`` into the folder (by default ``~/.cache/eggroll_opt/mnist``). A download goes to
``<file>.part``, continues where an interrupted one stopped (an HTTP Range request), is checked
against the published MD5 and only then renamed into place, so the folder never holds a partial
or corrupt data file.

Example:
    >>> from eggroll_opt.datasets import load_mnist
    >>> data = load_mnist(download=True, cache_dir="data/mnist")  # doctest: +SKIP
    >>> data["train_images"].shape  # doctest: +SKIP
    (60000, 28, 28)
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

ENVIRONMENT_VARIABLE = "EGGROLL_OPT_MNIST"

# MD5 of the uncompressed files, as published with the data set. The check is on the contents,
# not on the gzip wrapper, so a mirror that recompressed the files is accepted too. (The archives
# on the mirrors below have MD5s f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d... in this order.)
MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637"),
}
# Public copies of the four files, tried in this order: PyTorch's (torchvision's first mirror)
# and Google's (TensorFlow's).
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
# Requests per mirror and file; a further request is made only after one that brought bytes.
DOWNLOAD_ATTEMPTS = 5
_CHUNK = 1 << 16
_IDX_TYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


class DownloadError(OSError):
    """No mirror gave a file whose contents have the published MD5."""


class _BadResponse(Exception):
    """The server's answer cannot be used (a short body, a wrong Content-Range)."""


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


def default_cache_dir() -> Path:
    """The folder ``load_mnist(download=True)`` uses when given none:
    ``$XDG_CACHE_HOME/eggroll_opt/mnist``, else ``~/.cache/eggroll_opt/mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "eggroll_opt" / "mnist"


def load_mnist(
    directory: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    timeout: float = 60.0,
) -> dict[str, np.ndarray]:
    """Load MNIST: ``train_images`` (60000, 28, 28) uint8, ``train_labels`` (60000,), and the
    10,000 ``test_images`` / ``test_labels``.

    Args:
        directory: folder with the four gzipped IDX files; defaults to ``cache_dir``, then to
            ``$EGGROLL_OPT_MNIST``, then (with ``download=True``) to :func:`default_cache_dir`.
        verify: check each file's contents against the published MD5. Downloads are always
            checked.
        download: fetch the files that are missing, or that fail the check, into the folder.
        cache_dir: the same folder under the name torchvision and Keras users know; pass
            ``directory`` or ``cache_dir``, not two different folders.
        mirrors: base URLs tried in turn for each file (``<mirror>/<file name>``).
        timeout: seconds to wait for a mirror to connect or to send more bytes.

    Raises:
        FileNotFoundError: naming the folder and every missing file (without ``download``).
        ValueError: for a corrupt file or an MD5 mismatch (without ``download``), or for
            arguments out of range.
        TypeError: if ``mirrors`` is a single string.
        DownloadError: naming the file and, for each mirror tried, why it failed; the part
            already received stays in ``<file>.part`` and the next call continues it.
    """
    if isinstance(mirrors, str | bytes):
        raise TypeError(f"`mirrors` must be a sequence of base URLs, got the string {mirrors!r}.")
    if download and not mirrors:
        raise ValueError(f"`mirrors` must name at least one base URL, got {mirrors!r}.")
    if not timeout > 0:
        raise ValueError(f"`timeout` must be positive (seconds), got {timeout!r}.")
    folder = _mnist_folder(directory, cache_dir, download)
    if download:
        folder.mkdir(parents=True, exist_ok=True)
    else:
        missing = [f for f, _ in MNIST_FILES.values() if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"MNIST folder {str(folder)!r} lacks {', '.join(missing)} "
                f"(`download=True` fetches them)."
            )
    out = {}
    for key, (filename, md5) in MNIST_FILES.items():
        path = folder / filename
        data, problem = None, "is missing"
        if path.is_file():
            data = _decompressed(path)
            if data is None:
                problem = "is corrupt (not a readable gzip file)"
            elif verify and hashlib.md5(data).hexdigest() != md5:
                data, problem = None, "is corrupt (MD5 mismatch)"
        if data is None:
            if not download:
                raise ValueError(
                    f"{filename} in {str(folder)!r} {problem}; `download=True` fetches it again."
                )
            data = _download(filename, md5, folder, mirrors, timeout)
        out[key] = read_idx(data, filename)
    return out


def _mnist_folder(
    directory: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    download: bool,
) -> Path:
    if directory is not None and cache_dir is not None and Path(directory) != Path(cache_dir):
        raise ValueError(
            f"`directory` ({os.fspath(directory)!r}) and `cache_dir` ({os.fspath(cache_dir)!r}) "
            f"name different folders; pass one of them."
        )
    chosen = directory if directory is not None else cache_dir
    if chosen is None:
        chosen = os.environ.get(ENVIRONMENT_VARIABLE) or None
    if chosen is not None:
        return Path(chosen)
    if download:
        return default_cache_dir()
    raise FileNotFoundError(
        f"MNIST folder not given: pass `directory=` (--mnist-dir in the examples), set "
        f"{ENVIRONMENT_VARIABLE} to a folder holding "
        f"{', '.join(f for f, _ in MNIST_FILES.values())}, or pass `download=True`."
    )


def _decompressed(path: Path) -> bytes | None:
    """The contents of a gzip file, or None if it is not a complete, readable one."""
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError, zlib.error):
        return None


def _download(
    filename: str, md5: str, folder: Path, mirrors: Sequence[str], timeout: float
) -> bytes:
    """Fetch ``filename`` into ``folder`` from the first mirror that gives the right contents.

    Returns:
        The checked, uncompressed contents (the file is in place under its own name).
    """
    part = folder / f"{filename}.part"
    failures: list[str] = []
    for mirror in mirrors:
        url = mirror if mirror.endswith("/") else f"{mirror}/"
        url += filename
        data, reason = _download_from(url, part, md5, timeout)
        if data is not None:
            os.replace(part, folder / filename)
            if failures:
                warnings.warn(
                    f"{filename}: downloaded from {url} after " + "; ".join(failures) + ".",
                    stacklevel=3,
                )
            return data
        failures.append(f"{url} failed ({reason})")
    kept = f"; {part.stat().st_size} bytes kept in {str(part)!r}" if part.exists() else ""
    raise DownloadError(
        f"Could not download {filename}: " + "; ".join(failures) + f"{kept}. Pass other "
        f"`mirrors=`, or place the file in {str(folder)!r} yourself."
    )


def _download_from(url: str, part: Path, md5: str, timeout: float) -> tuple[bytes | None, str]:
    """Complete ``part`` from ``url`` and check it.

    Returns:
        The uncompressed contents and ``""``, or None and why this mirror failed. A corrupt
        ``part`` is removed; an incomplete one is kept for the next mirror or call.
    """
    reason = "no attempt"
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        start = part.stat().st_size if part.exists() else 0
        try:
            with open(part, "ab") as file:
                _fetch(url, file, start, timeout)
        except urllib.error.HTTPError as error:
            if error.code == 416 and start > 0:  # the part is not a prefix of this file
                part.unlink()
                reason = f"HTTP 416 for the {start} bytes kept"
                continue
            if start == 0:
                part.unlink()  # opened (empty) for nothing
            return None, f"HTTP {error.code} {error.reason}"
        except (OSError, http.client.HTTPException, _BadResponse) as error:
            reason = (
                str(error)
                if isinstance(error, _BadResponse)
                else f"{type(error).__name__}: {error}"
            )
            size = part.stat().st_size if part.exists() else 0
            if size == 0:
                part.unlink(missing_ok=True)
            if size <= start:
                return None, reason  # no progress: another try would not help
            reason += f" (after {attempt} requests)"
            continue
        data = _decompressed(part)
        if data is not None and hashlib.md5(data).hexdigest() == md5:
            return data, ""
        part.unlink()
        if start == 0:
            return (
                None,
                "corrupt file: MD5 mismatch" if data is not None else "not a complete gzip file",
            )
        reason = "corrupt after resuming"  # the kept part came from another copy: start over
    return None, reason


def _fetch(url: str, file: BinaryIO, start: int, timeout: float) -> None:
    """Append the rest of ``url`` to ``file`` (opened for appending, ``start`` bytes long),
    asking for it with a Range request when ``start > 0``; a server that answers with the whole
    file (200) starts it over.

    Raises:
        OSError, http.client.HTTPException: network failures (urllib's).
        _BadResponse: a body shorter than announced, or an unexpected Content-Range.
    """
    headers = {"Range": f"bytes={start}-"} if start else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start}-"):
                raise _BadResponse(f"asked for bytes {start}-, got Content-Range {content_range!r}")
        else:
            file.truncate(0)
            start = 0
        length = response.headers.get("Content-Length")
        received = 0
        try:
            while chunk := response.read(_CHUNK):
                file.write(chunk)
                received += len(chunk)
        finally:
            file.flush()
            os.fsync(file.fileno())
        # urllib's read(n) returns b"" when the connection closes early: compare the count.
        if length is not None and received != int(length):
            raise _BadResponse(
                f"connection closed after {start + received} of {start + int(length)} bytes"
            )
