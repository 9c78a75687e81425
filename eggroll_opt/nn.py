"""Population-batched building blocks: write a network once, evaluate all members at once.

A model is a plain function of a *layers* object and an input. Give it
:class:`PopulationLayers` to get every member's output in a few large array operations (no
member is materialised: weight matrices and convolution kernels go through
:meth:`~eggroll_opt.Population.linear`), or :class:`ParamsLayers` to run one parameter tree,
such as the strategy's mean. Outputs of the population carry a leading member axis.

Layer ``"name"`` reads the leaves ``"name/w"`` (required) and ``"name/b"`` (optional bias).

Example:
    >>> import numpy as np, eggroll_opt as eo
    >>> from eggroll_opt import nn
    >>> def model(layers, x):
    ...     return layers.dense("out", nn.relu(layers.dense("hidden", x)))
    >>> params = {"hidden": {"w": np.ones((8, 3)), "b": np.zeros(8)},
    ...           "out": {"w": np.ones((2, 8)), "b": np.zeros(2)}}
    >>> es = eo.Eggroll(params, popsize=4, sigma=0.1, learning_rate=0.1, seed=0,
    ...                 backend="numpy")
    >>> x = np.ones((5, 3))
    >>> model(nn.PopulationLayers(es.ask()), x).shape     # (members, batch, outputs)
    (4, 5, 2)
    >>> model(nn.ParamsLayers(es.params), x).shape        # (batch, outputs)
    (5, 2)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._backend import is_cupy_array, namespace_of, to_numpy
from ._population import Population
from ._tree import flatten

__all__ = [
    "ParamsLayers",
    "PopulationLayers",
    "accuracy",
    "avg_pool2d",
    "cross_entropy",
    "log_softmax",
    "max_pool2d",
    "relu",
    "sigmoid",
    "softmax",
    "tanh",
]


def relu(x: Any) -> Any:
    """max(x, 0)."""
    return namespace_of(x).maximum(x, 0)


def tanh(x: Any) -> Any:
    """Hyperbolic tangent."""
    return namespace_of(x).tanh(x)


def sigmoid(x: Any) -> Any:
    """1 / (1 + exp(-x)), computed stably."""
    xp = namespace_of(x)
    return 0.5 * (xp.tanh(0.5 * x) + 1)


def log_softmax(x: Any, axis: int = -1) -> Any:
    """log(softmax(x)) along ``axis``, computed stably."""
    xp = namespace_of(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x: Any, axis: int = -1) -> Any:
    """exp(x) / sum(exp(x)) along ``axis``."""
    return namespace_of(x).exp(log_softmax(x, axis))


def cross_entropy(logits: Any, labels: Any) -> Any:
    """Mean negative log-likelihood of integer ``labels`` (batch,) under ``logits`` (..., batch, C).

    Returns one value per leading index: a fitness per member for population logits.
    """
    xp = namespace_of(logits)
    labels = xp.asarray(labels)
    picked = log_softmax(logits)[..., xp.arange(labels.shape[0]), labels]
    return -picked.mean(axis=-1)


def accuracy(logits: Any, labels: Any) -> Any:
    """Fraction of the batch whose arg-max class equals ``labels``; shape ``logits.shape[:-2]``."""
    xp = namespace_of(logits)
    return (logits.argmax(axis=-1) == xp.asarray(labels)).mean(axis=-1)


def _pool(x: Any, size: int, reduce: str) -> Any:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"`size` must be a positive int, got {size!r}.")
    height, width = x.shape[-2] // size, x.shape[-1] // size
    cropped = x[..., : height * size, : width * size]
    blocks = cropped.reshape(*x.shape[:-2], height, size, width, size)
    return getattr(blocks, reduce)(axis=(-3, -1))


def max_pool2d(x: Any, size: int) -> Any:
    """Non-overlapping ``size`` x ``size`` max pooling over the last two axes (H, W)."""
    return _pool(x, size, "max")


def avg_pool2d(x: Any, size: int) -> Any:
    """Non-overlapping ``size`` x ``size`` average pooling over the last two axes (H, W)."""
    return _pool(x, size, "mean")


def patches(
    x: Any, kernel: tuple[int, ...], stride: int, padding: int
) -> tuple[Any, tuple[int, int]]:
    """im2col with the batch folded into the columns: (..., B, C, H, W) -> (..., C·kh·kw, B·L).

    Row ``(c, i, j)`` follows the kernel's (C, kh, kw) order and column ``(b, y, x)`` is image
    ``b``'s output position, ``L = H_out · W_out``; so ``kernel.reshape(out, -1) @ columns``
    is the convolution, laid out (out, B, H_out, W_out). The windows are one strided view of
    the (zero-padded) input, written out in a single copy whose innermost runs go along an
    image row.
    """
    xp = namespace_of(x)
    if x.ndim < 4:
        raise ValueError(f"`x` must be (..., batch, C, H, W), got shape {tuple(x.shape)}.")
    kh, kw = kernel
    if padding:
        padded = xp.zeros(
            (*x.shape[:-2], x.shape[-2] + 2 * padding, x.shape[-1] + 2 * padding), x.dtype
        )
        padded[..., padding:-padding, padding:-padding] = x
        x = padded
    out_h = (x.shape[-2] - kh) // stride + 1
    out_w = (x.shape[-1] - kw) // stride + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(f"the input {tuple(x.shape[-2:])} is smaller than the kernel {kernel}.")
    *lead, batch, channels = x.shape[:-2]
    *lead_strides, batch_stride, channel_stride, row_stride, column_stride = x.strides
    windows = xp.lib.stride_tricks.as_strided(  # (..., C, kh, kw, B, H_out, W_out), a view
        x,
        (*lead, channels, kh, kw, batch, out_h, out_w),
        (
            *lead_strides,
            channel_stride,
            row_stride,
            column_stride,
            batch_stride,
            row_stride * stride,
            column_stride * stride,
        ),
    )
    columns = windows.reshape(*lead, channels * kh * kw, batch * out_h * out_w)
    return columns, (out_h, out_w)


def _images_first(out: Any, batch: int, out_h: int, out_w: int) -> Any:
    """(..., out, B·H·W) -> (..., B, out, H, W), contiguous."""
    xp = namespace_of(out)
    out = out.reshape(*out.shape[:-2], out.shape[-2], batch, out_h, out_w)
    return xp.ascontiguousarray(xp.swapaxes(out, -4, -3))


def _check_conv_input(x: Any, kernel_shape: tuple[int, ...], prefix: str) -> None:
    if len(kernel_shape) != 4:
        raise ValueError(
            f"`{prefix}/w` must be a conv kernel (out, in, kh, kw), got shape {kernel_shape}."
        )
    if x.shape[-3] != kernel_shape[1]:
        raise ValueError(
            f"conv {prefix!r} expects {kernel_shape[1]} input channels, got x of shape "
            f"{tuple(x.shape)}."
        )


class PopulationLayers:
    """Layers that evaluate every member of a :class:`~eggroll_opt.Population` at once.

    Inputs are either shared by all members (no member axis, e.g. a data batch) or per member
    (a leading axis of length ``popsize``, e.g. the output of a previous layer); outputs always
    have the member axis.
    """

    def __init__(self, population: Population) -> None:
        self._pop = population
        self._biases: dict[str, Any] = {}

    @property
    def population(self) -> Population:
        """The population being evaluated."""
        return self._pop

    def _is_shared(self, x: Any, item_ndim: int) -> bool:
        if x.ndim == item_ndim + 1:
            return True
        if x.ndim == item_ndim + 2 and x.shape[0] == len(self._pop):
            return False
        raise ValueError(
            f"`x` must have {item_ndim + 1} axes (shared) or {item_ndim + 2} with a leading "
            f"member axis of {len(self._pop)}, got shape {tuple(x.shape)}."
        )

    def _bias(self, prefix: str) -> Any:
        path = f"{prefix}/b"
        if path not in self._biases:
            try:
                self._biases[path] = self._pop.stacked(path)
            except KeyError:
                self._biases[path] = None
        return self._biases[path]

    def dense(self, prefix: str, x: Any) -> Any:
        """``x @ w.T + b`` per member: (batch, n) or (N, batch, n) -> (N, batch, m)."""
        self._is_shared(x, 1)
        out = self._pop.linear(f"{prefix}/w", x)
        bias = self._bias(prefix)
        if bias is not None:
            out += bias[:, None, :]
        return out

    def conv2d(self, prefix: str, x: Any, *, stride: int = 1, padding: int = 0) -> Any:
        """2-D convolution (cross-correlation, as in deep-learning libraries) per member.

        ``x`` is (batch, C, H, W) shared or (N, batch, C, H, W) per member; the kernel leaf
        ``prefix/w`` is (out, C, kh, kw) and its low-rank noise perturbs the (out, C·kh·kw)
        matrix, so the population costs one GEMM on the im2col patches (per member, or one for
        all with a shared input) plus thin corrections (:meth:`Population.matmul`).
        Returns (N, batch, out, H_out, W_out).
        """
        self._is_shared(x, 3)
        kernel_shape = self._pop.leaf_shape(f"{prefix}/w")
        _check_conv_input(x, kernel_shape, prefix)
        columns, (out_h, out_w) = patches(x, kernel_shape[2:], stride, padding)
        out = self._pop.matmul(f"{prefix}/w", columns)  # (N, out, batch·H·W)
        out = _images_first(out, x.shape[-4], out_h, out_w)
        bias = self._bias(prefix)
        if bias is not None:
            out += bias[:, None, :, None, None]
        return out

    def flatten(self, x: Any) -> Any:
        """(N, batch, ...) -> (N, batch, features)."""
        return x.reshape(x.shape[0], x.shape[1], -1)


def _on_device_of(weight: Any, x: Any) -> Any:
    """``x`` on the array library of ``weight`` (one explicit copy if they differ)."""
    if is_cupy_array(weight) == is_cupy_array(x):
        return x
    return namespace_of(weight).asarray(to_numpy(x))


class ParamsLayers:
    """The same layers for a single parameter tree (the mean, or one member's params)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = flatten(params)

    def _get(self, path: str) -> Any:
        if path not in self._params:
            raise KeyError(f"no leaf {path!r}; leaves are {list(self._params)}.")
        return self._params[path]

    def dense(self, prefix: str, x: Any) -> Any:
        """``x @ w.T + b``: (batch, n) -> (batch, m); ``x`` is moved to the weights' device."""
        weight = self._get(f"{prefix}/w")
        out = _on_device_of(weight, x) @ weight.T
        if f"{prefix}/b" in self._params:
            out = out + self._params[f"{prefix}/b"]
        return out

    def conv2d(self, prefix: str, x: Any, *, stride: int = 1, padding: int = 0) -> Any:
        """2-D convolution: (batch, C, H, W) -> (batch, out, H_out, W_out), on the kernel's
        device."""
        kernel = self._get(f"{prefix}/w")
        x = _on_device_of(kernel, x)
        _check_conv_input(x, tuple(kernel.shape), prefix)
        columns, (out_h, out_w) = patches(x, tuple(kernel.shape[2:]), stride, padding)
        out = _images_first(kernel.reshape(kernel.shape[0], -1) @ columns, x.shape[0], out_h, out_w)
        if f"{prefix}/b" in self._params:
            out = out + self._params[f"{prefix}/b"][:, None, None]
        return out

    def flatten(self, x: Any) -> Any:
        """(batch, ...) -> (batch, features)."""
        return x.reshape(x.shape[0], -1)
