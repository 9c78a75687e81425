"""The fused generator kernel: Philox4x64-10 and the normal transform in one CuPy launch.

:data:`SOURCE` is one C source with two builds:

* On CuPy it is compiled by NVRTC (``cupy.RawKernel``). Each thread owns one Philox block of
  one member: it runs the ten rounds on the counter ``(b + 1, 0, e, 0)`` and writes the block's
  four cosine and four sine normals straight into the ``(count, size)`` output, so a whole
  leaf's population costs one launch, with no words array, no padding and no copy.
* Compiled by a host C compiler (``__CUDACC__`` undefined), every ``__global__`` kernel becomes
  a plain C function of the same name and arguments that runs all its threads in a loop. The
  tests build it with the system compiler and check it word for word against
  ``numpy.random.Philox``, which is how the integer core is checked without a GPU. The one
  line the host build cannot check is the 64x64->128-bit product: NVRTC uses the
  ``__umul64hi`` intrinsic, the host build the portable 32-bit-halves version.

The arithmetic of the transform is the one :mod:`eggroll_opt._noise` defines (float32 or
float64 by leaf dtype), so on a GPU the values differ from NumPy's only by the rounding of
``log``, ``sqrt``, ``cos`` and ``sin``; the bits are identical.

The kernel awaits its first run on a device: until then, it is checked on the CPU only (the
host build of the same source, and the wrapper driven through a host stand-in of
``RawKernel``); ``backend.generator = "arrays"`` keeps the array-operation generator as the
reference and fallback.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np

# Function names in SOURCE, for the NVRTC build and the host build alike.
WORDS_KERNEL = "eggroll_philox_words"
NORMALS_KERNELS = {
    np.dtype(np.float32): "eggroll_philox_normals_f32",
    np.dtype(np.float64): "eggroll_philox_normals_f64",
}
THREADS_PER_BLOCK = 256
# Grid-stride loops make any grid correct; this cap only bounds the launch geometry.
_MAX_GRID = 1 << 16

SOURCE = r"""
/* Philox4x64-10 (Salmon et al. 2011) and the Box-Muller transform of eggroll_opt._noise. */
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define EGG_CUDA 1
#define EGG_FN __device__ __forceinline__
#define EGG_KERNEL extern "C" __global__
#else
#include <math.h>
#define EGG_FN static inline
#define EGG_KERNEL
#endif

typedef unsigned long long egg_u64;

#define EGG_M0 0xD2E7470EE14C6C93ULL /* Philox4x64 multipliers */
#define EGG_M1 0xCA5A826395121157ULL
#define EGG_W0 0x9E3779B97F4A7C15ULL /* Weyl key increments */
#define EGG_W1 0xBB67AE8584CAA73BULL
#define EGG_LOW32 0xFFFFFFFFULL
#define EGG_TWO_POW_M24 5.9604644775390625e-08 /* 2**-24, exact */
#define EGG_TWO_PI 6.283185307179586476925

/* High 64 bits of the 128-bit product a * b. */
EGG_FN egg_u64 egg_mulhi(egg_u64 a, egg_u64 b) {
#ifdef EGG_CUDA
    return __umul64hi(a, b);
#else
    egg_u64 a_lo = a & EGG_LOW32, a_hi = a >> 32;
    egg_u64 b_lo = b & EGG_LOW32, b_hi = b >> 32;
    egg_u64 low = a_lo * b_lo;
    egg_u64 middle = a_hi * b_lo + (low >> 32);
    egg_u64 middle2 = a_lo * b_hi + (middle & EGG_LOW32);
    return a_hi * b_hi + (middle >> 32) + (middle2 >> 32);
#endif
}

/* The four words of block `block`: Philox4x64-10 of the counter (block + 1, 0, epoch, 0). */
EGG_FN void egg_philox_block(egg_u64 k0, egg_u64 k1, egg_u64 epoch, egg_u64 block,
                             egg_u64 *words) {
    egg_u64 c0 = block + 1, c1 = 0, c2 = epoch, c3 = 0;
    int r;
    for (r = 0; r < 10; ++r) {
        egg_u64 hi0, lo0, hi1, lo1;
        if (r) {
            k0 += EGG_W0;
            k1 += EGG_W1;
        }
        hi0 = egg_mulhi(EGG_M0, c0);
        lo0 = EGG_M0 * c0;
        hi1 = egg_mulhi(EGG_M1, c2);
        lo1 = EGG_M1 * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
    }
    words[0] = c0;
    words[1] = c1;
    words[2] = c2;
    words[3] = c3;
}

/* Thread t of the words kernel: block first_block + t, written to out[4t .. 4t + 3]. */
EGG_FN void egg_words_thread(egg_u64 t, egg_u64 k0, egg_u64 k1, egg_u64 epoch,
                             egg_u64 first_block, egg_u64 *out) {
    egg_philox_block(k0, k1, epoch, first_block + t, out + 4 * t);
}

/* Thread t of a normals kernel: block b = t % blocks of member m = t / blocks, whose stream
   block is first_block + t. Word j = 4b + i gives the cosine at column j and the sine at
   column 4 * blocks + j of row m, each kept if the column is below size. */
#define EGG_NORMALS_THREAD(NAME, T, LOG, SQRT, COS, SIN)                                    \
    EGG_FN void NAME(egg_u64 t, egg_u64 k0, egg_u64 k1, egg_u64 epoch, egg_u64 first_block, \
                     egg_u64 blocks, egg_u64 size, T *out) {                                \
        egg_u64 words[4];                                                                   \
        egg_u64 member = t / blocks, column = 4 * (t - member * blocks);                    \
        egg_u64 width = 4 * blocks;                                                         \
        T *row = out + member * size;                                                       \
        int i;                                                                              \
        egg_philox_block(k0, k1, epoch, first_block + t, words);                            \
        for (i = 0; i < 4; ++i, ++column) {                                                 \
            egg_u64 w = words[i];                                                           \
            T u1 = ((T)(w >> 40) + (T)0.5) * (T)EGG_TWO_POW_M24;                            \
            T rho = SQRT(LOG(u1) * (T)-2.0);                                                \
            T theta = ((T)((w >> 8) & 0xFFFFFFULL) + (T)0.5)                                \
                      * (T)(EGG_TWO_PI * EGG_TWO_POW_M24);                                  \
            if (column < size) row[column] = COS(theta) * rho;                              \
            if (width + column < size) row[width + column] = SIN(theta) * rho;              \
        }                                                                                   \
    }

EGG_NORMALS_THREAD(egg_normals_f32_thread, float, logf, sqrtf, cosf, sinf)
EGG_NORMALS_THREAD(egg_normals_f64_thread, double, log, sqrt, cos, sin)

/* The kernels. On the GPU, a grid-stride loop over threads 0 .. total - 1; in the host build,
   the same function runs them all in order. */
#ifdef EGG_CUDA
#define EGG_FOR_EACH_THREAD(t, total)                                       \
    for (egg_u64 t = (egg_u64)blockIdx.x * blockDim.x + threadIdx.x; t < (total); \
         t += (egg_u64)gridDim.x * blockDim.x)
#else
#define EGG_FOR_EACH_THREAD(t, total) for (egg_u64 t = 0; t < (total); ++t)
#endif

EGG_KERNEL void eggroll_philox_words(egg_u64 k0, egg_u64 k1, egg_u64 epoch,
                                     egg_u64 first_block, egg_u64 total, egg_u64 *out) {
    EGG_FOR_EACH_THREAD(t, total) egg_words_thread(t, k0, k1, epoch, first_block, out);
}

EGG_KERNEL void eggroll_philox_normals_f32(egg_u64 k0, egg_u64 k1, egg_u64 epoch,
                                           egg_u64 first_block, egg_u64 blocks, egg_u64 size,
                                           egg_u64 total, float *out) {
    EGG_FOR_EACH_THREAD(t, total)
        egg_normals_f32_thread(t, k0, k1, epoch, first_block, blocks, size, out);
}

EGG_KERNEL void eggroll_philox_normals_f64(egg_u64 k0, egg_u64 k1, egg_u64 epoch,
                                           egg_u64 first_block, egg_u64 blocks, egg_u64 size,
                                           egg_u64 total, double *out) {
    EGG_FOR_EACH_THREAD(t, total)
        egg_normals_f64_thread(t, k0, k1, epoch, first_block, blocks, size, out);
}
"""


@functools.cache
def compiled(xp: ModuleType, name: str) -> Any:
    """Kernel ``name`` of :data:`SOURCE` as a ``cupy.RawKernel``, compiled by NVRTC on first use.

    Raises:
        ValueError: if ``xp`` has no ``RawKernel`` (NumPy, or a CuPy stand-in without NVRTC).
    """
    if not hasattr(xp, "RawKernel"):
        raise ValueError(
            f"`generator`='kernel' needs CuPy's RawKernel, and `xp`={xp.__name__!r} has none; "
            "use generator='arrays' (or 'numpy' on NumPy)."
        )
    return xp.RawKernel(SOURCE, name)


def _launch(xp: ModuleType, name: str, total: int, args: tuple[Any, ...]) -> None:
    """Run ``total`` threads of kernel ``name`` (``args``: NumPy uint64 scalars, then arrays)."""
    grid = min(_MAX_GRID, -(-total // THREADS_PER_BLOCK))
    compiled(xp, name)((grid,), (THREADS_PER_BLOCK,), args)


def _key_args(key: np.ndarray, epoch: int) -> tuple[np.uint64, np.uint64, np.uint64]:
    return np.uint64(int(key[0])), np.uint64(int(key[1])), np.uint64(epoch)


def philox_words(
    xp: ModuleType, key: np.ndarray, epoch: int, first_block: int, num_blocks: int
) -> Any:
    """Words of blocks ``first_block ..`` as one launch: uint64 array (4 * num_blocks,).

    The caller checks the counter range (``_noise._check_counter``).
    """
    out = xp.empty(4 * num_blocks, dtype=xp.uint64)
    if num_blocks:
        args = (*_key_args(key, epoch), np.uint64(first_block), np.uint64(num_blocks), out)
        _launch(xp, WORDS_KERNEL, num_blocks, args)
    return out


def normals(
    xp: ModuleType,
    key: np.ndarray,
    epoch: int,
    first: int,
    count: int,
    size: int,
    blocks: int,
    compute: np.dtype,
) -> Any:
    """Normals of members ``first .. first + count - 1`` in ``compute`` dtype: (count, size).

    One launch; ``blocks`` is ``_noise.blocks_per_member(size)`` and the caller checks the
    counter range.
    """
    out = xp.empty((count, size), dtype=compute)
    total = count * blocks
    if total:
        args = (
            *_key_args(key, epoch),
            np.uint64(first * blocks),
            np.uint64(blocks),
            np.uint64(size),
            np.uint64(total),
            out,
        )
        _launch(xp, NORMALS_KERNELS[np.dtype(compute)], total, args)
    return out
