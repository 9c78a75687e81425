"""A population of seeded candidates: factors, members, member specs, batched forward passes.

Member ``i`` of a generation uses noise ``k = i // G`` with sign ``s_i``: with mirrored sampling
``G = 2`` and ``s_i = +1`` for even ``i``, ``-1`` for odd ``i``; without it ``G = 1`` and
``s_i = +1``. Its parameters are the base plus, per leaf,

* ``lowrank``: ``s_i * sigma / sqrt(rank) * diag(rho) @ A_k @ B_k.T @ diag(gamma)`` (A_k of
  shape (m, rank), B_k (n, rank), a >=3-D leaf viewed as (shape[0], prod(shape[1:])));
* ``full``: ``s_i * sigma * D * eps_k`` (eps_k and the entry scales D of the leaf's shape);
* ``frozen``: nothing.

``sigma`` is per leaf; the row scales ``rho`` (m), column scales ``gamma`` (n) and entry scales
``D`` are 1 unless a step-size adaptation learns them (:mod:`eggroll_opt.adaptation`). The scales
are folded into the factors (``diag(rho) A_k`` and ``diag(gamma) B_k`` are still rank ``r``), so
the population stores only the noise: ``O(K * rank * (m + n))`` numbers per low-rank leaf.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from . import _noise
from ._backend import Backend, get_backend, is_cupy_array, namespace_of, read_only
from ._sequence import check_tokens
from ._tree import flatten, unflatten

NoiseKind = Literal["lowrank", "full", "frozen"]
NOISE_KINDS: tuple[str, ...] = ("lowrank", "full", "frozen")


@dataclass(frozen=True)
class LeafSpec:
    """What the noise of one leaf depends on: its path, noise kind, shape, dtype and rank.

    ``rank`` is the rank of a low-rank leaf's noise (the strategy's ``rank`` capped at
    ``min(m, n)``); other kinds ignore it.
    """

    path: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    rank: int = 1

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(m, n): the leaf viewed as a matrix (first axis by the product of the others)."""
        return self.shape[0], math.prod(self.shape[1:])

    def noise_size(self) -> int:
        """Standard normals one member needs for this leaf."""
        if self.kind == "lowrank":
            rows, columns = self.matrix_shape
            return (rows + columns) * self.rank
        if self.kind == "full":
            return math.prod(self.shape)
        return 0


def leaf_noise(
    backend: Backend,
    seed: int,
    leaf: LeafSpec,
    epoch: int,
    first: int,
    count: int,
) -> Any:
    """Noise of members ``first ..`` for one leaf: ``(A, B)`` for low-rank, ``eps`` for full.

    ``A`` has shape (count, m, r), ``B`` (count, n, r), ``eps`` (count, *leaf.shape), with
    ``r = leaf.rank``.
    """
    rank = leaf.rank
    key = _noise.leaf_key(seed, leaf.path)
    values = _noise.normals(
        backend, key, epoch, first, count, leaf.noise_size(), np.dtype(leaf.dtype)
    )
    if leaf.kind == "lowrank":
        rows, columns = leaf.matrix_shape
        left = values[:, : rows * rank].reshape(count, rows, rank)
        right = values[:, rows * rank :].reshape(count, columns, rank)
        return left, right
    return values.reshape(count, *leaf.shape)


def scale_noise(leaf: LeafSpec, noise: Any, scales: Any) -> Any:
    """Fold a leaf's noise scales into its unit noise (``noise`` as :func:`leaf_noise` gives it).

    ``scales`` is None (nothing to do), ``(rows, columns)`` for a low-rank leaf (shapes (m,) and
    (n,)), or an array of the leaf's shape for a full leaf. The leading axis of ``noise`` counts
    draws. Low-rank factors stay factors: ``diag(rows) A`` and ``diag(columns) B``.
    """
    if scales is None or noise is None:
        return noise
    if leaf.kind == "lowrank":
        left, right = noise
        rows, columns = scales
        xp_rows = _like(left, rows)
        xp_columns = _like(right, columns)
        return left * xp_rows[:, None], right * xp_columns[:, None]
    return noise * _like(noise, scales)


def _like(array: Any, values: Any) -> Any:
    """``values`` on ``array``'s backend, in its dtype."""
    return namespace_of(array).asarray(values, dtype=array.dtype)


def use_member_matrices(shape: tuple[int, int], length: int) -> bool:
    """Whether a product with per-member inputs goes through every member's own matrix.

    True when a member's (m, n) matrix holds no more numbers than the ``length`` rows (or
    columns) of its input and output, ``m·n <= length·(m + n)``, which the product reads and
    writes anyway: one GEMM per member with its own matrix (:meth:`Population.stacked`) then
    beats the product with the mean plus the low-rank corrections, which pass over the input
    and the output once more (the MNIST CNN's second convolution and hidden layer). A large
    matrix seen by a few rows per member (a sequence model's step) keeps the low-rank path,
    whose memory does not grow with the matrix.
    """
    rows, columns = shape
    return rows * columns <= length * (rows + columns)


def _columns_in_memory(x: Any) -> bool:
    """Whether a stack of matrices ``x`` is laid out column by column, as its transpose's rows.

    A (popsize, batch, n) view of (popsize, n, batch) memory, such as the flattened output of a
    convolution (:mod:`eggroll_opt._conv`): :meth:`Population.linear` then runs as
    :meth:`Population.matmul` on the transposed view and hands back the transposed result,
    without copying ``x``.
    """
    itemsize = x.dtype.itemsize
    return x.shape[-2] > 1 and x.strides[-2] == itemsize and x.strides[-1] != itemsize


def _perturbed(base: Any, leaf: LeafSpec, noise: Any, sign: float, sigma: float) -> Any:
    """One member's value of one leaf, from its own slice of the noise (rank: the noise's)."""
    if leaf.kind == "lowrank":
        left, right = noise
        rank = left.shape[-1]
        return base + (sign * sigma / math.sqrt(rank)) * (left @ right.T).reshape(leaf.shape)
    if leaf.kind == "full":
        return base + (sign * sigma) * noise
    return read_only(base)  # a frozen leaf is the mean itself: a fitness must not edit it


@dataclass(frozen=True)
class MemberSpec:
    """Everything needed, besides the base parameters, to rebuild one member anywhere.

    A spec is small and picklable: this is what travels to a remote worker.

    Example:
        >>> import numpy as np, eggroll_opt as eo
        >>> es = eo.Eggroll({"w": np.zeros((4, 3))}, popsize=4, sigma=0.1, learning_rate=0.1,
        ...                 seed=0, backend="numpy")
        >>> pop = es.ask()
        >>> spec = pop[3].spec
        >>> bool(np.allclose(spec.params(es.params)["w"], pop[3].params()["w"]))
        True
    """

    seed: int
    generation: int
    epoch: int
    index: int
    sigma: float
    mirrored: bool
    leaves: tuple[LeafSpec, ...]
    leaf_sigmas: tuple[float, ...] | None = None
    scales: tuple[Any, ...] | None = None

    def leaf_sigma(self, position: int) -> float:
        """σ of ``leaves[position]`` (``sigma`` unless a step-size adaptation set one per leaf)."""
        return self.sigma if self.leaf_sigmas is None else self.leaf_sigmas[position]

    def leaf_scales(self, position: int) -> Any:
        """The noise scales of ``leaves[position]`` (see :func:`scale_noise`), or None."""
        return None if self.scales is None else self.scales[position]

    @property
    def noise_index(self) -> int:
        """Which noise draw ``k`` this member uses."""
        return self.index // 2 if self.mirrored else self.index

    @property
    def sign(self) -> float:
        """+1 or -1 (the antithetic partner of a mirrored pair has -1)."""
        return -1.0 if self.mirrored and self.index % 2 else 1.0

    def params(
        self, base: Mapping[str, Any], backend: str | Backend | None = None
    ) -> dict[str, Any]:
        """This member's parameter tree, from the base parameters of its generation.

        Only this member's noise is generated. ``backend`` defaults to the base's array library.
        """
        flat = flatten(base, "base")
        if backend is None:
            backend = "cupy" if any(is_cupy_array(v) for v in flat.values()) else "numpy"
        resolved = get_backend(backend)
        missing = [leaf.path for leaf in self.leaves if leaf.path not in flat]
        if missing:
            raise ValueError(f"`base` lacks the leaves {missing} of this member spec.")
        out = {}
        for position, leaf in enumerate(self.leaves):
            value = resolved.asarray(flat[leaf.path], dtype=np.dtype(leaf.dtype))
            if leaf.kind != "frozen":
                noise = leaf_noise(resolved, self.seed, leaf, self.epoch, self.noise_index, 1)
                noise = scale_noise(leaf, noise, self.leaf_scales(position))
                noise = tuple(part[0] for part in noise) if leaf.kind == "lowrank" else noise[0]
                sigma = self.leaf_sigma(position)
                value = _perturbed(value, leaf, noise, self.sign, sigma)
            out[leaf.path] = value
        return unflatten(out)


class Member:
    """One candidate of a :class:`Population` (a view: it holds no arrays of its own)."""

    __slots__ = ("_index", "_population")

    def __init__(self, population: Population, index: int) -> None:
        self._population = population
        self._index = index

    @property
    def index(self) -> int:
        """Position in the population (the order ``tell`` expects fitness in)."""
        return self._index

    @property
    def spec(self) -> MemberSpec:
        """The small picklable description that rebuilds this member from the base."""
        return self._population.spec(self._index)

    def params(self) -> dict[str, Any]:
        """This candidate's full parameter tree, on the strategy's backend.

        Searched leaves are new arrays; a frozen leaf is the mean itself, handed out as a
        read-only view (a copy on CuPy) so that a fitness function cannot edit the mean.
        """
        return self._population.member_params(self._index)

    def __repr__(self) -> str:
        return f"Member(index={self._index}, generation={self._population.generation})"


def chunk_ranges(size: int, chunks: int, mirrored: bool) -> list[range]:
    """At most ``chunks`` consecutive ranges of about equal length covering ``range(size)``,
    each boundary on a mirrored pair's boundary when ``mirrored`` (the pairs stay together)."""
    bounds = np.linspace(0, size, min(size, chunks) + 1).round().astype(int)
    if mirrored:
        bounds = np.unique(np.clip(bounds + bounds % 2, 0, size))
    return [range(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def split_evenly(population: Population, parts: int) -> list[Population]:
    """``population`` as at most ``parts`` consecutive sub-populations of about equal size
    (:func:`chunk_ranges`), sharing its noise as :meth:`Population.split` does."""
    ranges = chunk_ranges(len(population), parts, population._mirrored)
    return [population._between(members.start, members.stop) for members in ranges]


class Population(Sequence[Member]):
    """The candidates of one generation, stored as their noise (never as dense members).

    Supports ``len``, iteration and indexing (``pop[i]`` is a :class:`Member`). Fitness values
    given to ``tell`` must follow this order.

    Example:
        >>> import numpy as np, eggroll_opt as eo
        >>> es = eo.Eggroll({"w": np.zeros((8, 5))}, popsize=6, sigma=0.1, learning_rate=0.1,
        ...                 seed=1, backend="numpy")
        >>> pop = es.ask()
        >>> len(pop), pop.linear("w", np.ones((2, 5))).shape
        (6, (6, 2, 8))
    """

    def __init__(
        self,
        *,
        backend: Backend,
        leaves: Mapping[str, LeafSpec],
        base: Mapping[str, Any],
        noise: Mapping[str, Any],
        seed: int,
        generation: int,
        epoch: int,
        popsize: int,
        sigma: float | Mapping[str, float],
        mirrored: bool,
        first: int = 0,
        scales: Mapping[str, Any] | None = None,
    ) -> None:
        self._backend = backend
        self._first = first
        self._leaves = dict(leaves)
        self._base = dict(base)
        self._raw = dict(noise)  # unit noise: what tell's estimates use
        self._scales = {p: v for p, v in (scales or {}).items() if v is not None}
        self._noise = {  # the noise members use, scales folded in
            path: scale_noise(self._leaves[path], value, self._scales.get(path))
            for path, value in self._raw.items()
        }
        if isinstance(sigma, Mapping):
            self._sigmas = {path: float(sigma[path]) for path in self._leaves}
            self._sigma = max(self._sigmas.values())
        else:
            self._sigma = float(sigma)
            self._sigmas = dict.fromkeys(self._leaves, self._sigma)
        self._seed = seed
        self._generation = generation
        self._epoch = epoch
        self._popsize = popsize
        self._mirrored = mirrored
        self._group = 2 if mirrored else 1
        signs = np.ones(popsize)
        if mirrored:
            signs[1::2] = -1.0
        self._signs = signs  # on the host, for specs, single members and tell
        # ``s_i * sigma`` (over sqrt(rank)) on the backend per leaf and dtype: see _scaled_signs
        self._device_signs: dict[tuple[str, np.dtype[Any], int | None], Any] = {}

    # -- sequence protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return self._popsize

    @overload
    def __getitem__(self, index: int) -> Member: ...

    @overload
    def __getitem__(self, index: slice) -> list[Member]: ...

    def __getitem__(self, index: int | slice) -> Member | list[Member]:
        if isinstance(index, slice):
            return [Member(self, i) for i in range(*index.indices(self._popsize))]
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"population index must be an int, got {type(index).__name__}.")
        position = int(index) + self._popsize if index < 0 else int(index)
        if not 0 <= position < self._popsize:
            raise IndexError(f"population index {index} out of range for popsize {self._popsize}.")
        return Member(self, position)

    def __iter__(self) -> Iterator[Member]:
        return (Member(self, i) for i in range(self._popsize))

    def __repr__(self) -> str:
        return (
            f"Population(popsize={self._popsize}, generation={self._generation}, "
            f"leaves={list(self._leaves)})"
        )

    # -- what the population is --------------------------------------------------------------
    @property
    def generation(self) -> int:
        """The generation these candidates belong to."""
        return self._generation

    @property
    def first(self) -> int:
        """Index in the whole generation of this population's member 0 (see :meth:`split`)."""
        return self._first

    def split(self, size: int) -> list[Population]:
        """Consecutive sub-populations of at most ``size`` members, sharing this one's noise.

        Evaluate a large population in parts to bound the memory of a forward pass; give
        ``tell`` the concatenated fitness in the original order. ``size`` must be even with
        mirrored sampling (pairs stay together).

        Example:
            >>> import numpy as np, eggroll_opt as eo
            >>> es = eo.Eggroll({"w": np.zeros((3, 2))}, popsize=10, sigma=0.1,
            ...                 learning_rate=0.1, seed=0, backend="numpy")
            >>> [(part.first, len(part)) for part in es.ask().split(4)]
            [(0, 4), (4, 4), (8, 2)]
        """
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"`size` must be a positive int, got {size!r}.")
        if size % self._group:
            raise ValueError(f"`size` must be even with mirrored sampling, got {size}.")
        return [
            self._between(start, min(start + size, self._popsize))
            for start in range(0, self._popsize, size)
        ]

    def _between(self, start: int, stop: int) -> Population:
        """Members ``start`` to ``stop`` (exclusive, on pair boundaries when mirrored) as a
        population sharing this one's noise."""
        low, high = start // self._group, stop // self._group
        noise = {
            path: tuple(part[low:high] for part in value)
            if isinstance(value, tuple)
            else value[low:high]
            for path, value in self._raw.items()
        }
        return Population(
            backend=self._backend,
            leaves=self._leaves,
            base=self._base,
            noise=noise,
            seed=self._seed,
            generation=self._generation,
            epoch=self._epoch,
            popsize=stop - start,
            sigma=self._sigmas,
            mirrored=self._mirrored,
            first=self._first + start,
            scales=self._scales,
        )

    @property
    def backend(self) -> str:
        """``"numpy"`` or ``"cupy"``."""
        return self._backend.name

    @property
    def signs(self) -> np.ndarray:
        """``s_i`` for every member (host array of +1/-1)."""
        return self._signs.copy()

    @property
    def noise_index(self) -> np.ndarray:
        """``k`` for every member: which noise draw it uses (host int array)."""
        return np.arange(self._popsize) // self._group

    @property
    def base(self) -> dict[str, Any]:
        """The mean the candidates are perturbations of (same tree as the strategy's params)."""
        return unflatten(self._base)

    def factors(self, path: str, *, unit: bool = False) -> Any:
        """The noise of leaf ``path``: ``(A, B)`` (low-rank), ``eps`` (full) or None (frozen).

        By default the noise members use, with the leaf's noise scales folded in
        (``diag(rho) A``, ``diag(gamma) B``, ``D * eps``); ``unit=True`` gives the unit noise the
        generator drew (the same arrays when the leaf has no scales). Neither includes σ.
        """
        self._leaf(path)
        return (self._raw if unit else self._noise).get(path)

    def sigma(self, path: str) -> float:
        """σ of leaf ``path`` in this generation."""
        self._leaf(path)
        return self._sigmas[path]

    def scales(self, path: str) -> Any:
        """The noise scales of leaf ``path`` (see :func:`scale_noise`), or None."""
        self._leaf(path)
        return self._scales.get(path)

    def leaf_shape(self, path: str) -> tuple[int, ...]:
        """The shape of leaf ``path``."""
        return self._leaf(path).shape

    def spec(self, index: int) -> MemberSpec:
        """The picklable :class:`MemberSpec` of member ``index``."""
        uniform = len(set(self._sigmas.values())) <= 1 and not self._scales
        return MemberSpec(
            seed=self._seed,
            generation=self._generation,
            epoch=self._epoch,
            index=self._first + self[index].index,
            sigma=self._sigma,
            mirrored=self._mirrored,
            leaves=tuple(self._leaves.values()),
            leaf_sigmas=None if uniform else tuple(self._sigmas.values()),
            scales=None if uniform else tuple(self._scales.get(p) for p in self._leaves),
        )

    def member_params(self, index: int) -> dict[str, Any]:
        """Member ``index``'s full parameter tree (materialises each leaf once)."""
        position = self[index].index
        k, sign = position // self._group, float(self._signs[position])
        out = {}
        for path, leaf in self._leaves.items():
            noise = self._noise.get(path)
            if noise is not None:
                noise = tuple(part[k] for part in noise) if leaf.kind == "lowrank" else noise[k]
            sigma = self._sigmas[path]
            out[path] = _perturbed(self._base[path], leaf, noise, sign, sigma)
        return unflatten(out)

    def stacked(self, path: str) -> Any:
        """All members' values of leaf ``path``: an array ``(popsize, *shape)``.

        This materialises the population for that leaf (``N * prod(shape)`` numbers): cheap for
        biases and small leaves, the thing to avoid for large matrices (use :meth:`linear`).
        """
        leaf = self._leaf(path)
        xp = self._backend.xp
        base = self._base[path]
        if leaf.kind == "frozen":
            return xp.broadcast_to(base, (self._popsize, *leaf.shape)).copy()
        # Member i = k·G + g: draws broadcast against the (K, G) signs, no gather by index.
        draws, group = self._popsize // self._group, self._group
        if leaf.kind == "full":
            noise, rank = self._noise[path], None
        else:  # one product per draw (for rank 1 an outer product), as a member's params make
            left, right = self._noise[path]  # (K, m, r), (K, n, r)
            rank = right.shape[2]
            noise = left * right[:, None, :, 0] if rank == 1 else left @ right.transpose(0, 2, 1)
        signs = self._scaled_signs(path, base.dtype, rank)  # s_i sigma (/ sqrt(r)): (K, G, 1, 1)
        noise = noise.reshape(draws, 1, *leaf.shape)
        out = (noise * signs.reshape(draws, group, *[1] * len(leaf.shape))).reshape(
            self._popsize, *leaf.shape
        )
        out += base
        return out

    # -- batched forward pass ----------------------------------------------------------------
    def linear(self, path: str, x: Any) -> Any:
        """``x @ (W + E_i).T`` for every member ``i`` at once, for a leaf ``W`` viewed as (m, n).

        A leaf with more than two dimensions (a convolution kernel) is viewed as
        ``(shape[0], prod(shape[1:]))``, the same matrix its low-rank noise perturbs.

        Args:
            path: the leaf's path (``"layer/weight"``).
            x: either one input shared by all members, shape (batch, n), or one input per
                member, shape (popsize, batch, n).

        Returns:
            An array (popsize, batch, m). The dense product with ``W`` is done once (shared
            input) or as one large GEMM (per-member input); each low-rank member then adds only
            ``s_i sigma / sqrt(r) * (x_i @ B_k) @ A_k.T``, which costs ``O(batch * r * (m + n))``.
        """
        leaf, base, x = self._matrix_operand(path, x, axis=-1)
        xp = self._backend.xp
        rows, columns = base.shape
        shared = x.ndim == 2
        if not shared and _columns_in_memory(x):  # e.g. a flattened convolution's output
            return self.matmul(path, x.swapaxes(-1, -2)).swapaxes(-1, -2)
        batch = x.shape[-2]
        popsize, draws, group = self._popsize, self._popsize // self._group, self._group
        if leaf.kind == "frozen":
            if shared:
                return xp.broadcast_to(x @ base.T, (popsize, batch, rows)).copy()
            return (x.reshape(-1, columns) @ base.T).reshape(popsize, batch, rows)
        if not shared and use_member_matrices(leaf.matrix_shape, batch):
            return x @ self._member_matrices(path).transpose(0, 2, 1)
        # The correction of every member, laid out as (K, G·batch, m): member i = k·G + g.
        dtype = xp.result_type(x.dtype, base.dtype)
        if leaf.kind == "full":
            signs = self._scaled_signs(path, dtype)  # (K, G, 1, 1)
            eps_t = self._noise[path].reshape(draws, rows, columns).transpose(0, 2, 1)
            inputs = x if shared else x.reshape(draws, group * batch, columns)
            correction = (inputs @ eps_t).reshape(draws, -1, batch, rows) * signs
        else:
            left, right = self._noise[path]  # (K, m, r), (K, n, r)
            rank = right.shape[2]
            if shared:  # one GEMM against all K·r columns at once
                stacked = right.transpose(1, 0, 2).reshape(columns, draws * rank)
                projected = (x @ stacked).reshape(batch, draws, rank).transpose(1, 0, 2)[:, None]
            else:
                projected = (x.reshape(draws, group * batch, columns) @ right).reshape(
                    draws, group, batch, rank
                )
            signs = self._scaled_signs(path, dtype, rank)  # (K, G, 1, 1), over sqrt(rank)
            projected = (projected * signs).reshape(draws, group * batch, rank)
            left_t = left.transpose(0, 2, 1)  # (K, r, m)
            # For rank 1 the product is an outer product: broadcasting beats a batched GEMM.
            correction = projected * left_t if rank == 1 else projected @ left_t
        correction = correction.reshape(popsize, batch, rows)
        if shared:
            correction += x @ base.T  # broadcast over members
        else:
            correction += (x.reshape(-1, columns) @ base.T).reshape(popsize, batch, rows)
        return correction

    def matmul(self, path: str, x: Any) -> Any:
        """``(W + E_i) @ x_i`` for every member ``i`` at once: :meth:`linear` on column inputs.

        ``x`` is (n, L) shared by all members or (popsize, n, L) per member (the layout of a
        convolution's im2col patches, one column per output position) and the result is
        (popsize, m, L): ``matmul(path, x)`` equals
        ``linear(path, x.swapaxes(-1, -2)).swapaxes(-1, -2)`` without transposing either array.
        Each member costs one GEMM with ``W`` (a shared input: one for all) plus
        ``s_i sigma / sqrt(r) * A_k @ (B_k.T @ x_i)``. For inputs with few columns per member (a
        policy's single observation) :meth:`linear`'s one large GEMM is faster.
        """
        leaf, base, x = self._matrix_operand(path, x, axis=-2)
        (rows, columns), length = base.shape, x.shape[-1]
        popsize, draws, group = self._popsize, self._popsize // self._group, self._group
        shared, xp = x.ndim == 2, self._backend.xp
        if not shared and leaf.kind != "frozen" and use_member_matrices(leaf.matrix_shape, length):
            return self._member_matrices(path) @ x
        out = base @ x  # (m, L) shared, (N, m, L) per member
        if leaf.kind == "frozen":
            return xp.broadcast_to(out, (popsize, rows, length)).copy() if shared else out
        # Member i = k·G + g: inputs seen as (K, G, n, L) (a view), corrections as (K, G, m, L).
        dtype = xp.result_type(x.dtype, base.dtype)
        inputs = x if shared else x.reshape(draws, group, columns, length)
        if leaf.kind == "full":
            eps = self._noise[path].reshape(draws, 1, rows, columns)
            correction = (eps @ inputs) * self._scaled_signs(path, dtype)  # (K, G, 1, 1) signs
        else:
            left, right = self._noise[path]  # (K, m, r), (K, n, r)
            rank = right.shape[2]
            if shared:  # one GEMM against all K·r rows at once
                stacked = right.transpose(0, 2, 1).reshape(draws * rank, columns)
                projected = (stacked @ x).reshape(draws, 1, rank, length)
            else:
                projected = right.transpose(0, 2, 1)[:, None] @ inputs  # (K, G, r, L)
            projected = projected * self._scaled_signs(path, dtype, rank)  # over sqrt(rank)
            left = left[:, None]  # (K, 1, m, r)
            correction = left * projected if rank == 1 else left @ projected
        correction = correction.reshape(popsize, rows, length)
        correction += out  # broadcast over members when shared
        return correction

    def embed(self, path: str, tokens: Any) -> Any:
        """Rows ``tokens`` of every member's table ``W + E_i``: a gather, never a table per member.

        For a (vocab, d) leaf, member ``i``'s row for token ``t`` is
        ``W[t] + s_i sigma / sqrt(r) * A_k[t] @ B_k.T`` (low-rank), ``W[t] + s_i sigma eps_k[t]``
        (full) or ``W[t]`` (frozen). Only the rows of ``A_k`` (or ``eps_k``) that the tokens
        name are read; the extra cost is ``O(batch * T * r * d)`` per noise draw.

        Args:
            path: the table's path (``"embed/w"``), a (vocab, d) leaf.
            tokens: integer ids in ``[0, vocab)``, either shared by all members, shape
                (batch, T), or one sequence batch per member, shape (popsize, batch, T).

        Returns:
            An array (popsize, batch, T, d) in the table's dtype.

        Raises:
            TypeError: for ids that are not integers.
            ValueError: for a leaf that is not 2-D, ``tokens`` of another shape or with T = 0,
                or an id outside ``[0, vocab)`` (checked with one read-back on a GPU).
        """
        leaf = self._leaf(path)
        if len(leaf.shape) != 2:
            raise ValueError(f"`path` {path!r} is not a (vocab, d) table (shape {leaf.shape}).")
        vocab, width = leaf.shape
        tokens = self._backend.asarray(tokens)
        if not (tokens.ndim == 2 or (tokens.ndim == 3 and tokens.shape[0] == self._popsize)):
            raise ValueError(
                f"`tokens` must have shape (batch, T) or ({self._popsize}, batch, T), got "
                f"{tuple(tokens.shape)}."
            )
        check_tokens(tokens, vocab, table=path)
        xp, base = self._backend.xp, self._base[path]
        shape = (self._popsize, *tokens.shape[-2:], width)
        rows = base[tokens]  # (batch, T, d) shared, (N, batch, T, d) per member
        if leaf.kind == "frozen":
            return xp.broadcast_to(rows, shape).copy() if tokens.ndim == 2 else rows
        # Member i = k·G + g: tokens seen as (K, G, batch·T) per member, (batch·T,) shared.
        draws, group = self._popsize // self._group, self._group
        signs = self._scaled_signs(path, base.dtype)  # (K, G, 1, 1)
        if tokens.ndim == 2:
            index: tuple[Any, ...] = (slice(None), tokens.reshape(-1))  # all draws, same rows
        else:
            index = (xp.arange(draws)[:, None, None], tokens.reshape(draws, group, -1))
        if leaf.kind == "full":
            picked = self._noise[path][index]  # (K, batch·T, d) or (K, G, batch·T, d)
            if tokens.ndim == 2:
                picked = picked[:, None]
            correction = picked * signs
        else:
            left, right = self._noise[path]  # (K, vocab, r), (K, d, r)
            rank = right.shape[2]
            picked = left[index]  # (K, batch·T, r) or (K, G, batch·T, r)
            right_t = right.transpose(0, 2, 1)  # (K, r, d)
            if tokens.ndim == 2:  # the correction of a draw, then each member's sign
                product = picked * right_t if rank == 1 else picked @ right_t
                correction = product[:, None] * (signs / math.sqrt(rank))
            else:  # the sign on the r columns, then one batched product per draw
                picked = (picked * (signs / math.sqrt(rank))).reshape(draws, -1, rank)
                correction = picked * right_t if rank == 1 else picked @ right_t
        correction = correction.reshape(shape)
        correction += rows  # broadcast over members when shared
        return correction

    def _member_matrices(self, path: str) -> Any:
        """Every member's (m, n) matrix of leaf ``path``: (popsize, m, n), see :meth:`stacked`."""
        return self.stacked(path).reshape(self._popsize, *self._leaf(path).matrix_shape)

    def _scaled_signs(self, path: str, dtype: Any, rank: int | None = None) -> Any:
        """``s_i * sigma`` of every member on the backend, shaped (K, G, 1, 1): i = k·G + g.

        With ``rank``, ``s_i * sigma / sqrt(rank)`` (a low-rank leaf's factor). Made on the
        backend at the first call for a leaf, dtype and rank (a fill with ``sigma``, with
        mirrored sampling a fill of the odd members with ``-sigma``, then the division: no host
        data to copy) and kept for the population's later calls.
        """
        key = (path, np.dtype(dtype), rank)
        scaled = self._device_signs.get(key)
        if scaled is None:
            if rank is not None:
                scaled = self._scaled_signs(path, dtype) / math.sqrt(rank)
            else:
                sigma = self._sigmas[path]
                scaled = self._backend.xp.full(
                    (self._popsize // self._group, self._group, 1, 1), sigma, dtype=key[1]
                )
                if self._mirrored:
                    scaled[:, 1] = -sigma
            self._device_signs[key] = scaled
        return scaled

    def _matrix_operand(self, path: str, x: Any, axis: int) -> tuple[LeafSpec, Any, Any]:
        """The leaf, its (m, n) matrix view and ``x`` on the backend, ``x``'s shape checked.

        ``x`` is one input (2-D) or one per member (3-D), its n axis at ``axis``: -1 for rows
        of inputs (:meth:`linear`), -2 for columns (:meth:`matmul`).
        """
        leaf = self._leaf(path)
        if len(leaf.shape) < 2:
            raise ValueError(f"`path` {path!r} is not a matrix leaf (shape {leaf.shape}).")
        rows, columns = leaf.matrix_shape
        x = self._backend.asarray(x)
        members_ok = x.ndim == 2 or (x.ndim == 3 and x.shape[0] == self._popsize)
        if not members_ok or x.shape[axis] != columns:
            item = f"batch, {columns}" if axis == -1 else f"{columns}, L"
            raise ValueError(
                f"`x` must have shape ({item}) or ({self._popsize}, {item}), got {tuple(x.shape)}."
            )
        return leaf, self._base[path].reshape(rows, columns), x

    def _leaf(self, path: str) -> LeafSpec:
        if path not in self._leaves:
            raise KeyError(f"no leaf {path!r}; leaves are {list(self._leaves)}.")
        return self._leaves[path]
