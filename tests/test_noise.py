"""The generator: bit-exact Philox, the normal transform, and noise as a pure function."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from eggroll_opt import _noise
from eggroll_opt._backend import Backend
from tests.conftest import host

NUMPY = Backend("numpy", np)
ARRAYS = Backend("numpy", np, generator="arrays")

# Known-answer vectors of Philox4x64-10 published with Random123 (kat_vectors):
# (counter words, key words, output words).
KNOWN_ANSWERS = [
    (
        (0, 0, 0, 0),
        (0, 0),
        (0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B),
    ),
    (
        (2**64 - 1,) * 4,
        (2**64 - 1,) * 2,
        (0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0),
    ),
    (
        (0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89),
        (0x452821E638D01377, 0xBE5466CF34E90C6C),
        (0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6),
    ),
]


@pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
def test_array_philox_matches_random123_known_answers(counter, key, expected):
    words = tuple(np.array([c], dtype=np.uint64) for c in counter)
    out = _noise.philox4x64(np, words, np.array(key, dtype=np.uint64))
    assert tuple(int(w[0]) for w in out) == expected


@pytest.mark.parametrize(("counter", "key", "expected"), KNOWN_ANSWERS)
def test_numpy_philox_is_the_same_function(counter, key, expected):
    start = (sum(c << (64 * i) for i, c in enumerate(counter)) - 1) % 2**256
    bits = np.random.Philox(key=np.array(key, dtype=np.uint64), counter=start).random_raw(4)
    assert tuple(int(b) for b in bits) == expected


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**70),
    epoch=st.integers(0, 2**64 - 1),
    first_block=st.integers(0, 2**40),
    num_blocks=st.integers(1, 40),
)
def test_array_generator_is_bit_exact_with_numpy(seed, epoch, first_block, num_blocks):
    key = _noise.leaf_key(seed, "layer/w")
    expected = _noise.raw_words(NUMPY, key, epoch, first_block, num_blocks)
    actual = _noise.raw_words(ARRAYS, key, epoch, first_block, num_blocks)
    np.testing.assert_array_equal(actual, expected)


def test_counter_overflow_is_refused():
    key = _noise.leaf_key(0, "w")
    with pytest.raises(OverflowError, match="noise counter"):
        _noise.raw_words(NUMPY, key, 2**64, 0, 1)


def test_known_normals_are_pinned():
    """The whole definition (key derivation, counter layout, transform) is frozen."""
    values = _noise.normals(NUMPY, _noise.leaf_key(0, "w"), 0, 0, 2, 5, np.float64)
    expected = np.array(
        [
            [-0.4303301493, 0.1890587103, 1.9493664791, 1.3171746752, 0.5001022289],
            [0.3230637516, 2.0961608260, -0.5823252466, -0.8090406812, -0.7957213403],
        ]
    )
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-9)


def test_keys_differ_by_seed_and_leaf_and_are_stable():
    assert not np.array_equal(_noise.leaf_key(0, "a"), _noise.leaf_key(0, "b"))
    assert not np.array_equal(_noise.leaf_key(0, "a"), _noise.leaf_key(1, "a"))
    np.testing.assert_array_equal(_noise.leaf_key(7, "a/b"), _noise.leaf_key(7, "a/b"))


def test_normals_are_standard_normal():
    values = _noise.normals(NUMPY, _noise.leaf_key(3, "w"), 0, 0, 50, 4000, np.float64).ravel()
    assert abs(values.mean()) < 0.01
    assert abs(values.std() - 1) < 0.01
    assert stats.kstest(values, "norm").pvalue > 1e-3
    # Box-Muller pairs (cosine half vs sine half) are uncorrelated.
    member = _noise.normals(NUMPY, _noise.leaf_key(3, "w"), 0, 0, 1, 200_000, np.float64)[0]
    assert abs(np.corrcoef(member[:100_000], member[100_000:])[0, 1]) < 0.01


@settings(max_examples=30, deadline=None)
@given(
    first=st.integers(0, 50),
    count=st.integers(1, 6),
    pick=st.integers(0, 5),
    size=st.integers(1, 300),
    epoch=st.integers(0, 1000),
)
def test_any_member_is_generated_alone(first, count, pick, size, epoch):
    pick %= count
    key = _noise.leaf_key(11, "leaf")
    together = _noise.normals(NUMPY, key, epoch, first, count, size, np.float32)
    alone = _noise.normals(NUMPY, key, epoch, first + pick, 1, size, np.float32)
    np.testing.assert_array_equal(alone[0], together[pick])


def test_chunking_does_not_change_values(monkeypatch):
    key = _noise.leaf_key(5, "w")
    whole = _noise.normals(NUMPY, key, 2, 0, 9, 1000, np.float32)
    monkeypatch.setattr(_noise, "_CHUNK_NORMALS", 2048)
    np.testing.assert_array_equal(_noise.normals(NUMPY, key, 2, 0, 9, 1000, np.float32), whole)


def test_dtypes_differ_only_by_rounding(backend):
    key = _noise.leaf_key(1, "w")
    single = host(_noise.normals(backend, key, 4, 3, 8, 333, np.float32))
    double = host(_noise.normals(backend, key, 4, 3, 8, 333, np.float64))
    assert single.dtype == np.float32 and double.dtype == np.float64
    np.testing.assert_allclose(single, double, rtol=0, atol=5e-6)
    half = host(_noise.normals(backend, key, 4, 3, 8, 333, np.float16))
    assert half.dtype == np.float16


def test_backends_give_the_same_noise(backend):
    """Bits are identical everywhere; values agree up to rounding of log/sin/cos (1e-5)."""
    key = _noise.leaf_key(9, "w")
    expected = _noise.normals(NUMPY, key, 1, 2, 16, 777, np.float32)
    actual = host(_noise.normals(backend, key, 1, 2, 16, 777, np.float32))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
    bits = host(_noise.raw_words(backend, key, 1, 2, 16))
    np.testing.assert_array_equal(bits, _noise.raw_words(NUMPY, key, 1, 2, 16))
