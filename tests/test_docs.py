"""Every docstring example in the package runs and prints what it claims."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import eggroll_opt

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(eggroll_opt.__path__, prefix="eggroll_opt.")
    if name != "eggroll_opt.__main__"
)


@pytest.mark.parametrize("name", ["eggroll_opt", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
