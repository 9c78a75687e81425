"""The optimizers' element-wise steps, fused into one CuPy kernel per leaf.

On a GPU, each array operation of an optimizer step is a kernel launch that reads and writes the
whole leaf: Adam's reference code in :mod:`eggroll_opt.optim` takes a dozen per leaf, plus one
for the decoupled weight decay and one for the learning rate of its chain. Each step here is one
function of element-wise operations on one leaf's arrays that updates them in place, in the
order and the dtypes of the reference code, so that NumPy runs it with the same roundings. On
CuPy, :func:`kernel` composes the steps of a chain (Adam's moments and direction, the weight
decay, the learning rate, and for an optimizer's ``apply`` the sum ``params + update`` written
to the new parameters) and hands them to ``cupy.fuse``, which traces them into one element-wise
kernel: one launch per leaf, each array read and written once.

On NumPy the reference steps (the in-place array operations of :mod:`eggroll_opt.optim`, same
signature) run through :func:`blocked` instead: the same chain, leaf by leaf, in blocks that
stay in the cache.

A step is ``step(g, *arrays, *scalars)``: ``g`` is the leaf's gradient, which it turns into the
update; ``arrays`` are the leaf's optimizer state (and parameters) that it reads or updates;
``scalars`` are Python floats. Hyperparameters and Adam's bias corrections are arguments, not
constants baked into the source, so a kernel is compiled once per chain of steps and per dtype,
for every optimizer instance and every generation.

What awaits a GPU run: the kernels are checked on the CPU only, by running these functions on
NumPy arrays against the reference transforms, and through ``cupy.fuse`` of the strict CuPy
stand-in (``tests/strict_cupy``), which runs them as written and counts one launch per call. The
CUDA compiler may contract a product and a sum into one fused multiply-add, so on a GPU the
results agree with the reference to rounding, not bit for bit.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ._backend import is_cupy_array, namespace_of

Step = Callable[..., None]


def adam(
    g: Any,
    mu: Any,
    nu: Any,
    b1: float,
    b2: float,
    eps: float,
    inverse_mu_correction: float,
    inverse_root_nu_correction: float,
) -> None:
    """Adam's moments and direction (Kingma & Ba 2015, Algorithm 1), in place.

    ``mu = b1 mu + (1 - b1) g``, ``nu = b2 nu + (1 - b2) g²`` (each computed as
    ``b (m - x) + x``, as the reference does), then
    ``g = mu / (1 - b1^t) / (sqrt(nu / (1 - b2^t)) + eps)`` with the two corrections given as
    ``1 / (1 - b1^t)`` and ``1 / sqrt(1 - b2^t)``.
    """
    xp = namespace_of(g)
    mu[...] = (mu - g) * b1 + g
    square = g * g
    nu[...] = (nu - square) * b2 + square
    g[...] = mu / (xp.sqrt(nu) * inverse_root_nu_correction + eps) * inverse_mu_correction


def momentum(g: Any, velocity: Any, decay: float) -> None:
    """Heavy-ball momentum: ``velocity = decay * velocity + g``, then ``g = velocity``."""
    velocity[...] = velocity * decay + g
    g[...] = velocity


def nesterov(g: Any, velocity: Any, decay: float) -> None:
    """Nesterov momentum: ``velocity = decay * velocity + g``, then ``g += decay * velocity``."""
    velocity[...] = velocity * decay + g
    g += decay * velocity


def decay_weights(g: Any, params: Any, weight_decay: float) -> None:
    """Decoupled weight decay in place: ``g += weight_decay * params``."""
    g += weight_decay * params


def scale(g: Any, factor: float) -> None:
    """``g *= factor`` (the learning rate, with its sign)."""
    g *= factor


def add_update(g: Any, params: Any, out: Any) -> None:
    """The new parameters: ``out = params + g``, where ``g`` is by now the update.

    The last step of an optimizer's ``apply`` (see :mod:`eggroll_opt.optim`): the sum is cast to
    ``out``'s dtype as ``xp.asarray(params + update, dtype=out.dtype)`` would be, and ``params``
    is only read, so the old parameters stay what they were.
    """
    out[...] = params + g


def compose(steps: tuple[Step, ...]) -> Step:
    """One function that runs ``steps`` in order on a leaf.

    It takes ``g`` and then each step's other arguments, one step after the other.
    """
    counts = tuple(step.__code__.co_argcount - 1 for step in steps)

    def composed(g: Any, *arguments: Any) -> None:
        start = 0
        for step, count in zip(steps, counts, strict=True):
            step(g, *arguments[start : start + count])
            start += count

    # cupy.fuse names the kernel after the function: a C identifier.
    composed.__name__ = composed.__qualname__ = "eggroll_" + "_".join(s.__name__ for s in steps)
    return composed


@functools.cache
def kernel(fuse: Callable[[Step], Step], steps: tuple[Step, ...]) -> Step:
    """``fuse`` of :func:`compose` of ``steps``, made once per chain of steps.

    ``cupy.fuse`` compiles the kernel at its first call for each set of argument dtypes and
    dimensions, and keeps it.
    """
    return fuse(compose(steps))


#: Elements per block of a step on NumPy: a block of each array a step touches (five for
#: Adam's ``apply``: the gradient, the two moments, the parameters and the new ones) is 1 MiB
#: in float32, so a block's dozen passes run in the cache, not from main memory.
BLOCK = 1 << 18
#: Leaves up to this many elements are stepped whole: their arrays stay in the last-level cache
#: through the step anyway, and blocks would only add calls (6-10% slower at 2**20 in
#: ``python -m benchmarks.optimizer_step``).
WHOLE = 1 << 20


def blocked(step: Step) -> Step:
    """``step`` run over blocks of :data:`BLOCK` elements of its arrays, one after the other.

    For NumPy, where each operation of a step is one pass over its operands: Adam's reference
    makes a dozen over the gradient and its moments. Over whole leaves larger than the cache,
    each pass goes to main memory; block by block, all but the first hit the cache.
    ``python -m benchmarks.optimizer_step`` measured an Adam step 1.5x faster at 2**22 float32
    parameters and 1.4-1.8x at 2**24; leaves of up to :data:`WHOLE` elements are stepped whole, as
    before. The steps are element-wise, so the result is the same bit for bit. Arrays that are
    not C-contiguous or not of the gradient's size (none that an optimizer makes) are stepped
    whole.
    """

    def run(g: Any, *arguments: Any) -> None:
        arrays = [a for a in arguments if isinstance(a, np.ndarray)]
        whole = g.size <= max(WHOLE, BLOCK) or not all(
            a.flags.c_contiguous and a.size == g.size for a in (g, *arrays)
        )
        if whole:
            step(g, *arguments)
            return
        flat = [a.reshape(-1) if isinstance(a, np.ndarray) else a for a in arguments]
        g = g.reshape(-1)
        for start in range(0, g.size, BLOCK):
            part = slice(start, start + BLOCK)
            step(g[part], *(a[part] if isinstance(a, np.ndarray) else a for a in flat))

    run.__name__ = run.__qualname__ = step.__name__
    return run


def as_written(step: Step) -> Step:
    """``step`` itself: how a chain runs on a CuPy module without ``fuse``."""
    return step


def fuser(arrays: Iterable[Any]) -> Callable[[Step], Step]:
    """How to run a chain of steps on ``arrays``: ``cupy.fuse`` on CuPy (where the module has
    it), :func:`blocked` on NumPy, :func:`as_written` else."""
    first = next(iter(arrays), None)
    if first is None or not is_cupy_array(first):
        return blocked
    fuse: Callable[[Step], Step] = getattr(namespace_of(first), "fuse", as_written)
    return fuse
