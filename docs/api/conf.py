"""Sphinx configuration of the eggroll_opt API reference, built from the docstrings.

Build it (warnings are errors, as in CI)::

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -b html docs/api build/api
"""

from typing import Any

import eggroll_opt

project = "eggroll_opt"
copyright = "the eggroll_opt authors; Apache-2.0"
release = eggroll_opt.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]

# The docstrings are Google style.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Public names read `Eggroll`, `optimize`, as users write them after `import eggroll_opt as eo`.
add_module_names = False
python_use_unqualified_type_names = True

html_theme = "alabaster"
html_title = f"eggroll_opt {release} API reference"


def _skip_namedtuple_fields(
    app: Any, what: str, name: str, obj: Any, skip: bool, options: Any
) -> bool | None:
    """Leave out the "Alias for field number N" entries of NamedTuple fields: the class's
    ``Attributes:`` section documents each field already, and both would define the name."""
    if (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return True
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-skip-member", _skip_namedtuple_fields)
