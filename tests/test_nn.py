"""Population-batched layers equal per-member evaluation of materialised members."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eggroll_opt as eo
from eggroll_opt import _population, _relu, nn
from tests.conftest import host, make_backend


def _reference_conv(x, kernel, bias, stride, padding):
    """Direct loops over output positions: the definition of cross-correlation."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    out_c, _, kh, kw = kernel.shape
    out_h = (x.shape[2] - kh) // stride + 1
    out_w = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], out_c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", window, kernel)
    return out + bias[:, None, None]


@settings(max_examples=25, deadline=None)
@given(
    channels=st.integers(1, 3),
    out_channels=st.integers(1, 4),
    size=st.integers(3, 7),
    kernel_h=st.integers(1, 3),
    kernel_w=st.integers(1, 3),
    stride=st.integers(1, 3),
    padding=st.integers(0, 2),
    layout=st.sampled_from(["c", "fortran", "batch innermost"]),
    rank=st.integers(1, 2),
    per_member=st.booleans(),
    kind=st.sampled_from(["lowrank", "full"]),
    backend_name=st.sampled_from(["numpy", "numpy-arrays"]),
    member_matrices=st.sampled_from([None, True, False]),
)
def test_population_conv2d_equals_each_member(
    channels,
    out_channels,
    size,
    kernel_h,
    kernel_w,
    stride,
    padding,
    layout,
    rank,
    per_member,
    kind,
    backend_name,
    member_matrices,
):
    """Every way to a member's convolution equals the definition: inputs in any memory order
    (a previous convolution hands on the batch innermost), per-member inputs through each
    member's kernel or through the low-rank product (None: the size rule picks)."""
    rng = np.random.default_rng(size)
    params = {
        "conv": {
            "w": rng.standard_normal((out_channels, channels, kernel_h, kernel_w)),
            "b": rng.standard_normal(out_channels),
        }
    }
    rank = min(rank, out_channels, channels * kernel_h * kernel_w)
    es = eo.Eggroll(
        params,
        popsize=4,
        sigma=0.2,
        learning_rate=0.1,
        rank=rank,
        seed=1,
        noise_kinds={"conv/w": kind},
        backend=make_backend(backend_name),
    )
    pop = es.ask()
    x = rng.standard_normal(
        (4, 2, channels, size, size) if per_member else (2, channels, size, size)
    )
    if layout == "fortran":  # same values, reversed strides: the windows must follow x's strides
        x = np.asfortranarray(x)
    elif layout == "batch innermost":
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, -4, -1)), -1, -4)
    rule = _population.use_member_matrices
    forced = rule if member_matrices is None else lambda shape, length: member_matrices
    with mock.patch.object(_population, "use_member_matrices", forced):
        out = host(nn.PopulationLayers(pop).conv2d("conv", x, stride=stride, padding=padding))
    for i in range(4):
        member = host(pop[i].params())["conv"]
        member_x = x[i] if per_member else x
        expected = _reference_conv(member_x, member["w"], member["b"], stride, padding)
        np.testing.assert_allclose(out[i], expected, rtol=1e-9, atol=1e-9)
        single = host(
            nn.ParamsLayers(pop[i].params()).conv2d(
                "conv", member_x, stride=stride, padding=padding
            )
        )
        np.testing.assert_allclose(single, expected, rtol=1e-9, atol=1e-9)


def _cnn(layers, x):
    h = nn.relu(layers.conv2d("c1", x, padding=1))
    h = nn.max_pool2d(h, 2)
    h = nn.tanh(layers.conv2d("c2", h, stride=2))
    h = layers.flatten(h)
    return layers.dense("out", nn.relu(layers.dense("fc", h)))


def test_a_small_cnn_written_once_runs_for_the_population_and_for_one_member(backend):
    rng = np.random.default_rng(0)
    params = {
        "c1": {
            "w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32) * 0.3,
            "b": np.zeros(4, np.float32),
        },
        "c2": {
            "w": rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * 0.3,
            "b": np.zeros(6, np.float32),
        },
        "fc": {
            "w": rng.standard_normal((16, 24)).astype(np.float32) * 0.3,
            "b": np.zeros(16, np.float32),
        },
        "out": {"w": rng.standard_normal((3, 16)).astype(np.float32) * 0.3},
    }
    es = eo.Eggroll(params, popsize=6, sigma=0.1, learning_rate=0.1, seed=2, backend=backend)
    pop = es.ask()
    x = backend.xp.asarray(rng.standard_normal((5, 1, 10, 10)), dtype=np.float32)
    logits = host(_cnn(nn.PopulationLayers(pop), x))
    assert logits.shape == (6, 5, 3)
    for i in range(6):
        single = host(_cnn(nn.ParamsLayers(pop[i].params()), x))
        np.testing.assert_allclose(logits[i], single, rtol=1e-4, atol=1e-5)
    labels = np.array([0, 1, 2, 0, 1])
    losses = host(nn.cross_entropy(backend.xp.asarray(logits), labels))
    accuracies = host(nn.accuracy(backend.xp.asarray(logits), labels))
    assert losses.shape == (6,) and accuracies.shape == (6,)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(losses, -log_probs[:, np.arange(5), labels].mean(-1), rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    row=st.integers(1, 9),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
    view=st.sampled_from(["c", "permuted", "fortran", "sliced", "reversed"]),
)
def test_relu_equals_maximum_bit_for_bit(shape, row, dtype, seed, view):
    """The fast ReLU is np.maximum(x, 0): same bits (NaN, -0.0, inf), dtype and memory order,
    over whole rows of zeros and a tail (rows of ``row`` values instead of 2**14)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(int(np.prod(shape)))
    specials = rng.integers(0, values.size, 3)
    values[specials] = [np.nan, -0.0, -np.inf][: len(specials)]
    base = values.astype(dtype).reshape(shape)
    x = {
        "c": base,
        "permuted": np.moveaxis(base, -1, 0),
        "fortran": np.asfortranarray(base),
        "sliced": base[..., ::2],
        "reversed": base[..., ::-1],
    }[view]
    with mock.patch.object(_relu, "ROW", row):
        out = nn.relu(x)
    expected = np.maximum(x, 0)
    assert out.dtype == expected.dtype and out.shape == expected.shape
    bits = [np.ascontiguousarray(a).view(np.uint8) for a in (out, expected)]
    np.testing.assert_array_equal(*bits)

    def layout(a):  # the strides that matter: those of axes longer than 1
        return [stride for stride, n in zip(a.strides, a.shape, strict=True) if n > 1]

    assert layout(out) == layout(expected)
    assert not np.shares_memory(out, x)


def test_relu_keeps_a_convolution_output_a_batch_innermost_view():
    memory = np.random.default_rng(0).standard_normal((2, 8, 5, 5, 128)).astype(np.float32)
    x = np.moveaxis(memory, -1, 1)  # (N, batch, C, H, W) over (N, C, H, W, batch) memory
    out = nn.relu(x)
    assert out.strides == x.strides
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    assert nn.relu(np.array([-1, 2])).tolist() == [0, 2]  # integers: NumPy's own maximum


def test_activations_and_pooling():
    x = np.array([[-1.0, 2.0], [3.0, -4.0]])
    np.testing.assert_array_equal(nn.relu(x), [[0, 2], [3, 0]])
    np.testing.assert_allclose(nn.sigmoid(x), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(nn.softmax(x).sum(-1), 1.0)
    np.testing.assert_allclose(nn.log_softmax(np.array([1000.0, 0.0])), [0.0, -1000.0])
    grid = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(nn.max_pool2d(grid, 2)[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(nn.avg_pool2d(grid, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        nn.max_pool2d(grid, 0)


def test_layer_errors_name_the_problem():
    es = eo.Eggroll(
        {"c": {"w": np.zeros((2, 3, 3, 3))}, "d": {"w": np.zeros((2, 4))}},
        popsize=2,
        sigma=0.1,
        learning_rate=0.1,
        seed=0,
        backend="numpy",
    )
    layers = nn.PopulationLayers(es.ask())
    with pytest.raises(ValueError, match="expects 3 input channels"):
        layers.conv2d("c", np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        layers.conv2d("c", np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match="must be a conv kernel"):
        layers.conv2d("d", np.zeros((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="leading member axis of 2"):
        layers.dense("d", np.zeros((3, 1, 4)))
    with pytest.raises(KeyError, match="no leaf 'e/w'"):
        nn.ParamsLayers(es.params).dense("e", np.zeros((1, 4)))


_LEFT_NDIMS: list[int] = []


class _MatmulRecorder(np.ndarray):
    """An array that notes the number of axes of its side of every ``@`` in ``_LEFT_NDIMS``."""

    def __matmul__(self, other):
        _LEFT_NDIMS.append(self.ndim)
        return np.asarray(self) @ other


def test_params_layers_run_a_sequence_batch_as_one_gemm():
    # A stacked matmul of (batch, T, n) by (n, m) was 15-30x slower than one GEMM over batch·T
    # rows in NumPy, which made plain inference of a sequence model a poor baseline.
    rng = np.random.default_rng(0)
    layers = nn.ParamsLayers({"out": {"w": rng.normal(size=(5, 3)), "b": rng.normal(size=5)}})
    x = rng.normal(size=(4, 6, 3))
    _LEFT_NDIMS.clear()
    out = layers.dense_per_step("out", x.view(_MatmulRecorder))
    assert _LEFT_NDIMS == [2]
    assert out.shape == (4, 6, 5)
    np.testing.assert_allclose(np.asarray(out), x @ layers._get("out/w").T + layers._get("out/b"))
    assert layers.dense("out", x[0, 0]).shape == (5,)  # one input vector keeps its shape


def test_host_inputs_and_lists_reach_the_layers_device(backend):
    """A NumPy input (per member, or a list for one tree) goes to the population's device first,
    whichever path the convolution takes there."""
    rng = np.random.default_rng(4)
    params = {
        "c": {"w": rng.standard_normal((4, 2, 3, 3)), "b": rng.standard_normal(4)},
        "d": {"w": rng.standard_normal((2, 3))},
    }
    es = eo.Eggroll(params, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend=backend)
    pop = es.ask()
    x = rng.standard_normal((4, 3, 2, 8, 8))  # host memory, one input per member
    out = host(nn.PopulationLayers(pop).conv2d("c", x, padding=1))
    assert out.shape == (4, 3, 4, 8, 8)
    for i in range(4):
        member = host(pop[i].params())["c"]
        np.testing.assert_allclose(
            out[i], _reference_conv(x[i], member["w"], member["b"], 1, 1), rtol=1e-9, atol=1e-9
        )
    dense = host(nn.ParamsLayers(es.params).dense("d", [1.0, 2.0, 3.0]))
    np.testing.assert_allclose(dense, host(es.params)["d"]["w"] @ [1.0, 2.0, 3.0])
