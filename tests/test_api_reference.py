"""The API reference (docs/api) documents every public name of the package."""

from __future__ import annotations

import re
import types
from pathlib import Path

import eggroll_opt

API_DOCS = Path(__file__).resolve().parents[1] / "docs" / "api"
DIRECTIVE = re.compile(r"^\.\. (auto\w+|currentmodule):: (\S+)", re.MULTILINE)


def documented_names() -> set[str]:
    """Full names of what the reference's autodoc directives document."""
    names = set()
    for page in API_DOCS.glob("*.rst"):
        module = ""
        for directive, target in DIRECTIVE.findall(page.read_text()):
            if directive == "currentmodule":
                module = target
            elif directive == "automodule" or "." in target:
                names.add(target)
            else:
                names.add(f"{module}.{target}")
    return names


def test_reference_documents_every_name_in_all() -> None:
    documented = documented_names()
    missing = [
        name
        for name in eggroll_opt.__all__
        if f"eggroll_opt.{name}" not in documented
        # a submodule documented with `automodule` lists its own `__all__` itself
        and not isinstance(getattr(eggroll_opt, name), types.ModuleType)
    ]
    assert missing == []


def test_reference_has_a_page_for_each_public_submodule() -> None:
    documented = documented_names()
    submodules = [
        "eggroll_opt.adaptation",
        "eggroll_opt.datasets",
        "eggroll_opt.integrations.dask",
        "eggroll_opt.integrations.optuna",
        "eggroll_opt.nn",
        "eggroll_opt.optim",
        "eggroll_opt.shaping",
    ]
    assert [name for name in submodules if name not in documented] == []
