"""Optimizers as ``init``/``update`` pairs over a flat dict of arrays (in the style of optax).

An optimizer turns the search-gradient estimate into the step added to the parameters. Both
work on ``{path: array}`` dicts of the trainable leaves. Conventions (shared by every strategy):

* ``update(grads, state, params)`` receives the gradient of a **loss to minimize** (the strategy
  passes the negated ascent direction of shaped fitness) and returns ``(updates, new_state)``;
  the new parameters are ``params + updates``.
* ``apply(grads, state, params, out)``, where a transform has it, does the same and then writes
  ``params + updates`` (cast to ``out``'s dtypes) into the arrays of ``out``, and returns
  ``(out, new_state)``: the step and the new parameters in one pass, bit for bit what ``update``
  then ``params + updates`` give on NumPy. ``out`` holds fresh arrays shaped like ``params``
  for each path of ``grads``; ``params`` is never modified.
* ``learning_rate`` multiplies the final direction, so ``sgd`` moves by ``-learning_rate * g``.
* ``weight_decay`` is decoupled (AdamW style): ``-learning_rate * weight_decay * params`` is
  added to the step; for plain SGD this equals L2 regularisation.
* **Buffers are reused.** ``update`` may overwrite the arrays of ``grads`` and of ``state`` in
  place and may return ``grads``' own arrays as the updates; it never modifies ``params``. The
  strategy owns both and hands each gradient to the optimizer once, so a step allocates about
  one gradient's worth of memory instead of one per intermediate result (at 100M parameters
  that is the difference between fitting and not). A transform never returns its state's arrays
  as updates, so the next transform of a chain may scale them in place.

States are nests of dicts/tuples whose leaves are arrays or Python ints, so a checkpoint stores
them as plain arrays. Transforms compose with :func:`chain`, and ``adam`` is itself a chain.

The code below is the reference, and what runs on NumPy, where the element-wise transforms
step each leaf of more than 2**20 elements in blocks of 2**18 that stay in the cache through
the dozen passes of Adam (:func:`eggroll_opt._fused.blocked`; the same result bit for bit).
On CuPy, :func:`scale`, :func:`add_decayed_weights`, :func:`trace` and :func:`scale_by_adam`
update each leaf with one fused element-wise kernel instead (:mod:`eggroll_opt._fused`), and
consecutive ones in a :func:`chain` share it: a step of ``adam``, ``momentum`` or ``sgd`` is one
launch per leaf, with the same buffer semantics and the same math. Their ``apply`` adds the sum
into the new parameters to that kernel: still one launch per leaf, where ``update`` and the sum
took two.

Example:
    >>> import numpy as np
    >>> opt = adam(0.1)
    >>> params = {"w": np.zeros(3)}
    >>> state = opt.init(params)
    >>> updates, state = opt.update({"w": np.ones(3)}, state, params)  # may reuse the buffers
    >>> updates["w"]
    array([-0.1, -0.1, -0.1])
    >>> new_params, state = opt.apply({"w": np.ones(3)}, state, params, {"w": np.empty(3)})
    >>> new_params["w"]
    array([-0.1, -0.1, -0.1])
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np

from . import _fused
from ._backend import namespace_of

Params = dict[str, Any]
State = Any

__all__ = [
    "OPTIMIZERS",
    "GradientTransformation",
    "adam",
    "add_decayed_weights",
    "chain",
    "get_optimizer",
    "momentum",
    "scale",
    "scale_by_adam",
    "sgd",
    "trace",
]


Apply = Callable[[Params, State, Params, Params], tuple[Params, State]]


class GradientTransformation(NamedTuple):
    """A pure optimizer: ``init(params) -> state``, ``update(grads, state, params)``.

    ``apply(grads, state, params, out) -> (out, state)`` is optional (None: not offered): the
    step of ``update`` with ``params + updates`` written into ``out`` in the same pass (see the
    module docstring). A strategy uses it when it is there, and ``update`` then the sum when not.
    """

    init: Callable[[Params], State]
    update: Callable[[Params, State, Params], tuple[Params, State]]
    apply: Apply | None = None


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` one after another; the state is the tuple of their states.

    On CuPy, each run of consecutive element-wise transforms of this module is one fused kernel
    per leaf (see :class:`_Elementwise`). The chain has an ``apply`` when its last transform is
    element-wise (the sum joins the last run's kernel) or has an ``apply`` of its own.
    """
    runs = [
        (elementwise, [position for position, _ in run])
        for elementwise, run in itertools.groupby(
            enumerate(transforms), key=lambda item: isinstance(item[1].update, _Elementwise)
        )
    ]

    def init(params: Params) -> State:
        return tuple(transform.init(params) for transform in transforms)

    def run(
        grads: Params,
        state: State,
        new_state: list[State],
        params: Params,
        elementwise: bool,
        positions: list[int],
        out: Params | None = None,
    ) -> Params:
        """Run the transforms at ``positions`` (and the sum into ``out``, if given)."""
        if elementwise:
            updates = [cast(_Elementwise, transforms[p].update) for p in positions]
            inner = [state[p] for p in positions]
            grads, inner = _update_elementwise(updates, grads, inner, params, out)
            for position, one in zip(positions, inner, strict=True):
                new_state[position] = one
            return grads
        *leading, last = positions
        for p in leading:
            grads, new_state[p] = transforms[p].update(grads, state[p], params)
        if out is None:
            grads, new_state[last] = transforms[last].update(grads, state[last], params)
        else:
            apply = cast(Apply, transforms[last].apply)
            grads, new_state[last] = apply(grads, state[last], params, out)
        return grads

    def update(grads: Params, state: State, params: Params) -> tuple[Params, State]:
        new_state = list(state)
        for elementwise, positions in runs:
            grads = run(grads, state, new_state, params, elementwise, positions)
        return grads, tuple(new_state)

    def apply(grads: Params, state: State, params: Params, out: Params) -> tuple[Params, State]:
        new_state = list(state)
        *leading, (last_elementwise, last_positions) = runs
        for elementwise, positions in leading:
            grads = run(grads, state, new_state, params, elementwise, positions)
        run(grads, state, new_state, params, last_elementwise, last_positions, out)
        return out, tuple(new_state)

    offers_apply = bool(runs) and (runs[-1][0] or transforms[-1].apply is not None)
    return GradientTransformation(init, update, apply if offers_apply else None)


@dataclass(frozen=True)
class _Elementwise:
    """The ``update`` of a transform that applies one element-wise step to each leaf.

    Called as ``update(grads, state, params)``. Both ways to run the step take one leaf's
    arrays, ``(g, *arrays, *scalars)``, and update them in place: ``reference``, written as
    in-place array operations, is the definition and what NumPy runs, block by block
    (:func:`eggroll_opt._fused.blocked`); on CuPy, ``step`` (a function of
    :mod:`eggroll_opt._fused`, the same math as expressions) runs as one fused kernel per leaf,
    and :func:`chain` joins the steps of consecutive element-wise transforms into one kernel.
    :meth:`apply` is the transform's ``apply``: the same, with the sum into the new parameters.

    Attributes:
        reference: the step as in-place array operations, or None for a transform that
            changes nothing.
        step: the step as expressions for ``cupy.fuse``; None exactly when ``reference`` is.
        arrays: ``(state, params, path) -> arrays``: what the step takes after ``g``.
        scalars: ``state -> scalars``: the step's scalar arguments for this update; it may
            advance ``state`` in place (Adam's step count).
    """

    reference: _fused.Step | None = None
    step: _fused.Step | None = None
    arrays: Callable[[State, Params, str], tuple[Any, ...]] = lambda state, params, path: ()
    scalars: Callable[[State], tuple[float, ...]] = lambda state: ()

    def __post_init__(self) -> None:
        if (self.reference is None) != (self.step is None):
            raise ValueError(
                "an element-wise transform needs both `reference` and `step`, or neither."
            )

    def __call__(self, grads: Params, state: State, params: Params) -> tuple[Params, State]:
        grads, states = _update_elementwise([self], grads, [state], params)
        return grads, states[0]

    def apply(
        self, grads: Params, state: State, params: Params, out: Params
    ) -> tuple[Params, State]:
        """The update, and ``params + update`` written into ``out``, in one pass per leaf."""
        _, states = _update_elementwise([self], grads, [state], params, out)
        return out, states[0]


def _transform(init: Callable[[Params], State], update: _Elementwise) -> GradientTransformation:
    """The transform of an element-wise ``update``, with its ``apply``."""
    return GradientTransformation(init, update, update.apply)


def _update_elementwise(
    updates: Sequence[_Elementwise],
    grads: Params,
    states: list[State],
    params: Params,
    out: Params | None = None,
) -> tuple[Params, list[State]]:
    """Run ``updates`` one after another on each leaf: one fused kernel per leaf on CuPy, the
    reference steps block by block on NumPy.

    With ``out``, ``params + update`` is then written into ``out`` (in the same pass).
    """
    fuse = _fused.fuser(grads.values())
    on_device = fuse not in (_fused.blocked, _fused.as_written)  # cupy.fuse: the fused steps
    steps, per_step = [], []
    for transform_update, state in zip(updates, states, strict=True):
        step = transform_update.step if on_device else transform_update.reference
        if step is not None:
            steps.append(step)
            scalars = [float(value) for value in transform_update.scalars(state)]
            per_step.append((transform_update.arrays, state, scalars))
    if out is not None:
        steps.append(_fused.add_update if on_device else _add_update)
        per_step.append((lambda state, params, path: (params[path], out[path]), None, []))
    if steps:
        kernel = _fused.kernel(fuse, tuple(steps))
        for path, g in grads.items():
            arguments = [g]
            for arrays, state, scalars in per_step:
                arguments.extend(arrays(state, params, path))
                arguments.extend(scalars)
            kernel(*arguments)
    return grads, states


def _add_update(g: Any, params: Any, out: Any) -> None:
    """Reference of :func:`eggroll_opt._fused.add_update`: ``out = params + g``."""
    namespace_of(g).add(params, g, out=out)


def _zeros_like(params: Params) -> Params:
    return {k: namespace_of(p).zeros_like(p) for k, p in params.items()}


# The reference steps: in-place array operations, module-level so that a chain's composed step
# (cached by _fused.kernel on its steps) is made once, not once per optimizer. Where an
# expression is already in place (scale, the weight decay), the step of _fused serves as both.


def _momentum(g: Any, velocity: Any, decay: float) -> None:
    """Reference of :func:`eggroll_opt._fused.momentum`."""
    velocity *= decay
    velocity += g
    g[...] = velocity


def _nesterov(g: Any, velocity: Any, decay: float) -> None:
    """Reference of :func:`eggroll_opt._fused.nesterov`."""
    velocity *= decay
    velocity += g
    g += decay * velocity


def _adam(
    g: Any,
    mu: Any,
    nu: Any,
    b1: float,
    b2: float,
    eps: float,
    inverse_mu_correction: float,
    inverse_root_nu_correction: float,
) -> None:
    """Reference of :func:`eggroll_opt._fused.adam`, without temporaries."""
    xp = namespace_of(g)
    # mu = b1 mu + (1 - b1) g and nu = b2 nu + (1 - b2) g², as b (m - x) + x.
    xp.subtract(mu, g, out=mu)
    mu *= b1
    mu += g
    xp.multiply(g, g, out=g)
    xp.subtract(nu, g, out=nu)
    nu *= b2
    nu += g
    # g = (mu / c1) / (sqrt(nu / c2) + eps)
    xp.sqrt(nu, out=g)
    g *= inverse_root_nu_correction
    g += eps
    xp.divide(mu, g, out=g)
    g *= inverse_mu_correction


def scale(factor: float) -> GradientTransformation:
    """Multiply updates by ``factor``."""
    return _transform(
        lambda params: {},
        _Elementwise(_fused.scale, _fused.scale, scalars=lambda state: (factor,)),
    )


def add_decayed_weights(weight_decay: float) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (a no-op when it is 0)."""
    if weight_decay == 0:
        return _transform(lambda params: {}, _Elementwise())
    return _transform(
        lambda params: {},
        _Elementwise(
            _fused.decay_weights,
            _fused.decay_weights,
            arrays=lambda state, params, path: (params[path],),
            scalars=lambda state: (weight_decay,),
        ),
    )


def trace(decay: float, nesterov: bool = False) -> GradientTransformation:
    """Momentum: ``m = decay * m + g``; the update is ``m`` (or ``g + decay * m`` for Nesterov)."""

    def init(params: Params) -> State:
        return {"momentum": _zeros_like(params)}

    return _transform(
        init,
        _Elementwise(
            _nesterov if nesterov else _momentum,
            _fused.nesterov if nesterov else _fused.momentum,
            arrays=lambda state, params, path: (state["momentum"][path],),
            scalars=lambda state: (decay,),
        ),
    )


def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` (Kingma & Ba 2015, Algorithm 1)."""

    def init(params: Params) -> State:
        return {"count": 0, "mu": _zeros_like(params), "nu": _zeros_like(params)}

    def advance(state: State) -> tuple[float, ...]:
        """The step's scalars for the next count (which it stores in ``state``)."""
        count = state["count"] = state["count"] + 1
        mu_correction, nu_correction = 1 - b1**count, 1 - b2**count
        return b1, b2, eps, 1 / mu_correction, 1 / nu_correction**0.5

    return _transform(
        init,
        _Elementwise(
            _adam,
            _fused.adam,
            arrays=lambda state, params, path: (state["mu"][path], state["nu"][path]),
            scalars=advance,
        ),
    )


def sgd(learning_rate: float, *, weight_decay: float = 0.0) -> GradientTransformation:
    """Plain gradient descent: ``params -= learning_rate * (g + weight_decay * params)``."""
    return chain(add_decayed_weights(weight_decay), scale(-learning_rate))


def momentum(
    learning_rate: float,
    *,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """SGD with (optionally Nesterov) momentum ``momentum``."""
    return chain(
        add_decayed_weights(weight_decay), trace(momentum, nesterov), scale(-learning_rate)
    )


def adam(
    learning_rate: float,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """Adam, with decoupled weight decay (AdamW) when ``weight_decay`` > 0."""
    return chain(
        scale_by_adam(b1, b2, eps), add_decayed_weights(weight_decay), scale(-learning_rate)
    )


OPTIMIZERS: dict[str, Callable[..., GradientTransformation]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adam": adam,
}


def get_optimizer(
    name: str,
    learning_rate: float,
    weight_decay: float = 0.0,
    options: Mapping[str, Any] | None = None,
) -> GradientTransformation:
    """Build a named optimizer; ``options`` are its extra keyword arguments (e.g. ``b1``).

    Raises:
        ValueError: for an unknown name.
        TypeError: for options the optimizer does not take.
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"`optimizer` must be one of {sorted(OPTIMIZERS)} or a GradientTransformation, "
            f"got {name!r}."
        )
    try:
        return OPTIMIZERS[name](learning_rate, weight_decay=weight_decay, **dict(options or {}))
    except TypeError as error:
        raise TypeError(
            f"`optimizer_options` {dict(options or {})!r} for {name!r}: {error}"
        ) from None


def flatten_state(state: State, prefix: str = "") -> list[tuple[str, Any]]:
    """The leaves of an optimizer state as ``(key path, leaf)`` in a deterministic order."""
    if isinstance(state, Mapping):
        return [item for key in state for item in flatten_state(state[key], f"{prefix}{key}/")]
    if isinstance(state, tuple | list):
        return [
            item
            for index, inner in enumerate(state)
            for item in flatten_state(inner, f"{prefix}{index}/")
        ]
    return [(prefix.rstrip("/"), state)]


def unflatten_state(template: State, leaves: Mapping[str, Any], prefix: str = "") -> State:
    """Rebuild a state shaped like ``template`` from ``{key path: leaf}``.

    Python ints in the template come back as ints; arrays keep the loaded values.

    Raises:
        KeyError: if a key path of the template is missing.
    """
    if isinstance(template, Mapping):
        return {key: unflatten_state(template[key], leaves, f"{prefix}{key}/") for key in template}
    if isinstance(template, tuple | list):
        return type(template)(
            unflatten_state(inner, leaves, f"{prefix}{index}/")
            for index, inner in enumerate(template)
        )
    value = leaves[prefix.rstrip("/")]
    if isinstance(template, int | np.integer):
        return int(value)
    return value
