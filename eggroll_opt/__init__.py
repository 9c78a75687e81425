"""eggroll_opt: evolution strategies with low-rank (EGGROLL) perturbations, on NumPy or CuPy.

Example:
    >>> import numpy as np, eggroll_opt as eo
    >>> es = eo.Eggroll({"w": np.zeros((16, 8))}, popsize=64, sigma=0.05, learning_rate=0.02,
    ...                 seed=0, backend="numpy")
    >>> pop = es.ask()
    >>> stats = es.tell([float(np.sum((m.params()["w"] - 1) ** 2)) for m in pop])
    >>> stats.generation, es.generation
    (0, 1)
"""

from typing import Any

from . import adaptation, nn, optim, shaping
from ._backend import cupy_available
from ._backend import to_numpy as _to_numpy
from ._defaults import default_learning_rate, default_popsize, default_sigma
from ._evaluate import Evaluation, EvaluationError, MemberFailure, evaluate
from ._executors import Broadcast, ProcessPool, RemoteExecutor
from ._optimize import GenerationReport, OptimizeResult, optimize
from ._population import LeafSpec, Member, MemberSpec, Population
from ._safe_step import NonFiniteStepError
from ._strategy import AskTellError, Eggroll, GenerationStats, OpenES
from ._tree import tree_map

__version__ = "0.1.0"

__all__ = [
    "AskTellError",
    "Broadcast",
    "Eggroll",
    "Evaluation",
    "EvaluationError",
    "GenerationReport",
    "GenerationStats",
    "LeafSpec",
    "Member",
    "MemberFailure",
    "MemberSpec",
    "NonFiniteStepError",
    "OpenES",
    "OptimizeResult",
    "Population",
    "ProcessPool",
    "RemoteExecutor",
    "__version__",
    "adaptation",
    "cupy_available",
    "default_learning_rate",
    "default_popsize",
    "default_sigma",
    "evaluate",
    "nn",
    "optim",
    "optimize",
    "shaping",
    "to_numpy",
]


def to_numpy(tree: Any) -> Any:
    """Host (NumPy) copies of an array or of every leaf of a parameter tree.

    Example:
        >>> import numpy as np
        >>> to_numpy({"a": {"b": np.ones(2)}})
        {'a': {'b': array([1., 1.])}}
    """
    if isinstance(tree, dict):
        return tree_map(lambda leaf: __import__("numpy").asarray(_to_numpy(leaf)), tree)
    return __import__("numpy").asarray(_to_numpy(tree))
