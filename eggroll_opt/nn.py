"""Population-batched building blocks: write a network once, evaluate all members at once.

A model is a plain function of a *layers* object and an input. Give it
:class:`PopulationLayers` to get every member's output in a few large array operations (no
member is materialised: weight matrices and convolution kernels go through
:meth:`~eggroll_opt.Population.linear`), or :class:`ParamsLayers` to run one parameter tree,
such as the strategy's mean. Outputs of the population carry a leading member axis.

Layer ``"name"`` reads the leaves ``"name/w"`` (required) and ``"name/b"`` (optional bias).

Sequence layers take (batch, T, features) or integer token ids (batch, T), shared or with the
leading member axis, and give (members, batch, T, ...): ``embedding`` (a (vocab, d) table
``"name/w"``), ``layer_norm`` and ``rms_norm`` (1-D ``"name/scale"``, ``"name/bias"``),
``min_gru`` (``"name/w"`` of shape (2·hidden, inputs)), ``causal_attention`` (dense layers
``"name/q"``, ``"name/k"``, ``"name/v"``, ``"name/o"``) and ``dense_per_step``;
:func:`sequence_cross_entropy` gives each member's loss. Their math is written once, in
``eggroll_opt/_sequence.py``, for both layer classes.

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

A character-level language model, the same way:

    >>> def language_model(layers, tokens):
    ...     h = layers.min_gru("gru", layers.embedding("embed", tokens))
    ...     return layers.dense_per_step("out", layers.rms_norm("norm", h))
    >>> rng = np.random.default_rng(0)
    >>> params = {"embed": {"w": rng.normal(size=(27, 8))},
    ...           "gru": {"w": rng.normal(size=(2 * 16, 8))},
    ...           "norm": {"scale": np.ones(16)}, "out": {"w": rng.normal(size=(27, 16))}}
    >>> es = eo.Eggroll(params, popsize=4, sigma=0.1, learning_rate=0.1, seed=0,
    ...                 backend="numpy")
    >>> text = rng.integers(0, 27, (5, 12))              # 5 sequences of 12 token ids
    >>> logits = language_model(nn.PopulationLayers(es.ask()), text[:, :-1])
    >>> logits.shape                                     # (members, batch, T, vocab)
    (4, 5, 11, 27)
    >>> nn.sequence_cross_entropy(logits, text[:, 1:]).shape   # next-token loss per member
    (4,)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _conv, _population, _relu, _sequence
from ._backend import is_cupy_array, namespace_of, to_numpy
from ._population import Population
from ._tree import flatten

__all__ = [
    "ParamsLayers",
    "PopulationLayers",
    "accuracy",
    "avg_pool2d",
    "cross_entropy",
    "greedy_tokens",
    "log_softmax",
    "max_pool2d",
    "relu",
    "sample_tokens",
    "sequence_cross_entropy",
    "sigmoid",
    "softmax",
    "tanh",
]


def relu(x: Any) -> Any:
    """max(x, 0)."""
    if type(x) is np.ndarray:
        return _relu.relu(x)
    return namespace_of(x).maximum(x, 0)


def tanh(x: Any) -> Any:
    """Hyperbolic tangent."""
    return namespace_of(x).tanh(x)


def sigmoid(x: Any) -> Any:
    """1 / (1 + exp(-x)), computed stably."""
    return _sequence.sigmoid(x)


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


def sequence_cross_entropy(logits: Any, targets: Any) -> Any:
    """Mean negative log-likelihood of the token ids ``targets`` under ``logits``, per member.

    Args:
        logits: (..., batch, T, vocab); a population's are (N, batch, T, vocab).
        targets: integer ids in ``[0, vocab)``, shape (batch, T) (shared by every leading
            index) or ``logits.shape[:-1]``; moved to the device of ``logits`` if they are not
            there.

    Returns:
        ``logsumexp(logits[..., b, t, :]) - logits[..., b, t, targets[b, t]]`` averaged over
        batch and time: one value per leading index (shape ``logits.shape[:-3]``), a fitness
        per member in nats per token (divide by ``log(2)`` for bits). Lower is better.

    Raises:
        TypeError: for targets that are not integers.
        ValueError: for ``logits`` with fewer than three axes, ``targets`` of another shape or
            with T = 0, or an id outside ``[0, vocab)`` (one read-back on a GPU).

    Example:
        >>> import numpy as np
        >>> from eggroll_opt import nn
        >>> logits = np.zeros((4, 2, 3, 5))          # 4 members, 2 sequences of 3 steps, 5 ids
        >>> nn.sequence_cross_entropy(logits, np.ones((2, 3), int)).round(4)   # log(5)
        array([1.6094, 1.6094, 1.6094, 1.6094])
    """
    xp = namespace_of(logits)
    if logits.ndim < 3 or logits.shape[-1] < 1:
        raise ValueError(
            f"`logits` must be (..., batch, T, vocab) with vocab >= 1, got shape "
            f"{tuple(logits.shape)}."
        )
    targets = _on_device_of(logits, targets)
    _sequence.check_tokens(targets, logits.shape[-1], argument="targets")
    if targets.shape not in (tuple(logits.shape[-3:-1]), tuple(logits.shape[:-1])):
        raise ValueError(
            f"`targets` must have shape {tuple(logits.shape[-3:-1])} or "
            f"{tuple(logits.shape[:-1])} to match `logits` {tuple(logits.shape)}, got "
            f"{tuple(targets.shape)}."
        )
    top = logits.max(axis=-1, keepdims=True)
    log_total = xp.log(xp.exp(logits - top).sum(axis=-1)) + top[..., 0]
    index = xp.broadcast_to(targets[..., None], (*logits.shape[:-1], 1))
    picked = xp.take_along_axis(logits, index, axis=-1)[..., 0]
    return (log_total - picked).mean(axis=(-2, -1))


def sample_tokens(
    logits: Any, rng: np.random.Generator | int | None, *, temperature: float = 1.0
) -> Any:
    """One token id drawn from ``softmax(logits / temperature)`` for each leading index.

    Inverse-CDF sampling: one uniform per draw, from ``rng`` (a NumPy generator or a seed)
    on the host, copied to the device of ``logits`` in one transfer; the id is the first
    whose cumulative probability exceeds it. Lower temperatures sharpen the distribution
    (:func:`greedy_tokens` is the limit).

    Args:
        logits: (..., vocab), e.g. the last step of a model's output (N, batch, vocab).
        rng: ``numpy.random.Generator``, an int seed, or None (fresh entropy).
        temperature: a positive finite number.

    Returns:
        Integer ids of shape ``logits.shape[:-1]``, on the device of ``logits``.

    Raises:
        ValueError: for a temperature that is not positive and finite, or an empty vocabulary.

    Example:
        >>> import numpy as np
        >>> from eggroll_opt import nn
        >>> logits = np.array([[0.0, 40.0, 0.0], [0.0, -40.0, 0.0]])
        >>> tokens = nn.sample_tokens(logits, np.random.default_rng(0))
        >>> int(tokens[0]), int(tokens[1]) in (0, 2)
        (1, True)
    """
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"`temperature` must be a positive finite number, got {temperature!r} (for the "
            f"most likely token use greedy_tokens)."
        )
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"`logits` must be (..., vocab) with vocab >= 1, got {logits.shape}.")
    xp = namespace_of(logits)
    cumulative = xp.cumsum(softmax(logits / temperature), axis=-1)
    uniform = np.random.default_rng(rng).random(logits.shape[:-1])
    threshold = xp.asarray(uniform, dtype=cumulative.dtype)[..., None] * cumulative[..., -1:]
    # The count of ids at or below the threshold is an id whose probability is positive.
    return xp.minimum((cumulative <= threshold).sum(axis=-1), logits.shape[-1] - 1)


def greedy_tokens(logits: Any) -> Any:
    """The most likely token id, ``argmax(logits)`` over the last axis: ``logits.shape[:-1]``."""
    return logits.argmax(axis=-1)


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


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps > 0:
        raise ValueError(f"`eps` must be a positive number, got {eps!r}.")


def _check_norm_leaf(path: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 1:
        raise ValueError(f"`{path}` must be a 1-D (features,) leaf, got shape {shape}.")


def _min_gru_width(prefix: str, weight_shape: tuple[int, ...]) -> int:
    """The hidden width ``h`` of a minGRU whose ``prefix/w`` is (2h, n); raises otherwise."""
    if len(weight_shape) != 2 or weight_shape[0] % 2:
        raise ValueError(
            f"`{prefix}/w` must be (2 * hidden, inputs): the gate rows then the candidate rows, "
            f"got shape {weight_shape}."
        )
    return weight_shape[0] // 2


def _check_h0(h0: Any, shapes: list[tuple[int, ...]], prefix: str) -> None:
    if tuple(h0.shape) not in shapes:
        allowed = " or ".join(str(shape) for shape in shapes)
        raise ValueError(
            f"`h0` of minGRU {prefix!r} must have shape {allowed}, got {tuple(h0.shape)}."
        )


def _attention_width(prefix: str, heads: int, shape_of: Any) -> int:
    """The input width of attention ``prefix``, its four projections' shapes checked.

    ``prefix/q/w`` and ``prefix/k/w`` are (d_k, d), ``prefix/v/w`` (d_v, d) and ``prefix/o/w``
    (d_out, d_v); ``heads`` must divide ``d_k`` and ``d_v``.
    """
    if isinstance(heads, bool) or not isinstance(heads, int | np.integer) or heads < 1:
        raise ValueError(f"`heads` must be a positive int, got {heads!r}.")
    shapes = {name: tuple(shape_of(f"{prefix}/{name}/w")) for name in "qkvo"}
    for name, shape in shapes.items():
        if len(shape) != 2:
            raise ValueError(f"`{prefix}/{name}/w` must be a matrix, got shape {shape}.")
    (key_width, width), (value_width, _) = shapes["q"], shapes["v"]
    if shapes["k"] != shapes["q"] or shapes["v"][1] != width or shapes["o"][1] != value_width:
        raise ValueError(
            f"attention {prefix!r} needs q/w and k/w of one shape (d_k, d), v/w (d_v, d) and "
            f"o/w (d_out, d_v); got {shapes}."
        )
    if key_width % heads or value_width % heads:
        raise ValueError(
            f"`heads`={heads} must divide the query width {key_width} and the value width "
            f"{value_width} of attention {prefix!r}."
        )
    return width


class PopulationLayers:
    """Layers that evaluate every member of a :class:`~eggroll_opt.Population` at once.

    Inputs are either shared by all members (no member axis, e.g. a data batch) or per member
    (a leading axis of length ``popsize``, e.g. the output of a previous layer); outputs always
    have the member axis.
    """

    def __init__(self, population: Population) -> None:
        self._pop = population
        self._small_leaves: dict[str, Any] = {}

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

    def _stacked(self, path: str, *, optional: bool = False) -> Any:
        """Every member's value of a small leaf (a bias, a scale), made once per layers object.

        None for a missing ``optional`` leaf; a missing required leaf raises ``KeyError``.
        """
        if path not in self._small_leaves:
            try:
                self._small_leaves[path] = self._pop.stacked(path)
            except KeyError:
                if not optional:
                    raise
                self._small_leaves[path] = None
        return self._small_leaves[path]

    def _bias(self, prefix: str) -> Any:
        return self._stacked(f"{prefix}/b", optional=True)

    def _norm_leaf(self, path: str, *, optional: bool = False) -> Any:
        """A norm's scale or bias of every member, shaped (N, 1, 1, d) for (batch, T, d)."""
        values = self._stacked(path, optional=optional)
        if values is None:
            return None
        _check_norm_leaf(path, tuple(values.shape[1:]))
        return values[:, None, None, :]

    def _check_sequence(self, prefix: str, x: Any, width: int) -> None:
        """Check that ``x`` is (batch, T, width) shared or (N, batch, T, width) per member."""
        self._is_shared(x, 2)
        _sequence.check_sequence(x, width, layer=prefix)

    def dense(self, prefix: str, x: Any) -> Any:
        """``x @ w.T + b`` per member: (batch, n) or (N, batch, n) -> (N, batch, m)."""
        self._is_shared(x, 1)
        out = self._pop.linear(f"{prefix}/w", x)
        bias = self._bias(prefix)
        if bias is not None:
            out += bias[:, None, :]
        return out

    def dense_per_step(self, prefix: str, x: Any) -> Any:
        """:meth:`dense` at every time step, as one call over batch·T rows per member.

        ``x`` is (batch, T, n) shared or (N, batch, T, n) per member; returns
        (N, batch, T, m). The output head of a sequence model.
        """
        self._check_sequence(prefix, x, self._pop.leaf_shape(f"{prefix}/w")[-1])
        batch, length = x.shape[-3], x.shape[-2]
        out = self.dense(prefix, x.reshape(*x.shape[:-3], batch * length, x.shape[-1]))
        return out.reshape(len(self._pop), batch, length, out.shape[-1])

    def conv2d(self, prefix: str, x: Any, *, stride: int = 1, padding: int = 0) -> Any:
        """2-D convolution (cross-correlation, as in deep-learning libraries) per member.

        ``x`` is (batch, C, H, W) shared or (N, batch, C, H, W) per member; the kernel leaf
        ``prefix/w`` is (out, C, kh, kw) and its low-rank noise perturbs the (out, C·kh·kw)
        matrix, so the population costs one GEMM on the im2col patches (per member, or one for
        all with a shared input) plus thin corrections (:meth:`Population.matmul`).
        Returns (N, batch, out, H_out, W_out), a view of memory laid out with the batch
        innermost, which the next convolution reads without a transposing copy.
        """
        shared = self._is_shared(x, 3)
        kernel_shape = self._pop.leaf_shape(f"{prefix}/w")
        _check_conv_input(x, kernel_shape, prefix)
        out_h, out_w = _conv.output_size(x.shape[-2:], kernel_shape[2:], stride, padding)
        matrix = (kernel_shape[0], math.prod(kernel_shape[1:]))
        if (
            not shared
            and self._pop.backend == "numpy"  # on a GPU, the batched product of matmul
            and _population.use_member_matrices(matrix, out_h * out_w * x.shape[-4])
        ):
            kernels = self._pop.stacked(f"{prefix}/w")
            x = to_numpy(x)
            out = _conv.member_by_member(kernels, x, stride, padding, self._bias(prefix))
        else:
            columns, _ = _conv.patches(x, kernel_shape[2:], stride, padding)
            out = self._pop.matmul(f"{prefix}/w", columns)  # (N, out, H·W·batch)
            bias = self._bias(prefix)
            if bias is not None:
                out += bias[:, :, None]
        return _conv.images_view(out, out_h, out_w, x.shape[-4])

    def flatten(self, x: Any) -> Any:
        """(N, batch, ...) -> (N, batch, features)."""
        return x.reshape(x.shape[0], x.shape[1], -1)

    def embedding(self, prefix: str, tokens: Any) -> Any:
        """Rows of the (vocab, d) table ``prefix/w`` for integer ``tokens``, per member.

        ``tokens`` is (batch, T) shared or (N, batch, T) per member, ids in ``[0, vocab)``;
        returns (N, batch, T, d). Only the noise rows the tokens name are read: member ``i``'s
        row for token ``t`` is ``W[t] + s_i sigma / sqrt(r) * A_k[t] @ B_k.T`` and no member's
        table is ever formed (:meth:`Population.embed`).
        """
        return self._pop.embed(f"{prefix}/w", tokens)

    def layer_norm(self, prefix: str, x: Any, *, eps: float = 1e-5) -> Any:
        """Layer normalisation over the features, with each member's ``prefix/scale`` and
        optional ``prefix/bias`` (1-D leaves, full noise by default).

        ``x`` is (batch, T, d) shared or (N, batch, T, d) per member; returns (N, batch, T, d):
        ``(x - mean) / sqrt(var + eps) * scale + bias``.
        """
        _check_eps(eps)
        scale = self._norm_leaf(f"{prefix}/scale")
        self._check_sequence(prefix, x, scale.shape[-1])
        bias = self._norm_leaf(f"{prefix}/bias", optional=True)
        return _sequence.layer_norm(_on_device_of(scale, x), scale, bias, eps)

    def rms_norm(self, prefix: str, x: Any, *, eps: float = 1e-6) -> Any:
        """RMS normalisation over the features with each member's 1-D ``prefix/scale``:
        ``x / sqrt(mean(x²) + eps) * scale``; shapes as :meth:`layer_norm`."""
        _check_eps(eps)
        scale = self._norm_leaf(f"{prefix}/scale")
        self._check_sequence(prefix, x, scale.shape[-1])
        return _sequence.rms_norm(_on_device_of(scale, x), scale, eps)

    def min_gru(self, prefix: str, x: Any, h0: Any = None) -> Any:
        """A minGRU layer run over time, per member; returns every step's state (N, batch, T, h).

        The weight ``prefix/w`` is (2h, n): gate rows then candidate rows, with an optional
        bias ``prefix/b`` (2h,). ``x`` is (batch, T, n) shared or (N, batch, T, n) per member;
        ``h0`` is None (zeros), (batch, h) or (N, batch, h). The last state is ``out[:, :, -1]``.

        Why minGRU (Feng et al., 2024) rather than a GRU: its gate and candidate depend on the
        input only, not on the previous state, so the input projections of all T steps are one
        low-rank :meth:`~eggroll_opt.Population.linear` call over batch·T rows for the whole
        population, and what remains is an element-wise recurrence
        ``h_t = (1 - z_t) h_{t-1} + z_t c_t``, one multiply-add per step. A GRU would need T
        sequential population matmuls with the previous state.
        """
        hidden = _min_gru_width(prefix, self._pop.leaf_shape(f"{prefix}/w"))
        self._check_sequence(prefix, x, self._pop.leaf_shape(f"{prefix}/w")[1])
        projected = self.dense_per_step(prefix, x)  # (N, batch, T, 2h)
        if h0 is not None:
            h0 = _on_device_of(projected, h0)
            batch = x.shape[-3]
            _check_h0(h0, [(batch, hidden), (len(self._pop), batch, hidden)], prefix)
        return _sequence.min_gru(projected, h0)

    def causal_attention(self, prefix: str, x: Any, *, heads: int = 1) -> Any:
        """Causal multi-head self-attention with low-rank noise on its four projections.

        Reads the dense layers ``prefix/q``, ``prefix/k``, ``prefix/v`` and ``prefix/o``
        (weights ``.../w``, optional biases ``.../b``); each projection is one
        :meth:`~eggroll_opt.Population.linear` call over batch·T rows. Step ``t`` attends to
        steps ``<= t``. ``x`` is (batch, T, d) shared or (N, batch, T, d) per member; returns
        (N, batch, T, d_out).
        """
        width = _attention_width(prefix, heads, self._pop.leaf_shape)
        self._check_sequence(prefix, x, width)
        query, key, value = (self.dense_per_step(f"{prefix}/{name}", x) for name in "qkv")
        mixed = _sequence.causal_attention(query, key, value, heads)
        return self.dense_per_step(f"{prefix}/o", mixed)


def _on_device_of(weight: Any, x: Any) -> Any:
    """``x`` as an array of ``weight``'s library (one explicit copy if it is on the other one;
    lists and scalars become arrays)."""
    if is_cupy_array(weight) != is_cupy_array(x):
        x = to_numpy(x)
    xp = namespace_of(weight)
    return x if isinstance(x, xp.ndarray) else xp.asarray(x)


def _add_bias(out: Any, bias: Any) -> Any:
    """``out + bias``, in place when that keeps ``out``'s dtype (``out`` is a fresh product)."""
    if namespace_of(out).result_type(out, bias) == out.dtype:
        out += bias
        return out
    return out + bias


class ParamsLayers:
    """The same layers for a single parameter tree (the mean, or one member's params)."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        self._params = flatten(params)

    def _get(self, path: str) -> Any:
        if path not in self._params:
            raise KeyError(f"no leaf {path!r}; leaves are {list(self._params)}.")
        return self._params[path]

    def dense(self, prefix: str, x: Any) -> Any:
        """``x @ w.T + b``: (..., n) -> (..., m); ``x`` is moved to the weights' device.

        Leading axes are folded into one: a (batch, T, n) sequence is one GEMM over batch·T
        rows, not a stack of batch small ones (NumPy's stacked matmul was 15x slower).
        """
        weight = self._get(f"{prefix}/w")
        x = _on_device_of(weight, x)
        rows = x.reshape(math.prod(x.shape[:-1]), x.shape[-1]) @ weight.T
        out = rows.reshape(*x.shape[:-1], weight.shape[0])
        if f"{prefix}/b" in self._params:
            out = _add_bias(out, self._params[f"{prefix}/b"])
        return out

    def conv2d(self, prefix: str, x: Any, *, stride: int = 1, padding: int = 0) -> Any:
        """2-D convolution: (batch, C, H, W) -> (batch, out, H_out, W_out), on the kernel's
        device; like :meth:`PopulationLayers.conv2d`, a view with the batch innermost."""
        kernel = self._get(f"{prefix}/w")
        x = _on_device_of(kernel, x)
        _check_conv_input(x, tuple(kernel.shape), prefix)
        columns, (out_h, out_w) = _conv.patches(x, tuple(kernel.shape[2:]), stride, padding)
        out = kernel.reshape(kernel.shape[0], -1) @ columns  # (out, H·W·batch)
        if f"{prefix}/b" in self._params:
            out = _add_bias(out, self._params[f"{prefix}/b"][:, None])
        return _conv.images_view(out, out_h, out_w, x.shape[0])

    def flatten(self, x: Any) -> Any:
        """(batch, ...) -> (batch, features)."""
        return x.reshape(x.shape[0], -1)

    def _norm_leaf(self, path: str, *, optional: bool = False) -> Any:
        if optional and path not in self._params:
            return None
        value = self._get(path)
        _check_norm_leaf(path, tuple(value.shape))
        return value

    def dense_per_step(self, prefix: str, x: Any) -> Any:
        """:meth:`dense` at every time step: (batch, T, n) -> (batch, T, m)."""
        if x.ndim != 3:
            raise ValueError(f"`x` must be (batch, T, features), got shape {tuple(x.shape)}.")
        _sequence.check_sequence(x, self._get(f"{prefix}/w").shape[-1], layer=prefix)
        return self.dense(prefix, x)

    def embedding(self, prefix: str, tokens: Any) -> Any:
        """Rows of the (vocab, d) table ``prefix/w``: (batch, T) integer ids -> (batch, T, d)."""
        table = self._get(f"{prefix}/w")
        if table.ndim != 2:
            raise ValueError(
                f"`{prefix}/w` must be a (vocab, d) table, got shape {tuple(table.shape)}."
            )
        tokens = _on_device_of(table, tokens)
        if tokens.ndim != 2:
            raise ValueError(f"`tokens` must have shape (batch, T), got {tuple(tokens.shape)}.")
        _sequence.check_tokens(tokens, table.shape[0], table=f"{prefix}/w")
        return table[tokens]

    def layer_norm(self, prefix: str, x: Any, *, eps: float = 1e-5) -> Any:
        """Layer normalisation over the features: (batch, T, d) -> (batch, T, d)."""
        _check_eps(eps)
        scale = self._norm_leaf(f"{prefix}/scale")
        bias = self._norm_leaf(f"{prefix}/bias", optional=True)
        x = _on_device_of(scale, x)
        _sequence.check_sequence(x, scale.shape[0], layer=prefix)
        return _sequence.layer_norm(x, scale, bias, eps)

    def rms_norm(self, prefix: str, x: Any, *, eps: float = 1e-6) -> Any:
        """RMS normalisation over the features: (batch, T, d) -> (batch, T, d)."""
        _check_eps(eps)
        scale = self._norm_leaf(f"{prefix}/scale")
        x = _on_device_of(scale, x)
        _sequence.check_sequence(x, scale.shape[0], layer=prefix)
        return _sequence.rms_norm(x, scale, eps)

    def min_gru(self, prefix: str, x: Any, h0: Any = None) -> Any:
        """A minGRU layer over time: (batch, T, n) -> every step's state (batch, T, h).

        ``h0`` is None (zeros) or (batch, h); see :meth:`PopulationLayers.min_gru`.
        """
        weight = self._get(f"{prefix}/w")
        hidden = _min_gru_width(prefix, tuple(weight.shape))
        x = _on_device_of(weight, x)
        _sequence.check_sequence(x, weight.shape[1], layer=prefix)
        projected = self.dense(prefix, x)  # (batch, T, 2h)
        if h0 is not None:
            h0 = _on_device_of(weight, h0)
            _check_h0(h0, [(*x.shape[:-2], hidden)], prefix)
        return _sequence.min_gru(projected, h0)

    def causal_attention(self, prefix: str, x: Any, *, heads: int = 1) -> Any:
        """Causal multi-head self-attention: (batch, T, d) -> (batch, T, d_out)."""
        width = _attention_width(prefix, heads, lambda path: self._get(path).shape)
        x = _on_device_of(self._get(f"{prefix}/q/w"), x)
        _sequence.check_sequence(x, width, layer=prefix)
        query, key, value = (self.dense(f"{prefix}/{name}", x) for name in "qkv")
        return self.dense(f"{prefix}/o", _sequence.causal_attention(query, key, value, heads))
