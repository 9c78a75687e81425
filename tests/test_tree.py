"""Parameter trees: flatten/unflatten round trips and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from eggroll_opt._tree import flatten, tree_map, unflatten


def test_round_trip_keeps_nesting_and_order():
    tree = {"z": np.ones(1), "enc": {"w": np.ones((2, 2)), "b": np.zeros(2)}, "a": 1.0}
    flat = flatten(tree)
    assert list(flat) == ["z", "enc/w", "enc/b", "a"]
    rebuilt = unflatten(flat)
    assert list(rebuilt) == ["z", "enc", "a"] and list(rebuilt["enc"]) == ["w", "b"]
    assert tree_map(lambda x: np.shape(x), tree)["enc"]["w"] == (2, 2)


@pytest.mark.parametrize(
    ("tree", "error", "match"),
    [
        ([1.0], TypeError, "`params` must be a dict"),
        ({1: np.ones(1)}, TypeError, "keys must be strings"),
        ({"a/b": np.ones(1)}, ValueError, "without '/'"),
        ({}, ValueError, "has no arrays"),
        ({"a": {}}, ValueError, "empty dict at 'a'"),
    ],
)
def test_errors_name_the_argument(tree, error, match):
    with pytest.raises(error, match=match):
        flatten(tree)
