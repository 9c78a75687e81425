"""The math of the sequence layers in :mod:`eggroll_opt.nn`, written once for both layer kinds.

Sequences are laid out ``(..., batch, T, features)``. Each function takes arrays of one library
(NumPy or CuPy, found from the arrays themselves) and parameter values that broadcast against
them: :class:`~eggroll_opt.nn.PopulationLayers` passes every member's values with a leading
member axis (``(N, 1, 1, d)`` for a norm's scale), :class:`~eggroll_opt.nn.ParamsLayers` one
parameter tree's (``(d,)``). Both classes therefore compute the same thing, and a population's
output for member ``i`` is the single-tree output of ``pop[i].params()``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._backend import host_values, namespace_of


def check_tokens(tokens: Any, vocab: int, *, argument: str = "tokens", table: str = "") -> None:
    """Raise unless ``tokens`` are integer ids in ``[0, vocab)`` over at least one time step.

    ``tokens`` is an array laid out ``(..., batch, T)``. Its smallest and largest ids come back
    to the host together (one read-back on a GPU).

    Raises:
        TypeError: for ids that are not integers (floats, booleans).
        ValueError: for fewer than two axes, an empty batch or sequence, or an id outside
            ``[0, vocab)``.
    """
    if tokens.dtype == np.bool_ or not np.issubdtype(tokens.dtype, np.integer):
        raise TypeError(f"`{argument}` must hold integer token ids, got dtype {tokens.dtype}.")
    if tokens.ndim < 2 or 0 in tokens.shape:
        raise ValueError(
            f"`{argument}` must be (batch, T) token ids with batch >= 1 and T >= 1, got shape "
            f"{tuple(tokens.shape)}."
        )
    xp = namespace_of(tokens)
    low, high = (int(v) for v in host_values(xp.stack([tokens.min(), tokens.max()])))
    if low < 0 or high >= vocab:
        where = f" of the embedding {table!r}" if table else ""
        raise ValueError(
            f"`{argument}` holds the id {low if low < 0 else high}, outside the vocabulary "
            f"[0, {vocab}){where}."
        )


def check_sequence(x: Any, width: int, *, layer: str, argument: str = "x") -> None:
    """Raise unless ``x`` is ``(..., batch, T, width)`` with ``T >= 1``.

    Raises:
        ValueError: naming ``argument``, the layer and the shape received.
    """
    if x.ndim < 3 or x.shape[-2] < 1 or x.shape[-3] < 1:
        raise ValueError(
            f"`{argument}` of layer {layer!r} must be (batch, T, features) with batch >= 1 and "
            f"T >= 1, got shape {tuple(x.shape)}."
        )
    if x.shape[-1] != width:
        raise ValueError(
            f"layer {layer!r} expects {width} features in the last axis of `{argument}`, got "
            f"shape {tuple(x.shape)}."
        )


def sigmoid(x: Any) -> Any:
    """1 / (1 + exp(-x)), computed stably as ``(tanh(x / 2) + 1) / 2`` (``nn.sigmoid``)."""
    return 0.5 * (namespace_of(x).tanh(0.5 * x) + 1)


def layer_norm(x: Any, scale: Any, bias: Any | None, eps: float) -> Any:
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (Ba et al., 2016)."""
    xp = namespace_of(x)
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    out = centred / xp.sqrt(variance + eps) * scale
    return out if bias is None else out + bias


def rms_norm(x: Any, scale: Any, eps: float) -> Any:
    """``x / sqrt(mean(x²) + eps) * scale`` over the last axis (Zhang & Sennrich, 2019)."""
    xp = namespace_of(x)
    return x / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * scale


def min_gru(projected: Any, h0: Any | None) -> Any:
    """The minGRU recurrence over time, from the input projections of every time step.

    ``projected`` is ``(..., T, 2h)``: the gate pre-activations in its first ``h`` features and
    the candidate states in the last ``h``. With ``z_t = sigmoid(gate_t)`` (Feng et al., 2024,
    "Were RNNs All We Needed?")::

        h_t = (1 - z_t) * h_{t-1} + z_t * candidate_t

    element-wise, from ``h0`` (zeros when None; it broadcasts against ``(..., h)``). Both
    ``1 - z_t`` and ``z_t * candidate_t`` are computed for all steps at once; the loop over time
    then does one multiply-add per step on the whole population. Returns ``(..., T, h)``.
    """
    xp = namespace_of(projected)
    width = projected.shape[-1] // 2
    gate = sigmoid(projected[..., :width])
    keep = 1 - gate
    drive = gate * projected[..., width:]
    state = drive[..., 0, :] if h0 is None else keep[..., 0, :] * h0 + drive[..., 0, :]
    out = xp.empty((*state.shape[:-1], projected.shape[-2], width), dtype=state.dtype)
    out[..., 0, :] = state
    for step in range(1, projected.shape[-2]):
        state = keep[..., step, :] * state + drive[..., step, :]
        out[..., step, :] = state
    return out


def causal_attention(query: Any, key: Any, value: Any, heads: int) -> Any:
    """Multi-head scaled dot-product attention where step ``t`` sees steps ``<= t`` only.

    ``query`` and ``key`` are ``(..., T, d_k)``, ``value`` ``(..., T, d_v)``, each split into
    ``heads`` heads of ``d_k / heads`` (``d_v / heads``) features. Per head (Vaswani et al.,
    2017, eq. 1, with a causal mask)::

        softmax(Q K^T / sqrt(d_head) + M) V,   M[t, s] = -inf for s > t, else 0

    The softmax subtracts each row's maximum (finite: the diagonal is never masked). Returns
    ``(..., T, d_v)``, the heads concatenated.
    """
    xp = namespace_of(query)
    length = query.shape[-2]

    def split(array: Any) -> Any:  # (..., T, d) -> (..., heads, T, d / heads)
        per_head = array.reshape(*array.shape[:-1], heads, array.shape[-1] // heads)
        return xp.swapaxes(per_head, -2, -3)

    head_width = query.shape[-1] // heads
    scores = split(query * (1 / math.sqrt(head_width))) @ xp.swapaxes(split(key), -1, -2)
    future = xp.triu(xp.ones((length, length), dtype=bool), 1)
    scores = xp.where(future, -xp.inf, scores)
    weights = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    out = xp.swapaxes(weights @ split(value), -2, -3)  # (..., T, heads, d_v / heads)
    return out.reshape(*out.shape[:-2], value.shape[-1])
