"""Exact gradients by reverse mode for sequential models, in NumPy: the reference for the ES runs.

A :class:`Sequential` is a list of layer entries. Called with an :mod:`eggroll_opt.nn` layers
object it is an ordinary model function (a whole population through
:class:`~eggroll_opt.nn.PopulationLayers`, one tree through :class:`~eggroll_opt.nn.ParamsLayers`),
so one spec serves the strategies and gradient descent. :meth:`Sequential.loss_and_grad` runs
the same network forward on one parameter tree and back again;
:meth:`Sequential.torch_loss_and_grad` gets the same gradients from PyTorch's autograd on the
CPU, where PyTorch is installed (it is optional: ``pip install torch``).

Conventions are those of :mod:`eggroll_opt.nn`: layer ``name`` reads ``params[name]["w"]`` and
the optional ``params[name]["b"]``; a dense ``w`` is (out, in) and the layer computes
``x @ w.T + b``; a conv2d ``w`` is (out, in, kh, kw), a cross-correlation on NCHW inputs.

Example:
    >>> import numpy as np
    >>> from eggroll_opt import nn
    >>> model = Sequential([("dense", "hidden"), ("tanh",), ("dense", "out")])
    >>> rng = np.random.default_rng(0)
    >>> params = {"hidden": {"w": rng.standard_normal((8, 3)), "b": np.zeros(8)},
    ...           "out": {"w": rng.standard_normal((2, 8))}}
    >>> x = rng.standard_normal((5, 3))
    >>> model(nn.ParamsLayers(params), x).shape
    (5, 2)
    >>> loss, grads = model.loss_and_grad(params, x, np.zeros((5, 2)), "mse")
    >>> grads["hidden"]["w"].shape, grads["out"].keys()
    ((8, 3), dict_keys(['w']))
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import numpy as np

from eggroll_opt import nn
from eggroll_opt._conv import patches

LOSSES = ("mse", "cross_entropy")
GRADIENTS = ("numpy", "torch")
_ARITY = {"dense": 2, "conv2d": 4, "relu": 1, "tanh": 1, "flatten": 1}


class Sequential:
    """A feed-forward network given as a list of layer entries.

    Args:
        spec: entries ``("dense", name)``, ``("conv2d", name, stride, padding)``, ``("relu",)``,
            ``("tanh",)`` or ``("flatten",)``, applied in order.

    Raises:
        ValueError: for an unknown entry or one with the wrong number of fields.
    """

    def __init__(self, spec: list[tuple]) -> None:
        for entry in spec:
            if not entry or entry[0] not in _ARITY or len(entry) != _ARITY[entry[0]]:
                raise ValueError(
                    f"unknown layer entry {entry!r}; use ('dense', name), "
                    "('conv2d', name, stride, padding), ('relu',), ('tanh',) or ('flatten',)."
                )
        self.spec = [tuple(entry) for entry in spec]

    def __repr__(self) -> str:
        return f"Sequential({self.spec!r})"

    def __call__(self, layers: Any, x: Any) -> Any:
        """The forward pass through an :mod:`eggroll_opt.nn` layers object."""
        for kind, *fields in self.spec:
            if kind == "dense":
                x = layers.dense(fields[0], x)
            elif kind == "conv2d":
                x = layers.conv2d(fields[0], x, stride=fields[1], padding=fields[2])
            elif kind == "relu":
                x = nn.relu(x)
            elif kind == "tanh":
                x = nn.tanh(x)
            else:
                x = layers.flatten(x)
        return x

    def loss_and_grad(
        self, params: Mapping[str, Any], x: Any, targets: Any, loss: str
    ) -> tuple[float, dict[str, Any]]:
        """The loss of one parameter tree on a batch and its gradient.

        Args:
            params: the parameter tree, ``{name: {"w": ..., "b": ...}}`` (NumPy arrays).
            x: a batch of inputs (batch, ...).
            targets: for ``"mse"`` an array of the output's shape; for ``"cross_entropy"``
                integer labels (batch,).
            loss: ``"mse"`` (mean over every output element) or ``"cross_entropy"`` (mean over
                the batch).

        Returns:
            ``(loss, grads)``, where ``grads`` has the nesting, shapes and dtypes of ``params``.
        """
        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}.")
        x = np.asarray(x)
        caches = []
        for kind, *fields in self.spec:
            caches.append(x)
            if kind == "dense":
                layer = params[fields[0]]
                x = x @ layer["w"].T
                if "b" in layer:
                    x = x + layer["b"]
            elif kind == "conv2d":
                x, cache = _conv_forward(params[fields[0]], x, fields[1], fields[2])
                caches[-1] = cache
            elif kind == "relu":
                x = np.maximum(x, 0)
            elif kind == "tanh":
                x = np.tanh(x)
                caches[-1] = x
            else:
                x = x.reshape(x.shape[0], -1)
        value, grad = _loss(x, targets, loss)

        grads: dict[str, Any] = {}
        for (kind, *fields), cache in zip(reversed(self.spec), reversed(caches), strict=True):
            if kind == "dense":
                layer = params[fields[0]]
                layer_grads = {"w": grad.T @ cache}
                if "b" in layer:
                    layer_grads["b"] = grad.sum(axis=0)
                _accumulate(grads, fields[0], layer_grads, layer)
                grad = grad @ layer["w"]
            elif kind == "conv2d":
                layer = params[fields[0]]
                layer_grads, grad = _conv_backward(layer, grad, cache, fields[1], fields[2])
                _accumulate(grads, fields[0], layer_grads, layer)
            elif kind == "relu":
                grad = grad * (cache > 0)
            elif kind == "tanh":
                grad = grad * (1 - cache * cache)
            else:
                grad = grad.reshape(cache.shape)
        return value, {name: grads[name] for name in params if name in grads}

    def torch_loss_and_grad(
        self, params: Mapping[str, Any], x: Any, targets: Any, loss: str
    ) -> tuple[float, dict[str, Any]]:
        """:meth:`loss_and_grad` computed by PyTorch's autograd on the CPU (NumPy in and out)."""
        import torch
        import torch.nn.functional as F

        if loss not in LOSSES:
            raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}.")
        leaves = {
            name: {
                key: torch.from_numpy(np.array(value)).requires_grad_()
                for key, value in layer.items()
            }
            for name, layer in params.items()
        }
        # The input in the parameters' dtype (torch does not promote between them as NumPy does).
        dtype = next(leaf for layer in leaves.values() for leaf in layer.values()).dtype
        h = torch.as_tensor(np.array(x), dtype=dtype)
        for kind, *fields in self.spec:
            if kind == "dense":
                h = F.linear(h, leaves[fields[0]]["w"], leaves[fields[0]].get("b"))
            elif kind == "conv2d":
                layer = leaves[fields[0]]
                h = F.conv2d(h, layer["w"], layer.get("b"), stride=fields[1], padding=fields[2])
            elif kind == "relu":
                h = torch.relu(h)
            elif kind == "tanh":
                h = torch.tanh(h)
            else:
                h = h.reshape(h.shape[0], -1)
        if loss == "mse":
            value = ((h - torch.as_tensor(np.asarray(targets), dtype=h.dtype)) ** 2).mean()
        else:
            value = F.cross_entropy(h, torch.as_tensor(np.asarray(targets), dtype=torch.long))
        value.backward()
        grads = {
            name: {key: leaf.grad.numpy() for key, leaf in layer.items() if leaf.grad is not None}
            for name, layer in leaves.items()
        }
        return float(value.detach()), {name: layer for name, layer in grads.items() if layer}


def torch_available() -> bool:
    """Whether PyTorch can be imported (it is not a dependency of the project)."""
    return importlib.util.find_spec("torch") is not None


class Descent:
    """Gradient descent on a :class:`Sequential`'s exact gradients, updating ``params`` in place.

    ``optimizer`` is an :mod:`eggroll_opt.optim` transformation (``optim.adam(lr)``,
    ``optim.momentum(lr)``, ...), the same ones the strategies use; they work on flat
    ``{"layer/key": array}`` dicts, whose leaves here are the arrays of ``params`` themselves.
    ``gradients`` says where the gradients come from: ``"numpy"`` (this module's reverse mode)
    or ``"torch"`` (PyTorch's autograd; the update is the same NumPy arithmetic either way).
    """

    def __init__(
        self, model: Sequential, params: dict[str, Any], optimizer: Any, gradients: str = "numpy"
    ) -> None:
        if gradients not in GRADIENTS:
            raise ValueError(f"`gradients` must be one of {GRADIENTS}, got {gradients!r}.")
        if gradients == "torch" and not torch_available():
            raise ValueError("`gradients='torch'` needs PyTorch: pip install torch.")
        self.model, self.params, self.optimizer = model, params, optimizer
        self._loss_and_grad = (
            model.torch_loss_and_grad if gradients == "torch" else model.loss_and_grad
        )
        self._flat = _paths(params)
        self._state = optimizer.init(self._flat)

    def step(self, x: np.ndarray, targets: Any, loss: str) -> float:
        """One step on the batch ``(x, targets)``; returns the loss before the step."""
        value, grads = self._loss_and_grad(self.params, x, targets, loss)
        updates, self._state = self.optimizer.update(_paths(grads), self._state, self._flat)
        for path, update in updates.items():
            self._flat[path] += update
        return value


def _paths(tree: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{"layer/key": leaf}`` views of a two-level parameter tree (the leaves are not copied)."""
    return {f"{name}/{key}": leaf for name, layer in tree.items() for key, leaf in layer.items()}


def _accumulate(
    grads: dict[str, Any], name: str, layer_grads: dict[str, Any], layer: Mapping[str, Any]
) -> None:
    """Add one use of layer ``name`` to ``grads`` (a layer may appear more than once)."""
    if name in grads:
        for key, value in layer_grads.items():
            grads[name][key] += value.astype(layer[key].dtype, copy=False)
    else:
        grads[name] = {k: np.asarray(v, dtype=layer[k].dtype) for k, v in layer_grads.items()}


def _loss(outputs: np.ndarray, targets: Any, loss: str) -> tuple[float, np.ndarray]:
    if loss == "mse":
        difference = outputs - np.asarray(targets, dtype=outputs.dtype)
        return float(np.mean(difference**2)), difference * (2.0 / difference.size)
    labels = np.asarray(targets)
    rows = np.arange(len(labels))
    log_probs = nn.log_softmax(outputs)
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return float(-log_probs[rows, labels].mean()), grad / len(labels)


def _conv_forward(
    layer: Mapping[str, Any], x: np.ndarray, stride: int, padding: int
) -> tuple[np.ndarray, tuple]:
    kernel = layer["w"]
    columns, (out_h, out_w) = patches(x, tuple(kernel.shape[2:]), stride, padding)
    out = kernel.reshape(kernel.shape[0], -1) @ columns  # (out, H_out·W_out·batch)
    out = out.reshape(-1, out_h, out_w, x.shape[0]).transpose(3, 0, 1, 2)
    if "b" in layer:
        out = out + layer["b"][:, None, None]
    return np.ascontiguousarray(out), (columns, x.shape)


def _conv_backward(
    layer: Mapping[str, Any], grad: np.ndarray, cache: tuple, stride: int, padding: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    columns, x_shape = cache
    kernel = layer["w"]
    out_channels, channels, kh, kw = kernel.shape
    batch, _, out_h, out_w = grad.shape
    flat = grad.transpose(1, 2, 3, 0).reshape(out_channels, -1)  # (out, H_out·W_out·batch)
    grads = {"w": (flat @ columns.T).reshape(kernel.shape)}
    if "b" in layer:
        grads["b"] = grad.sum(axis=(0, 2, 3))
    # col2im: scatter each kernel offset's column gradient back onto the (padded) input.
    d_columns = (kernel.reshape(out_channels, -1).T @ flat).reshape(
        channels, kh, kw, out_h, out_w, batch
    )
    height, width = x_shape[-2] + 2 * padding, x_shape[-1] + 2 * padding
    d_x = np.zeros((batch, channels, height, width), dtype=d_columns.dtype)
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    for i in range(kh):
        for j in range(kw):
            d_x[:, :, i : i + rows : stride, j : j + cols : stride] += d_columns[:, i, j].transpose(
                3, 0, 1, 2
            )
    if padding:
        d_x = d_x[:, :, padding:-padding, padding:-padding]
    return grads, d_x
