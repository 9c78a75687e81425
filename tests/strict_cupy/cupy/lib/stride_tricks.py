"""``cupy.lib.stride_tricks``: views with given strides."""

import numpy as _np

from .. import _namespace

globals().update(_namespace.submodule("lib.stride_tricks", _np.lib.stride_tricks))
