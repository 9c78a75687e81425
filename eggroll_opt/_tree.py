"""Parameter trees: nested dicts of arrays, flattened to ``"a/b/c"`` paths.

The strategy works on a flat ``dict[path, array]`` internally and gives users back the nesting
they passed in. Keys must be strings without ``/``, so a path names exactly one leaf.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

SEPARATOR = "/"


def flatten(tree: Mapping[str, Any], argument: str = "params") -> dict[str, Any]:
    """Flatten a nested mapping into ``{path: leaf}`` in insertion order.

    Raises:
        TypeError: if ``tree`` is not a mapping or a key is not a string.
        ValueError: if a key contains ``/``, a sub-mapping is empty, or there are no leaves.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"`{argument}` must be a dict of arrays, got {type(tree).__name__}.")
    flat = dict(_walk(tree, (), argument))
    if not flat:
        raise ValueError(f"`{argument}` has no arrays.")
    return flat


def _walk(
    tree: Mapping[str, Any], prefix: tuple[str, ...], argument: str
) -> Iterator[tuple[str, Any]]:
    if prefix and not tree:
        raise ValueError(
            f"`{argument}` has an empty dict at {SEPARATOR.join(prefix)!r}; remove it or give it "
            "arrays."
        )
    for key, value in tree.items():
        if not isinstance(key, str):
            raise TypeError(f"`{argument}` keys must be strings, got {key!r}.")
        if SEPARATOR in key or not key:
            raise ValueError(
                f"`{argument}` key {key!r} must be a non-empty string without {SEPARATOR!r}."
            )
        if isinstance(value, Mapping):
            yield from _walk(value, (*prefix, key), argument)
        else:
            yield SEPARATOR.join((*prefix, key)), value


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild the nested dict from ``{path: leaf}`` (inverse of :func:`flatten`)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, name = path.split(SEPARATOR)
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[name] = value
    return tree


def tree_map(function: Any, tree: Mapping[str, Any]) -> dict[str, Any]:
    """Apply ``function`` to every leaf of a nested dict, keeping the nesting."""
    return {
        key: tree_map(function, value) if isinstance(value, Mapping) else function(value)
        for key, value in tree.items()
    }
