"""A strict CuPy stand-in for the tests: CuPy's rules on the CPU, with NumPy doing the work.

Put ``tests/strict_cupy`` first on the import path (``EGGROLL_STRICT_CUPY=1`` makes
``tests/conftest.py`` do it) and ``import cupy`` loads this package, which sees one "GPU". Its
arrays refuse what real CuPy arrays refuse (implicit conversion to NumPy, NumPy operands, names
CuPy lacks) and ``cupy._audit`` counts launches, syncs and host-to-device copies. See
``docs/gpu.md`` for what it models and what it cannot.
"""

from . import _namespace
from ._core import audit as _audit  # noqa: F401  (the counts, for tests)

globals().update(_namespace.top_level())

from . import cuda, lib, linalg, random  # noqa: E402, F401  (submodules, after the names)
