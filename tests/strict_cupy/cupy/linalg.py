"""``cupy.linalg``: NumPy's linear algebra on device arrays only."""

import numpy as _np

from . import _namespace

globals().update(_namespace.submodule("linalg", _np.linalg))
