"""Every example runs at its --quick size and improves its objective."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ask_tell_example_learns(capsys):
    ratio = _load("ask_tell").main(["--quick"])
    assert ratio < 0.6  # the loss of the mean fell by more than 40%
    assert "ms per generation" in capsys.readouterr().out


MNIST = EXAMPLES.parent.parent / "shared" / "data" / "mnist"


@pytest.mark.skipif(not MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository")
def test_mnist_example_learns():
    result = _load("mnist").main(["--quick", "--mnist-dir", str(MNIST)])
    assert result["test_accuracy"] > result["initial_accuracy"] + 0.05
