"""Every example runs at its --quick size and improves its objective."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    """Import an example as its script would run: with ``examples/`` on the import path.

    The folder goes back off the path afterwards: ``examples/distributed.py`` would otherwise
    shadow Dask's ``distributed`` package for the rest of the test session.
    """
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(EXAMPLES))  # for the shared ``_common`` and ``_backprop``
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
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


@pytest.mark.skipif(not MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository")
def test_mnist_example_trains_the_same_on_any_number_of_threads():
    import numpy as np

    example = _load("mnist")
    run = ["--quick", "--mnist-dir", str(MNIST), "--no-progress"]
    one, three = (example.main([*run, "--threads", str(n)]) for n in (1, 3))
    assert [row[2] for row in one["history"]] == [row[2] for row in three["history"]]
    for path in ("c1/w", "c2/b", "fc/w", "out/b"):
        first, second = (r["mean"] for r in (one, three))
        for key in path.split("/"):
            first, second = first[key], second[key]
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(one["mean"]["fc"]["w"], example.init_cnn(0, 64)["fc"]["w"])


def test_mnist_example_refuses_no_threads(capsys):
    with pytest.raises(SystemExit):
        _load("mnist").main(["--threads", "0"])
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def _small_cnn(backprop, rng, stride, padding):
    """A float64 CNN with both activations, a bias-free layer, and an input batch for it."""
    import numpy as np

    model = backprop.Sequential(
        [
            ("conv2d", "c1", stride, padding),
            ("tanh",),
            ("conv2d", "c2", 1, padding),
            ("relu",),
            ("flatten",),
            ("dense", "fc"),
            ("tanh",),
            ("dense", "out"),
        ]
    )
    x = rng.standard_normal((3, 2, 7, 6))
    side = [((7 + 2 * padding - 3) // stride + 1), ((6 + 2 * padding - 3) // stride + 1)]
    side = [s + 2 * padding - 1 for s in side]  # after the 2x2 kernel of c2
    params = {
        "c1": {"w": rng.standard_normal((3, 2, 3, 3)), "b": rng.standard_normal(3)},
        "c2": {"w": rng.standard_normal((4, 3, 2, 2))},  # no bias
        "fc": {"w": 0.3 * rng.standard_normal((5, 4 * side[0] * side[1])), "b": np.ones(5)},
        "out": {"w": rng.standard_normal((3, 5)), "b": rng.standard_normal(3)},
    }
    return model, params, x


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 1), (2, 0)])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_backprop_gradients_match_finite_differences(stride, padding, loss):
    import numpy as np

    from eggroll_opt import nn

    rng = np.random.default_rng(stride * 10 + padding)
    model, params, x = _small_cnn(_load("_backprop"), rng, stride, padding)
    outputs = model(nn.ParamsLayers(params), x)
    value, grads = model.loss_and_grad(params, x, outputs, "mse")
    assert value < 1e-28  # its own forward pass gives nn.ParamsLayers' outputs
    targets = rng.standard_normal(outputs.shape) if loss == "mse" else rng.integers(0, 3, 3)
    value, grads = model.loss_and_grad(params, x, targets, loss)
    assert grads.keys() == params.keys()
    step = 1e-6
    for name, layer in params.items():
        assert grads[name].keys() == layer.keys()
        for key, leaf in layer.items():
            assert grads[name][key].shape == leaf.shape and grads[name][key].dtype == leaf.dtype
            numeric = np.zeros_like(leaf)
            for index in np.ndindex(leaf.shape):
                saved = leaf[index]
                leaf[index] = saved + step
                above = model.loss_and_grad(params, x, targets, loss)[0]
                leaf[index] = saved - step
                below = model.loss_and_grad(params, x, targets, loss)[0]
                leaf[index] = saved
                numeric[index] = (above - below) / (2 * step)
            np.testing.assert_allclose(grads[name][key], numeric, rtol=1e-5, atol=1e-7)
    if loss == "cross_entropy":
        np.testing.assert_allclose(value, float(nn.cross_entropy(outputs, targets)), rtol=1e-12)


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_torch_gradients_and_steps_equal_the_numpy_reverse_mode(loss):
    pytest.importorskip("torch")
    import copy

    import numpy as np

    from eggroll_opt import optim

    backprop = _load("_backprop")
    rng = np.random.default_rng(7)
    model, params, x = _small_cnn(backprop, rng, 2, 1)
    targets = rng.standard_normal((3, 3)) if loss == "mse" else rng.integers(0, 3, 3)
    value, grads = model.loss_and_grad(params, x, targets, loss)
    torch_value, torch_grads = model.torch_loss_and_grad(params, x, targets, loss)
    np.testing.assert_allclose(torch_value, value, rtol=1e-10)
    assert torch_grads.keys() == grads.keys()
    for name, layer in grads.items():
        assert torch_grads[name].keys() == layer.keys()
        for key, grad in layer.items():
            assert torch_grads[name][key].dtype == grad.dtype
            np.testing.assert_allclose(torch_grads[name][key], grad, rtol=1e-8, atol=1e-10)
    as_float32 = {
        name: {k: v.astype(np.float32) for k, v in layer.items()} for name, layer in params.items()
    }
    for inputs in (x, (x * 40).astype(np.int16)):  # float64 or integer inputs, float32 parameters
        _, grads32 = model.loss_and_grad(as_float32, inputs, targets, loss)
        _, torch_grads32 = model.torch_loss_and_grad(as_float32, inputs, targets, loss)
        for name, layer in grads32.items():
            for key, grad in layer.items():
                assert torch_grads32[name][key].dtype == np.float32
                scale = np.abs(grad).max()
                np.testing.assert_allclose(torch_grads32[name][key], grad, atol=1e-4 * scale)
    twin = copy.deepcopy(params)
    numpy_descent = backprop.Descent(model, params, optim.momentum(0.01), "numpy")
    torch_descent = backprop.Descent(model, twin, optim.momentum(0.01), "torch")
    for _ in range(3):
        numpy_descent.step(x, targets, loss)
        torch_descent.step(x, targets, loss)
    for name, layer in params.items():
        for key, leaf in layer.items():
            np.testing.assert_allclose(twin[name][key], leaf, rtol=1e-8, atol=1e-10)


def test_descent_names_a_bad_gradient_source(monkeypatch):
    import numpy as np

    from eggroll_opt import optim

    backprop = _load("_backprop")
    model, params, _ = _small_cnn(backprop, np.random.default_rng(0), 1, 0)
    with pytest.raises(
        ValueError, match=r"`gradients` must be one of \('numpy', 'torch'\), got 'jax'"
    ):
        backprop.Descent(model, params, optim.momentum(0.01), "jax")
    monkeypatch.setattr(backprop, "torch_available", lambda: False)
    with pytest.raises(ValueError, match="needs PyTorch: pip install torch"):
        backprop.Descent(model, params, optim.momentum(0.01), "torch")


def test_backprop_forward_equals_params_layers_and_keeps_float32():
    import numpy as np

    import eggroll_opt as eo
    from eggroll_opt import nn

    backprop = _load("_backprop")
    rng = np.random.default_rng(1)
    model = backprop.Sequential([("conv2d", "c", 2, 1), ("relu",), ("flatten",), ("dense", "out")])
    params = {
        "c": {"w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32)},
        "out": {
            "w": rng.standard_normal((2, 4 * 4 * 4)).astype(np.float32),
            "b": np.zeros(2, np.float32),
        },
    }
    x = rng.standard_normal((5, 1, 8, 8)).astype(np.float32)
    outputs = model(nn.ParamsLayers(params), x)
    assert outputs.shape == (5, 2) and outputs.dtype == np.float32
    value, grads = model.loss_and_grad(params, x, np.zeros((5, 2), np.float32), "mse")
    np.testing.assert_allclose(value, np.mean(outputs.astype(np.float64) ** 2), rtol=1e-5)
    pop = eo.Eggroll(params, popsize=4, sigma=0.1, learning_rate=0.1, seed=0, backend="numpy").ask()
    population_outputs = model(nn.PopulationLayers(pop), x)
    assert population_outputs.shape == (4, 5, 2)
    np.testing.assert_allclose(
        population_outputs[3], model(nn.ParamsLayers(pop[3].params()), x), rtol=1e-4, atol=1e-5
    )
    assert all(g.dtype == np.float32 for layer in grads.values() for g in layer.values())
    with pytest.raises(ValueError, match="unknown layer entry"):
        backprop.Sequential([("pool", 2)])


def test_parameter_matching_example_learns(capsys):
    result = _load("parameter_matching").main(["--quick", "--no-progress"])
    methods = {r["method"]: r for r in result["results"]}
    assert len(methods) == 5
    for r in methods.values():  # every method's held-out loss fell below its initial value
        assert r["relative_loss"] < 1.0, (r["method"], r["relative_loss"])
    assert methods["Adam (backprop)"]["relative_loss"] < 0.5
    assert "| mlp | EGGROLL r=1 |" in capsys.readouterr().out


def test_run_all_comparisons_example_learns(tmp_path):
    plot = tmp_path / "comparisons.png"
    result = _load("run_all_comparisons").main(["--quick", "--no-progress", "--plot", str(plot)])
    assert {(r["arch"], r["method"]) for r in result["results"]} == {
        (arch, method)
        for arch in ("mlp", "cnn", "policy")
        for method in ("EGGROLL r=1", "EGGROLL r=2", "EGGROLL r=4", "OpenES", "Adam (backprop)")
    }
    for r in result["results"]:
        assert r["relative_loss"] < 1.0, (r["arch"], r["method"], r["relative_loss"])
    assert plot.stat().st_size > 0


def test_strategies_are_chosen_by_exact_name(capsys):
    common = _load("_common")
    assert common.strategy_class("OpenES").__name__ == "OpenES"
    with pytest.raises(ValueError, match=r"unknown strategy 'openes'; choose from \['Eggroll'"):
        common.strategy_class("openes")
    pytest.importorskip("gymnasium")
    with pytest.raises(SystemExit):
        _load("cartpole").main(["--strategies", "Eggroll,Egroll", "--no-progress"])
    assert "--strategies: unknown 'Egroll'" in capsys.readouterr().err


def test_cartpole_example_learns(capsys):
    pytest.importorskip("gymnasium")
    result = _load("cartpole").main(["--quick", "--no-progress"])["Eggroll r=1"]
    population = result["curve"]["population"]  # mean return of each generation's population
    assert population[-1] > 2 * population[0]
    # live steps only: one reward of 1 per counted step, so steps = sum of first-episode returns
    assert result["env_steps"] == round(32 * sum(population))
    assert "| Eggroll r=1 |" in capsys.readouterr().out


@pytest.mark.skipif(not MNIST.is_dir(), reason="the shared MNIST copy is not beside the repository")
def test_mnist_comparison_example_learns(capsys):
    results = _load("mnist_comparison").main(
        ["--quick", "--no-progress", "--mnist-dir", str(MNIST), "--sgd-gradients", "numpy"]
    )
    assert set(results) == {"EGGROLL", "OpenES", "SGD"}
    for name, result in results.items():  # every method beat its initial test accuracy
        assert result["test_accuracy"] > result["initial_accuracy"] + 0.03, name
    assert "(NumPy backprop)" in capsys.readouterr().out


def test_non_differentiable_example_learns(capsys):
    results = _load("non_differentiable").main(["--quick", "--no-progress"])
    assert set(results) == {"zero-one", "ternary", "tsp"}
    for name, result in results.items():
        gradient, (eggroll, _) = result["gradient"], result["runs"]
        assert eggroll["final"] < eggroll["initial"], name  # EGGROLL improved the objective
        assert eggroll["final"] < gradient["after_score"], name  # and beat gradient descent
    assert "| tsp | OpenES |" in capsys.readouterr().out


def test_char_lm_example_learns_and_compares(tmp_path, monkeypatch, capsys):
    import math

    char_lm = _load("char_lm")
    monkeypatch.chdir(tmp_path)  # the plot goes to char_lm.png in the current folder by default
    result = char_lm.main(["--quick"])
    # Python's documentation topics differ between Python versions: count this one's characters
    vocab = len(set(char_lm.load_text(None)))
    ngrams, eggroll = result["ngrams"], result["eggroll"]
    assert ngrams["bigram"] < ngrams["unigram"] < math.log2(vocab)
    held_out = eggroll["curve"]["held-out"]
    assert abs(held_out[0] - math.log2(vocab)) < 1e-3  # a zero output layer: uniform
    assert eggroll["bpc"] < ngrams["unigram"]  # the quick run already beats the unigram model
    out = capsys.readouterr().out
    assert "| unigram (add-one) | counts |" in out and "EGGROLL sample: 'The " in out
    if result["adam"] is None:
        assert "skipped: PyTorch is not installed" in out
    else:  # the baseline trained for EGGROLL's training time and learned too
        assert result["adam"]["seconds"] >= eggroll["seconds"]
        assert result["adam"]["bpc"] < held_out[0] - 1
    assert (tmp_path / "char_lm.png").stat().st_size > 0


def test_char_lm_resumes_bit_identically_and_runs_without_torch(tmp_path, monkeypatch, capsys):
    import numpy as np

    char_lm = _load("char_lm")
    monkeypatch.setattr(char_lm, "torch_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    small = ["--quick", "--sample-every", "0", "--evaluate-every", "3", "--plot", ""]
    checkpoint = str(tmp_path / "lm.npz")
    straight = char_lm.main([*small, "--generations", "6"])
    char_lm.main([*small, "--generations", "3", "--checkpoint", checkpoint])
    resumed = char_lm.main([*small, "--generations", "6", "--checkpoint", checkpoint, "--resume"])
    assert "resumed" in capsys.readouterr().out
    assert resumed["eggroll"]["generations"] == 6
    assert resumed["eggroll"]["curve"]["generation"] == [0, 3, 6]
    for name, layer in straight["eggroll"]["params"].items():
        for key, leaf in layer.items():
            np.testing.assert_array_equal(resumed["eggroll"]["params"][name][key], leaf)
    assert resumed["eggroll"]["bpc"] == straight["eggroll"]["bpc"]
    assert resumed["adam"] is None and "PyTorch is not installed" in resumed["baseline"]
    with pytest.raises(ValueError, match=r"`--popsize` is 32 but the checkpoint .* with 128"):
        char_lm.main([*small, "--popsize", "32", "--checkpoint", checkpoint, "--resume"])
    other = tmp_path / "other.txt"
    other.write_text("abc" * 200, encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocabulary of 3 characters that does not match"):
        char_lm.main(
            [*small, "--text", str(other), "--prompt", "a", "--checkpoint", checkpoint, "--resume"]
        )
    with pytest.raises(ValueError, match=r"`--cosine` is True but the checkpoint .* with False"):
        char_lm.main([*small, "--cosine", "--checkpoint", checkpoint, "--resume"])
    with pytest.raises(FileNotFoundError, match=r"`--resume`: the checkpoint file .*missing"):
        char_lm.main([*small, "--checkpoint", str(tmp_path / "missing.npz"), "--resume"])
    assert not (tmp_path / "char_lm.png").exists()  # --plot "": no plot


def test_char_lm_resumes_a_cosine_run_only_with_its_schedule_length(tmp_path, monkeypatch):
    import numpy as np

    char_lm = _load("char_lm")
    monkeypatch.setattr(char_lm, "torch_available", lambda: False)
    small = ["--quick", "--sample-every", "0", "--evaluate-every", "2", "--plot", ""]
    cosine = [*small, "--cosine", "--generations", "4"]
    straight = char_lm.main(cosine)
    decaying = str(tmp_path / "cosine.npz")  # a custom optimizer: given again on resume
    # a budget shorter than any generation: the run stops after its first, as if interrupted
    char_lm.main([*cosine, "--minutes", "1e-9", "--checkpoint", decaying])
    resume = [*small, "--cosine", "--checkpoint", decaying, "--resume"]
    for generations in ("2", "6"):  # the schedule is 4 generations long: neither continues it
        with pytest.raises(
            ValueError,
            match=rf"`--generations` is {generations} but the checkpoint .*cosine.npz' was "
            r"trained with `--cosine` over `--generations` 4.* resume with `--generations 4`",
        ):
            char_lm.main([*resume, "--generations", generations])
    with pytest.raises(ValueError, match=r"`--cosine` is False but the checkpoint .* with True"):
        char_lm.main([*small, "--generations", "4", "--checkpoint", decaying, "--resume"])
    resumed = char_lm.main([*cosine, "--checkpoint", decaying, "--resume"])
    assert resumed["eggroll"]["generations"] == 4
    for name, layer in straight["eggroll"]["params"].items():
        for key, leaf in layer.items():
            np.testing.assert_array_equal(resumed["eggroll"]["params"][name][key], leaf)
    assert resumed["eggroll"]["bpc"] == straight["eggroll"]["bpc"]


def test_char_lm_torch_loss_equals_the_eo_nn_model():
    torch = pytest.importorskip("torch")
    import numpy as np

    from eggroll_opt import nn

    char_lm = _load("char_lm")
    vocab, embed, hidden, batch, seq_len = 11, 6, 8, 5, 7
    rng = np.random.default_rng(3)
    params = {  # random everywhere, the output layer included (init_params zeroes it)
        name: {
            key: (rng.standard_normal(leaf.shape) * (0.5 if key == "w" else 0.2)).astype(np.float32)
            + (1.0 if key == "scale" else 0.0)
            for key, leaf in layer.items()
        }
        for name, layer in char_lm.init_params(vocab, embed, hidden, seed=0).items()
    }
    windows = rng.integers(0, vocab, size=(batch, seq_len + 1))
    logits = char_lm.language_model(nn.ParamsLayers(params), windows[:, :-1])[None]
    expected = float(nn.sequence_cross_entropy(logits, windows[:, 1:])[0])
    leaves = {
        f"{name}/{key}": torch.from_numpy(leaf)
        for name, layer in params.items()
        for key, leaf in layer.items()
    }
    loss = char_lm.torch_loss(leaves, torch.from_numpy(windows))
    assert loss.dtype == torch.float32
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


@pytest.mark.parametrize(
    "text, options, error, message",
    [
        (None, ["--text", "MISSING"], FileNotFoundError, r"`--text` '.*MISSING' does not exist"),
        ("", [], ValueError, r"`--text` '.*' is empty"),
        (b"\xff\xfe\x00abc", [], ValueError, r"`--text` '.*' is not UTF-8 text"),
        ("DIR", [], ValueError, r"`--text` '.*' is a folder"),
        ("abcdefgh", ["--seq-len", "16"], ValueError, r"`--text` '.*text.txt' has 8 .* too short"),
        (None, ["--seq-len", "10000000"], ValueError, r"the default text \(pydoc_data.topics\)"),
        ("abc" * 100, ["--seq-len", "0"], ValueError, r"`--seq-len` must be at least 1, got 0"),
        ("abc" * 100, ["--popsize", "7"], ValueError, r"`--popsize` must be even .* got 7"),
        ("abc" * 100, ["--held-out", "1.5"], ValueError, r"`--held-out` must be .* got 1.5"),
        ("abc" * 100, ["--sigma", "-1"], ValueError, r"`--sigma` must be a positive .* -1.0"),
        ("abc" * 100, ["--resume"], ValueError, r"`--resume` needs `--checkpoint PATH`"),
        ("abc" * 100, [], ValueError, r"`--prompt` 'The ' holds characters that are not in"),
        ("abc" * 100, ["--prompt", ""], ValueError, r"`--prompt` must hold .* got ''"),
    ],
    ids=[
        "missing",
        "empty",
        "not-utf8",
        "folder",
        "too-short",
        "default-too-short",
        "seq-len-0",
        "odd-popsize",
        "held-out",
        "sigma",
        "resume",
        "prompt",
        "empty-prompt",
    ],
)
def test_char_lm_names_bad_input(tmp_path, text, options, error, message):
    char_lm = _load("char_lm")
    argv = ["--quick", "--sample-every", "0"]
    if text == "DIR":
        argv += ["--text", str(tmp_path)]
    elif text is not None:
        path = tmp_path / "text.txt"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        argv += ["--text", str(path)]
    with pytest.raises(error, match=message):
        char_lm.main(argv + options)
