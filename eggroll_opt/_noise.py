"""The noise generator: standard normals as a pure function of (seed, leaf, epoch, member).

Definition (the contract every backend implements):

* Each leaf has a 128-bit Philox key, ``leaf_key(seed, path)``, derived with NumPy's
  ``SeedSequence`` from the strategy seed and a hash of the leaf's path.
* Block ``b`` of the leaf's stream at noise epoch ``e`` is Philox4x64-10 applied to the
  256-bit counter ``(b + 1, 0, e, 0)`` (64-bit words, least significant first): four 64-bit
  words. This is exactly the stream of ``numpy.random.Philox(key=key, counter=(e << 128) + b0)``
  starting at block ``b0``, which the NumPy backend uses at C speed. On CuPy, one fused kernel
  (:mod:`eggroll_opt._philox_kernel`) runs the rounds and the transform below and writes a
  leaf's whole population in one launch; the same rounds as array operations
  (:func:`philox_words`) run on any backend, as reference and fallback. All are checked
  bit-exact against NumPy (the kernel on the CPU, through a host build of its C source).
* A member ``k`` that needs ``size`` normals owns ``ceil(size / 8)`` consecutive blocks, starting
  at block ``k * ceil(size / 8)``: ``W = 4 * ceil(size / 8)`` words.
* Each word gives one Box–Muller pair from two 24-bit uniforms ``u1 = (w >> 40 + 1/2) / 2**24``
  and ``u2 = ((w >> 8) & 0xFFFFFF + 1/2) / 2**24``, both in (0, 1):
  ``rho = sqrt(-2 log u1)``, ``z_cos = rho cos(2 pi u2)``, ``z_sin = rho sin(2 pi u2)``. The
  member's normals are the ``W`` cosine values followed by the ``W`` sine values, of which the
  first ``size`` are used. The arithmetic runs in float64 for float64 leaves and in float32
  otherwise, so dtypes and devices differ only by rounding of the transform (the bits are
  identical). Values are bounded by ``sqrt(2 log 2**25)``, about 5.9.

Only the members a caller asks for are generated, so a remote worker rebuilds member ``k``
without generating the others, and ``tell`` regenerates exactly what ``ask`` handed out.

``backend.generator`` says which implementation runs: ``"numpy"`` (``numpy.random.Philox`` and
the array transform), ``"kernel"`` (the fused CuPy kernel: one launch per leaf, plus a cast for
float16 leaves) or ``"arrays"`` (array operations on ``backend.xp``, about 360 launches per leaf
on CuPy).
"""

from __future__ import annotations

import hashlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _philox_kernel

if TYPE_CHECKING:
    from ._backend import Backend

WORDS_PER_BLOCK = 4
NORMALS_PER_BLOCK = 2 * WORDS_PER_BLOCK
_ROUNDS = 10
_M0, _M1 = 0xD2E7470EE14C6C93, 0xCA5A826395121157  # Philox4x64 multipliers
_W0, _W1 = 0x9E3779B97F4A7C15, 0xBB67AE8584CAA73B  # Weyl key increments
_MASK64 = (1 << 64) - 1
MAX_NORMAL = 5.9
"""No normal of the generator exceeds this in magnitude: ``sqrt(-2 log 2**-25)`` ≈ 5.887."""
GENERATORS = ("numpy", "kernel", "arrays")
# The array generators run in chunks of about this many normals to bound temporary memory.
_CHUNK_NORMALS = 1 << 20


def leaf_key(seed: int, path: str) -> np.ndarray:
    """The 128-bit Philox key of one leaf, as two uint64 words."""
    digest = hashlib.blake2b(path.encode(), digest_size=8).digest()
    sequence = np.random.SeedSequence(seed, spawn_key=(int.from_bytes(digest, "little"),))
    return sequence.generate_state(2, np.uint64)


def blocks_per_member(size: int) -> int:
    """How many Philox blocks one member's ``size`` normals take."""
    return -(-size // NORMALS_PER_BLOCK)


def _check_counter(epoch: int, first_block: int, num_blocks: int) -> None:
    if not 0 <= epoch <= _MASK64 or not 0 <= first_block or first_block + num_blocks > _MASK64:
        raise OverflowError(
            f"noise counter out of range: epoch={epoch}, blocks {first_block}..+{num_blocks}"
        )


def philox_words(
    xp: ModuleType, key: np.ndarray, epoch: int, first_block: int, num_blocks: int
) -> Any:
    """Philox4x64-10 words of blocks ``first_block .. first_block + num_blocks - 1``.

    Written with array operations only (64x64->128-bit products split into 32-bit halves), so it
    runs unchanged on any backend; the NumPy backend uses ``numpy.random.Philox`` instead, and
    the tests check that both give the same bits.
    """
    _check_counter(epoch, first_block, num_blocks)
    u64 = xp.uint64
    counter = (
        xp.arange(num_blocks, dtype=u64) + u64(first_block + 1),
        xp.zeros(num_blocks, dtype=u64),
        xp.full(num_blocks, epoch, dtype=u64),
        xp.zeros(num_blocks, dtype=u64),
    )
    return xp.stack(philox4x64(xp, counter, key), axis=1).reshape(-1)


def philox4x64(xp: ModuleType, counter: tuple[Any, Any, Any, Any], key: Any) -> tuple[Any, ...]:
    """The Philox4x64-10 bijection (Salmon et al. 2011) on uint64 arrays of counter words."""
    c0, c1, c2, c3 = counter
    u64 = xp.uint64
    k0, k1 = int(key[0]), int(key[1])
    m0, m1 = u64(_M0), u64(_M1)
    for round_index in range(_ROUNDS):
        if round_index:
            k0, k1 = (k0 + _W0) & _MASK64, (k1 + _W1) & _MASK64
        hi0, lo0 = _mulhilo(xp, m0, c0)
        hi1, lo1 = _mulhilo(xp, m1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ u64(k0), lo1, hi0 ^ c3 ^ u64(k1), lo0
    return c0, c1, c2, c3


def _mulhilo(xp: ModuleType, a: Any, b: Any) -> tuple[Any, Any]:
    """High and low 64-bit words of the 128-bit product ``a * b`` (uint64)."""
    mask, shift = xp.uint64(0xFFFFFFFF), xp.uint64(32)
    a_lo, a_hi = a & mask, a >> shift
    b_lo, b_hi = b & mask, b >> shift
    low_product = a_lo * b_lo
    middle = a_hi * b_lo + (low_product >> shift)
    middle2 = a_lo * b_hi + (middle & mask)
    high = a_hi * b_hi + (middle >> shift) + (middle2 >> shift)
    return high, a * b


def raw_words(
    backend: Backend, key: np.ndarray, epoch: int, first_block: int, num_blocks: int
) -> Any:
    """The words of blocks ``first_block ..`` on ``backend`` (see the module docstring)."""
    generator = _generator(backend)
    if generator == "numpy":
        _check_counter(epoch, first_block, num_blocks)
        bit_generator = np.random.Philox(key=key, counter=(epoch << 128) + first_block)
        return bit_generator.random_raw(num_blocks * WORDS_PER_BLOCK)
    if generator == "kernel":
        _check_counter(epoch, first_block, num_blocks)
        return _philox_kernel.philox_words(backend.xp, key, epoch, first_block, num_blocks)
    return philox_words(backend.xp, key, epoch, first_block, num_blocks)


def _generator(backend: Backend) -> str:
    if backend.generator not in GENERATORS:
        raise ValueError(
            f"`generator` of the backend must be one of {GENERATORS}, got {backend.generator!r}."
        )
    return backend.generator


def compute_dtype(dtype: Any) -> type:
    """The float type the normal transform runs in for a leaf of ``dtype``."""
    return np.float64 if np.dtype(dtype).itemsize >= 8 else np.float32


def words_to_normals(xp: ModuleType, words: Any, dtype: Any, out: Any = None) -> Any:
    """Box–Muller normals from uint64 words of shape (..., W): shape (..., 2W).

    Written with in-place operations: the transform is memory-bound, and fresh temporaries
    cost as much as the arithmetic. ``out``, if given, must have the compute dtype.
    """
    ftype = compute_dtype(dtype)
    width = words.shape[-1]
    if out is None:
        out = xp.empty((*words.shape[:-1], 2 * width), dtype=ftype)
    cosines, sines = out[..., :width], out[..., width:]
    rho = (words >> xp.uint64(40)).astype(ftype)
    rho += ftype(0.5)
    rho *= ftype(2.0**-24)
    xp.log(rho, out=rho)
    rho *= ftype(-2.0)
    xp.sqrt(rho, out=rho)
    theta = ((words >> xp.uint64(8)) & xp.uint64(0xFFFFFF)).astype(ftype)
    theta += ftype(0.5)
    theta *= ftype(2.0 * np.pi * 2.0**-24)
    xp.cos(theta, out=cosines)
    xp.sin(theta, out=sines)
    cosines *= rho
    sines *= rho
    return out


def normals(
    backend: Backend, key: np.ndarray, epoch: int, first: int, count: int, size: int, dtype: Any
) -> Any:
    """Normals of members ``first .. first + count - 1``: an array (count, size) of ``dtype``.

    One call covers the whole population. The ``"kernel"`` generator writes it in one launch;
    the others process members in chunks to bound the temporaries of the transform.
    """
    xp = backend.xp
    blocks = blocks_per_member(size)
    ftype = compute_dtype(dtype)
    if _generator(backend) == "kernel":
        _check_counter(epoch, first * blocks, count * blocks)
        values = _philox_kernel.normals(xp, key, epoch, first, count, size, blocks, np.dtype(ftype))
        return values if values.dtype == np.dtype(dtype) else values.astype(dtype)
    width = blocks * WORDS_PER_BLOCK
    padded = xp.empty((count, 2 * width), dtype=ftype)
    chunk = max(1, _CHUNK_NORMALS // (2 * width))
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        words = raw_words(backend, key, epoch, (first + start) * blocks, (stop - start) * blocks)
        words_to_normals(xp, words.reshape(stop - start, width), dtype, out=padded[start:stop])
    result = padded[:, :size]
    return result if result.dtype == np.dtype(dtype) else result.astype(dtype)
