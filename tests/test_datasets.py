"""The MNIST loader: IDX parsing, checks, and clear messages."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
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
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"t10k-images.* \(not a readable gzip file\)"):
        datasets.load_mnist(tmp_path, verify=False)


@pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository"
)
def test_real_mnist_loads_and_checks(monkeypatch):
    monkeypatch.setenv(datasets.ENVIRONMENT_VARIABLE, os.fspath(SHARED_MNIST))
    data = datasets.load_mnist()
    assert data["train_images"].shape == (60000, 28, 28)
    assert data["test_labels"].shape == (10000,)
    assert set(np.unique(data["train_labels"])) == set(range(10))


# Downloads, from mirrors served on 127.0.0.1 (never the real ones).


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves the files of `root`, with Range support unless `ranges` is off; the first `drops`
    answers for each file stop after `drop_after` body bytes; `corrupt` files get wrong contents.
    """

    root: Path
    ranges = True
    drops = 0
    drop_after = 0
    corrupt: frozenset[str] = frozenset()
    log: list[tuple[str, str | None]]
    served: dict[str, int]

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        self.log.append((name, self.headers.get("Range")))
        if not (self.root / name).is_file():
            self.send_error(404)
            return
        body = (self.root / name).read_bytes()
        if name in self.corrupt:
            body = gzip.compress(b"not the published contents")
        start = 0
        requested = self.headers.get("Range")
        if requested and self.ranges:
            start = int(requested.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.served[name] = self.served.get(name, 0) + 1
        if self.served[name] <= self.drops:
            self.wfile.write(body[start : start + self.drop_after])
            self.close_connection = True  # the client sees the body end early
            return
        self.wfile.write(body[start:])

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(root: Path, **behaviour: object) -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A mirror of `root` on 127.0.0.1: yields its base URL and the log of (file, Range) asked."""
    log: list[tuple[str, str | None]] = []
    handler = type("Handler", (_Mirror,), {"root": root, "log": log, "served": {}, **behaviour})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def small_mnist(tmp_path, monkeypatch):
    """A mirror folder with four small MNIST-shaped files, registered with their MD5s."""
    root = tmp_path / "mirror"
    root.mkdir()
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 28, 28)),
        "train_labels": rng.integers(0, 10, 6),
        "test_images": rng.integers(0, 256, (4, 28, 28)),
        "test_labels": rng.integers(0, 10, 4),
    }
    files = {}
    for key, (filename, _) in datasets.MNIST_FILES.items():
        contents = _idx(arrays[key])
        (root / filename).write_bytes(gzip.compress(contents, mtime=0))
        files[key] = (filename, hashlib.md5(contents).hexdigest())
    monkeypatch.setattr(datasets, "MNIST_FILES", files)
    return root, arrays


def _cache_contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_fills_the_cache_then_reads_it_offline(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    with _serve(root) as (url, log):
        data = datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    for key, array in arrays.items():
        np.testing.assert_array_equal(data[key], array)
    assert _cache_contents(cache) == sorted(f for f, _ in datasets.MNIST_FILES.values())
    assert [r for _, r in log] == [None] * 4
    # Second call: everything is in the cache, the (dead) mirror is not asked.
    again = datasets.load_mnist(cache, download=True, mirrors=[_closed_port_url()], timeout=5)
    np.testing.assert_array_equal(again["train_images"], arrays["train_images"])


def test_dropped_connection_resumes_with_a_range_request(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    with _serve(root, drops=1, drop_after=100) as (url, log):
        data = datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    np.testing.assert_array_equal(data["test_images"], arrays["test_images"])
    images = [r for name, r in log if name == "train-images-idx3-ubyte.gz"]
    assert images == [None, "bytes=100-"]
    assert not any(name.endswith(".part") for name in _cache_contents(cache))


def test_partial_download_is_kept_and_continued_by_the_next_call(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    part = cache / "train-images-idx3-ubyte.gz.part"
    attempts = datasets.DOWNLOAD_ATTEMPTS
    with _serve(root, drops=attempts, drop_after=100) as (url, _):
        with pytest.raises(datasets.DownloadError, match=r"connection closed after 500 of \d+"):
            datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    assert _cache_contents(cache) == [part.name]
    assert part.stat().st_size == 100 * attempts
    with _serve(root) as (url, log):
        data = datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    assert log[0] == ("train-images-idx3-ubyte.gz", f"bytes={100 * attempts}-")
    np.testing.assert_array_equal(data["train_images"], arrays["train_images"])


def test_server_without_range_support_starts_over(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    with _serve(root, ranges=False, drops=1, drop_after=100) as (url, log):
        data = datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    np.testing.assert_array_equal(data["train_images"], arrays["train_images"])
    # Range asked, whole file received (200) and written from the start: no third request.
    images = [r for name, r in log if name == "train-images-idx3-ubyte.gz"]
    assert images == [None, "bytes=100-"]


def test_part_longer_than_the_file_is_restarted(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "train-labels-idx1-ubyte.gz.part").write_bytes(b"x" * 10_000)
    with _serve(root) as (url, log):
        data = datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    np.testing.assert_array_equal(data["train_labels"], arrays["train_labels"])
    labels = [r for name, r in log if name == "train-labels-idx1-ubyte.gz"]
    assert labels == ["bytes=10000-", None]


def test_corrupt_download_is_refused_and_nothing_is_kept(small_mnist, tmp_path):
    root, _ = small_mnist
    cache = tmp_path / "cache"
    corrupt = frozenset({"train-images-idx3-ubyte.gz"})
    with _serve(root, corrupt=corrupt) as (url, _):
        with pytest.raises(
            datasets.DownloadError,
            match=rf"train-images-idx3-ubyte\.gz: {url}train-images-idx3-ubyte\.gz failed "
            r"\(corrupt file: MD5 mismatch\)\. Pass other `mirrors=`",
        ):
            datasets.load_mnist(download=True, cache_dir=cache, mirrors=[url], timeout=5)
    assert _cache_contents(cache) == []


def test_next_mirror_is_tried_and_the_failure_reported(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    corrupt = frozenset(f for f, _ in datasets.MNIST_FILES.values())
    with _serve(root, corrupt=corrupt) as (bad, _), _serve(root) as (good, _):
        with pytest.warns(UserWarning, match=rf"downloaded from {good}.* after {bad}.*MD5"):
            data = datasets.load_mnist(download=True, cache_dir=cache, mirrors=[bad, good])
    np.testing.assert_array_equal(data["test_labels"], arrays["test_labels"])


@pytest.mark.usefixtures("small_mnist")
def test_all_mirrors_failing_are_named_with_their_reasons(tmp_path):
    closed = _closed_port_url()
    with _serve(tmp_path / "empty") as (url, _):
        with pytest.raises(datasets.DownloadError) as error:
            datasets.load_mnist(download=True, cache_dir=tmp_path, mirrors=[closed, url])
    message = str(error.value)
    assert message.startswith("Could not download train-images-idx3-ubyte.gz: ")
    assert f"{closed}train-images-idx3-ubyte.gz failed (URLError: " in message
    assert f"{url}train-images-idx3-ubyte.gz failed (HTTP 404 " in message
    assert not list(tmp_path.glob("*.gz*"))


def test_corrupt_cached_file_is_downloaded_again(small_mnist, tmp_path):
    root, arrays = small_mnist
    cache = tmp_path / "cache"
    cache.mkdir()
    for filename, _ in datasets.MNIST_FILES.values():
        (cache / filename).write_bytes((root / filename).read_bytes())
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"wrong"))
    with pytest.raises(ValueError, match=r"t10k-labels.* \(MD5 mismatch\); `download=True`"):
        datasets.load_mnist(cache)
    with _serve(root) as (url, log):
        data = datasets.load_mnist(cache, download=True, mirrors=[url], timeout=5)
    assert log == [("t10k-labels-idx1-ubyte.gz", None)]
    np.testing.assert_array_equal(data["test_labels"], arrays["test_labels"])


def test_default_cache_folder(small_mnist, tmp_path, monkeypatch):
    root, _ = small_mnist
    monkeypatch.delenv(datasets.ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(tmp_path / "xdg"))
    with _serve(root) as (url, _):
        datasets.load_mnist(download=True, mirrors=[url], timeout=5)
    assert datasets.default_cache_dir() == tmp_path / "xdg" / "eggroll_opt" / "mnist"
    assert len(_cache_contents(datasets.default_cache_dir())) == 4


def test_download_argument_errors(tmp_path):
    with pytest.raises(ValueError, match=r"`directory` \('a'\) and `cache_dir` \('b'\)"):
        datasets.load_mnist("a", cache_dir="b")
    with pytest.raises(TypeError, match=r"`mirrors` must be a sequence .*'http://x/'"):
        datasets.load_mnist(tmp_path, download=True, mirrors="http://x/")
    with pytest.raises(ValueError, match=r"`mirrors` must name at least one .*\(\)"):
        datasets.load_mnist(tmp_path, download=True, mirrors=())
    with pytest.raises(ValueError, match=r"`timeout` must be positive .*got 0"):
        datasets.load_mnist(tmp_path, download=True, timeout=0)


@pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository"
)
def test_real_mnist_downloads_from_a_local_mirror(tmp_path):
    with _serve(SHARED_MNIST, drops=1, drop_after=1 << 20) as (url, log):
        data = datasets.load_mnist(download=True, cache_dir=tmp_path, mirrors=[url], timeout=30)
    assert data["train_images"].shape == (60000, 28, 28)
    assert ("train-images-idx3-ubyte.gz", f"bytes={1 << 20}-") in log
    for filename, _ in datasets.MNIST_FILES.values():
        assert (tmp_path / filename).read_bytes() == (SHARED_MNIST / filename).read_bytes()
