"""The fused generator kernel, checked on the CPU through a host build of its C source.

``_philox_kernel.SOURCE`` compiled by the system C compiler turns each CUDA kernel into a C
function of the same name and arguments that runs every thread in turn. :class:`HostRawKernel`
calls it the way ``cupy.RawKernel`` is called, so ``_noise.normals`` with
``generator="kernel"`` runs its real code path, wrapper included, on NumPy arrays. The words
must match ``numpy.random.Philox`` bit for bit. The normals match NumPy's transform to the
rounding of ``log``/``sqrt``/``cos``/``sin``: the host build calls the C library's functions,
NumPy its own (SIMD) versions, which may differ in the last bit or two, and a GPU's differ again.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.machinery
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eggroll_opt import _noise, _philox_kernel
from eggroll_opt._backend import Backend, cupy_available, get_backend
from tests.conftest import host

NUMPY = Backend("numpy", np)
KERNEL = Backend("numpy", np, generator="kernel")
ARRAYS = Backend("numpy", np, generator="arrays")

# Arguments of each kernel after the uint64 scalars: the dtype its pointer argument expects.
_POINTER_DTYPES = {
    _philox_kernel.WORDS_KERNEL: np.dtype(np.uint64),
    **{name: dtype for dtype, name in _philox_kernel.NORMALS_KERNELS.items()},
}
# Normals of the host build against NumPy's transform (C library vs NumPy's log/cos/sin).
_TOLERANCE = {np.float32: 1e-6, np.float64: 1e-14, np.float16: 4e-3}

uint64s = st.integers(0, 2**64 - 1)
epochs = st.one_of(st.integers(2**64 - 2**10, 2**64 - 1), uint64s, st.integers(0, 2**10))


def _compile(tmp_dir: Path) -> ctypes.CDLL:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH to build the kernel's host version")
    source = tmp_dir / "philox_kernel.c"
    source.write_text(_philox_kernel.SOURCE)
    library = tmp_dir / "philox_kernel.so"
    command = [compiler, "-std=c99", "-O2", "-Wall", "-Werror", "-shared", "-fPIC"]
    subprocess.run([*command, "-o", str(library), str(source), "-lm"], check=True)
    return ctypes.CDLL(str(library))


class HostRawKernel:
    """``cupy.RawKernel(SOURCE, name)`` for NumPy arrays, backed by the host build.

    It checks what CuPy would need: a launch geometry within CUDA's limits, 64-bit unsigned
    NumPy scalars for the ``unsigned long long`` parameters, and C-contiguous arrays of the
    kernel's pointer type. ``launches`` records each call's kernel name.
    """

    launches: ClassVar[list[str]] = []

    def __init__(self, library: ctypes.CDLL, name: str) -> None:
        self.name = name
        self.function = getattr(library, name)
        self.function.restype = None

    def __call__(self, grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
        assert len(grid) == 1 and 1 <= grid[0] < 2**31, grid
        assert len(block) == 1 and 1 <= block[0] <= 1024, block
        *scalars, out = args
        assert all(type(value) is np.uint64 for value in scalars), scalars
        assert out.dtype == _POINTER_DTYPES[self.name] and out.flags.c_contiguous
        self.launches.append(self.name)
        self.function(
            *(ctypes.c_uint64(int(value)) for value in scalars), ctypes.c_void_p(out.ctypes.data)
        )


@pytest.fixture(scope="module")
def host_library(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile(tmp_path_factory.mktemp("philox_kernel"))


@pytest.fixture
def host_kernels(host_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``_philox_kernel.compiled`` replaced by the host build; the list of launches made."""
    monkeypatch.setattr(
        _philox_kernel, "compiled", lambda xp, name: HostRawKernel(host_library, name)
    )
    HostRawKernel.launches.clear()
    return HostRawKernel.launches


# The patched kernels are the same for every example, so a function-scoped fixture is fine.
examples = functools.partial(
    settings, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@examples(max_examples=60)
@given(
    key=st.tuples(uint64s, uint64s),
    epoch=epochs,
    first_block=st.one_of(st.integers(2**40 - 64, 2**40 + 64), st.integers(0, 2**63)),
    num_blocks=st.integers(1, 40),
)
def test_host_build_words_are_numpy_philox(host_kernels, key, epoch, first_block, num_blocks):
    key = np.array(key, dtype=np.uint64)
    actual = _noise.raw_words(KERNEL, key, epoch, first_block, num_blocks)
    expected = np.random.Philox(key=key, counter=(epoch << 128) + first_block).random_raw(
        4 * num_blocks
    )
    np.testing.assert_array_equal(actual, expected)


def test_words_at_the_end_of_the_counter_range(host_kernels):
    """The last block the range check admits: counter word c0 = 2**64 - 1, epoch 2**64 - 1."""
    key = _noise.leaf_key(3, "w")
    epoch, first_block = 2**64 - 1, 2**64 - 4
    expected = _noise.raw_words(NUMPY, key, epoch, first_block, 3)
    np.testing.assert_array_equal(_noise.raw_words(KERNEL, key, epoch, first_block, 3), expected)
    with pytest.raises(OverflowError, match="noise counter"):
        _noise.raw_words(KERNEL, key, epoch, first_block, 4)


@examples(max_examples=40)
@given(
    seed=st.integers(0, 2**32),
    epoch=epochs,
    first=st.one_of(st.integers(0, 50), st.integers(2**40 // 40, 2**40 // 40 + 50)),
    count=st.integers(1, 5),
    size=st.integers(1, 300),
    dtype=st.sampled_from([np.float32, np.float64, np.float16]),
)
def test_host_build_normals_match_numpy(host_kernels, seed, epoch, first, count, size, dtype):
    key = _noise.leaf_key(seed, "layer/w")
    expected = _noise.normals(NUMPY, key, epoch, first, count, size, dtype)
    actual = _noise.normals(KERNEL, key, epoch, first, count, size, dtype)
    assert actual.dtype == np.dtype(dtype) and actual.shape == (count, size)
    tolerance = _TOLERANCE[dtype]
    np.testing.assert_allclose(actual, expected, rtol=tolerance, atol=tolerance)


def test_a_leaf_population_is_one_launch(host_kernels):
    """A 1024x1024 rank-1 leaf, population 256: one launch writes the (256, 2048) normals."""
    key = _noise.leaf_key(0, "w")
    values = _noise.normals(KERNEL, key, 7, 0, 256, 2048, np.float32)
    assert host_kernels == [_philox_kernel.NORMALS_KERNELS[np.dtype(np.float32)]]
    assert values.shape == (256, 2048) and values.flags.c_contiguous
    np.testing.assert_allclose(
        values, _noise.normals(NUMPY, key, 7, 0, 256, 2048, np.float32), rtol=1e-6, atol=1e-6
    )


def test_counter_range_is_checked_before_launching(host_kernels):
    key = _noise.leaf_key(0, "w")
    with pytest.raises(OverflowError, match="noise counter"):
        _noise.normals(KERNEL, key, 2**64, 0, 1, 8, np.float32)
    with pytest.raises(OverflowError, match="noise counter"):
        _noise.normals(KERNEL, key, 0, 2**61, 1, 64, np.float32)  # blocks past 2**64
    assert host_kernels == []


def test_no_members_launch_nothing(host_kernels):
    assert _noise.normals(KERNEL, _noise.leaf_key(0, "w"), 0, 0, 0, 16, np.float32).shape == (0, 16)
    assert _noise.raw_words(KERNEL, _noise.leaf_key(0, "w"), 0, 0, 0).shape == (0,)
    assert host_kernels == []


def test_kernel_generator_needs_raw_kernel():
    with pytest.raises(ValueError, match="`generator`='kernel' needs CuPy's RawKernel"):
        _noise.normals(KERNEL, _noise.leaf_key(0, "w"), 0, 0, 1, 8, np.float32)


def test_unknown_generator_is_refused():
    bogus = Backend("numpy", np, generator="cuRAND")
    with pytest.raises(ValueError, match=r"`generator` of the backend must be one of .*'cuRAND'"):
        _noise.normals(bogus, _noise.leaf_key(0, "w"), 0, 0, 1, 8, np.float32)


@pytest.mark.parametrize(("has_raw_kernel", "generator"), [(True, "kernel"), (False, "arrays")])
def test_cupy_backend_uses_the_kernel_where_cupy_can_compile_one(
    monkeypatch, has_raw_kernel, generator
):
    """Real CuPy (with NVRTC's RawKernel) gets the kernel; a CuPy-like module without it, arrays."""
    fake = types.ModuleType("cupy")
    fake.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))
    if has_raw_kernel:
        fake.RawKernel = object
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert get_backend("cupy").generator == generator


def test_cuda_build_compiles(tmp_path):
    """The NVRTC side of SOURCE, built by nvcc to PTX (no GPU needed): three kernels, and the
    64x64->128-bit products through the __umul64hi intrinsic (mul.hi.u64)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH, so the CUDA side of the source cannot be compiled here")
    source = tmp_path / "philox_kernel.cu"
    source.write_text(_philox_kernel.SOURCE)
    ptx = tmp_path / "philox_kernel.ptx"
    subprocess.run([nvcc, "-ptx", "-arch=sm_90", "-o", str(ptx), str(source)], check=True)
    text = ptx.read_text()
    entries = {_philox_kernel.WORDS_KERNEL, *_philox_kernel.NORMALS_KERNELS.values()}
    for name in entries:
        assert f".entry {name}(" in text
    assert text.count("mul.hi.u64") == 20 * len(entries)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_device_kernel_matches_numpy(dtype):
    """On a GPU: words bit-exact, normals to the rounding of the device's log/cos/sin."""
    if not cupy_available():
        pytest.skip("CuPy with a GPU is not available")
    backend = get_backend("cupy")
    if backend.generator != "kernel":
        pytest.skip("this CuPy has no RawKernel (a CPU stand-in), so the kernel cannot run")
    key = _noise.leaf_key(5, "layer/w")
    epoch, first_block = 2**64 - 3, 2**40 - 7
    words = host(_noise.raw_words(backend, key, epoch, first_block, 1000))
    np.testing.assert_array_equal(words, _noise.raw_words(NUMPY, key, epoch, first_block, 1000))
    values = host(_noise.normals(backend, key, epoch, 3, 64, 2051, dtype))
    expected = _noise.normals(NUMPY, key, epoch, 3, 64, 2051, dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(values, expected, rtol=tolerance, atol=tolerance)
