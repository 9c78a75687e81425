"""``cupy.random``: draws of a host generator, delivered as device arrays."""

from . import _namespace

globals().update(_namespace.random_module())
