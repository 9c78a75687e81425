"""Sequence layers of eggroll_opt.nn: each population layer equals the layer run on each member.

The math lives in ``eggroll_opt/_sequence.py`` and ``Population.embed``; these tests check the
population forward against materialised members (``pop[i].params()`` through ``ParamsLayers``),
the single-tree layers against direct step-by-step definitions, and the bad-input errors.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import eggroll_opt as eo
from eggroll_opt import nn
from tests.conftest import STRICT_CUPY, host, make_backend

# With the strict CuPy stand-in the property tests run on it too (no host/device mixing).
BACKENDS = ["numpy", "numpy-arrays", *(["cupy"] if STRICT_CUPY else [])]
NOISE = ["Eggroll", "OpenES"]


def _ask(params, *, noise, popsize, rank, mirrored, backend_name, noise_kinds=None, seed=0):
    """One generation of Eggroll (low-rank matrices) or OpenES (full noise everywhere)."""
    strategy = eo.OpenES if noise == "OpenES" else eo.Eggroll
    es = strategy(
        params,
        popsize=popsize + (popsize % 2 if mirrored else 0),
        sigma=0.3,
        learning_rate=0.1,
        rank=rank,
        mirrored=mirrored,
        seed=seed,
        noise_kinds=noise_kinds,
        backend=make_backend(backend_name),
    )
    return es.ask()


def _members(pop):
    """Each member as its own ParamsLayers, from its materialised parameters."""
    return [nn.ParamsLayers(pop[i].params()) for i in range(len(pop))]


def _tolerance(dtype):
    return {"rtol": 1e-4, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-10}


# What every property test draws: the strategy's settings (``_ask(params, **population)``) and
# whether the input is shared or has a member axis.
population_settings = dict(
    population=st.fixed_dictionaries(
        dict(
            popsize=st.integers(2, 5),
            rank=st.integers(1, 3),
            mirrored=st.booleans(),
            noise=st.sampled_from(NOISE),
            backend_name=st.sampled_from(BACKENDS),
        )
    ),
    per_member=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(
    vocab=st.integers(1, 7),
    width=st.integers(1, 5),
    batch=st.integers(1, 3),
    length=st.integers(1, 4),
    frozen=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    **population_settings,
)
def test_population_embedding_equals_each_member(
    vocab,
    width,
    batch,
    length,
    frozen,
    dtype,
    population,
    per_member,
):
    rng = np.random.default_rng(vocab * 10 + width)
    params = {
        "emb": {"w": rng.standard_normal((vocab, width)).astype(dtype)},
        "other": np.zeros(2, dtype),  # something to search when the table is frozen
    }
    pop = _ask(
        params,
        **population,
        noise_kinds={"emb/w": "frozen"} if frozen else None,
    )
    n = len(pop)
    tokens = rng.integers(0, vocab, (n, batch, length) if per_member else (batch, length))
    out = host(nn.PopulationLayers(pop).embedding("emb", tokens))
    assert out.shape == (n, batch, length, width) and out.dtype == dtype
    for i, member in enumerate(_members(pop)):
        member_tokens = tokens[i] if per_member else tokens
        table = host(pop[i].params()["emb"]["w"])
        np.testing.assert_allclose(out[i], table[member_tokens], **_tolerance(dtype))
        single = host(member.embedding("emb", member_tokens))
        np.testing.assert_array_equal(single, table[member_tokens])


@settings(max_examples=30, deadline=None)
@given(
    width=st.integers(1, 6),
    batch=st.integers(1, 3),
    length=st.integers(1, 4),
    with_bias=st.booleans(),
    **population_settings,
)
def test_population_norms_equal_each_member(
    width, batch, length, with_bias, population, per_member
):
    rng = np.random.default_rng(width)
    params = {
        "ln": {"scale": rng.standard_normal(width)},
        "rms": {"scale": rng.standard_normal(width)},
    }
    if with_bias:
        params["ln"]["bias"] = rng.standard_normal(width)
    pop = _ask(params, **population)
    n = len(pop)
    x = rng.standard_normal((n, batch, length, width) if per_member else (batch, length, width))
    layers = nn.PopulationLayers(pop)
    layer_normed = host(layers.layer_norm("ln", x))
    rms_normed = host(layers.rms_norm("rms", x))
    assert layer_normed.shape == rms_normed.shape == (n, batch, length, width)
    for i, member in enumerate(_members(pop)):
        member_x = x[i] if per_member else x
        np.testing.assert_allclose(
            layer_normed[i], host(member.layer_norm("ln", member_x)), rtol=1e-9, atol=1e-10
        )
        np.testing.assert_allclose(
            rms_normed[i], host(member.rms_norm("rms", member_x)), rtol=1e-9, atol=1e-10
        )


@settings(max_examples=30, deadline=None)
@given(
    inputs=st.integers(1, 4),
    hidden=st.integers(1, 4),
    batch=st.integers(1, 3),
    length=st.integers(1, 5),
    with_bias=st.booleans(),
    initial=st.sampled_from(["zeros", "shared", "per_member"]),
    **population_settings,
)
def test_population_min_gru_equals_each_member(
    inputs,
    hidden,
    batch,
    length,
    with_bias,
    initial,
    population,
    per_member,
):
    rng = np.random.default_rng(inputs * 10 + hidden)
    params = {"gru": {"w": rng.standard_normal((2 * hidden, inputs))}}
    if with_bias:
        params["gru"]["b"] = rng.standard_normal(2 * hidden)
    pop = _ask(params, **population)
    n = len(pop)
    x = rng.standard_normal((n, batch, length, inputs) if per_member else (batch, length, inputs))
    h0 = {
        "zeros": None,
        "shared": rng.standard_normal((batch, hidden)),
        "per_member": rng.standard_normal((n, batch, hidden)),
    }[initial]
    out = host(nn.PopulationLayers(pop).min_gru("gru", x, h0))
    assert out.shape == (n, batch, length, hidden)
    for i, member in enumerate(_members(pop)):
        member_h0 = h0[i] if initial == "per_member" else h0
        single = host(member.min_gru("gru", x[i] if per_member else x, member_h0))
        np.testing.assert_allclose(out[i], single, rtol=1e-9, atol=1e-10)


def _attention_params(rng, width, key_width, value_width, out_width, with_bias):
    shapes = {
        "q": (key_width, width),
        "k": (key_width, width),
        "v": (value_width, width),
        "o": (out_width, value_width),
    }
    params = {name: {"w": rng.standard_normal(shape)} for name, shape in shapes.items()}
    if with_bias:
        for name, shape in shapes.items():
            params[name]["b"] = rng.standard_normal(shape[0])
    return {"att": params}


@settings(max_examples=30, deadline=None)
@given(
    width=st.integers(1, 4),
    heads=st.integers(1, 3),
    head_width=st.integers(1, 3),
    out_width=st.integers(1, 4),
    batch=st.integers(1, 2),
    length=st.integers(1, 5),
    with_bias=st.booleans(),
    **population_settings,
)
def test_population_causal_attention_equals_each_member(
    width,
    heads,
    head_width,
    out_width,
    batch,
    length,
    with_bias,
    population,
    per_member,
):
    rng = np.random.default_rng(width * 100 + heads * 10 + head_width)
    params = _attention_params(
        rng, width, heads * head_width, heads * (head_width + 1), out_width, with_bias
    )
    pop = _ask(params, **population)
    n = len(pop)
    x = rng.standard_normal((n, batch, length, width) if per_member else (batch, length, width))
    out = host(nn.PopulationLayers(pop).causal_attention("att", x, heads=heads))
    assert out.shape == (n, batch, length, out_width)
    for i, member in enumerate(_members(pop)):
        single = host(member.causal_attention("att", x[i] if per_member else x, heads=heads))
        np.testing.assert_allclose(out[i], single, rtol=1e-9, atol=1e-10)


# -- the single-tree layers against their definitions, written step by step ------------------


def _softmax(row):
    row = np.exp(row - row.max())
    return row / row.sum()


def test_params_layers_follow_the_step_by_step_definitions():
    rng = np.random.default_rng(0)
    batch, length, width, hidden, heads = 2, 5, 4, 3, 2
    gru = {"w": rng.standard_normal((2 * hidden, width)), "b": rng.standard_normal(2 * hidden)}
    norm = {"scale": rng.standard_normal(width), "bias": rng.standard_normal(width)}
    params = {"gru": gru, "ln": norm, **_attention_params(rng, width, 4, 6, 3, True)}
    layers = nn.ParamsLayers(params)
    x = rng.standard_normal((batch, length, width))

    centred = x - x.mean(-1, keepdims=True)
    expected = centred / np.sqrt(centred.var(-1, keepdims=True) + 1e-5) * norm["scale"]
    np.testing.assert_allclose(layers.layer_norm("ln", x), expected + norm["bias"], rtol=1e-12)
    rms = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * norm["scale"]
    np.testing.assert_allclose(layers.rms_norm("ln", x), rms, rtol=1e-12)

    h0 = rng.standard_normal((batch, hidden))
    state, states = h0, []
    for t in range(length):  # z = σ(W_z x + b_z), h = (1 - z) h + z (W_h x + b_h)
        projected = x[:, t] @ gru["w"].T + gru["b"]
        gate = 1 / (1 + np.exp(-projected[:, :hidden]))
        state = (1 - gate) * state + gate * projected[:, hidden:]
        states.append(state)
    np.testing.assert_allclose(layers.min_gru("gru", x, h0), np.stack(states, 1), rtol=1e-12)

    att = params["att"]
    q, k, v = (x @ att[name]["w"].T + att[name]["b"] for name in "qkv")
    expected = np.zeros((batch, length, 6))
    for b in range(batch):
        for head in range(heads):
            qh, kh = q[b, :, 2 * head : 2 * head + 2], k[b, :, 2 * head : 2 * head + 2]
            vh = v[b, :, 3 * head : 3 * head + 3]
            for t in range(length):  # step t attends to steps 0..t
                weights = _softmax(kh[: t + 1] @ qh[t] / math.sqrt(2))
                expected[b, t, 3 * head : 3 * head + 3] = weights @ vh[: t + 1]
    expected = expected @ att["o"]["w"].T + att["o"]["b"]
    out = layers.causal_attention("att", x, heads=heads)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)

    later = x.copy()
    later[:, 3:] = 100.0  # the future does not reach the past
    np.testing.assert_allclose(
        layers.causal_attention("att", later, heads=heads)[:, :3], out[:, :3]
    )
    np.testing.assert_allclose(layers.min_gru("gru", later)[:, :3], layers.min_gru("gru", x)[:, :3])


def test_attention_softmax_is_stable_for_large_scores():
    params = _attention_params(np.random.default_rng(1), 2, 2, 2, 2, False)
    out = nn.ParamsLayers(params).causal_attention("att", np.full((1, 4, 2), 1e4))
    assert np.isfinite(out).all()


# -- a small language model written once ------------------------------------------------------


def _language_model(layers, tokens):
    h = layers.embedding("emb", tokens)
    h = layers.layer_norm("ln", h)
    h = layers.min_gru("gru", h)
    h = h + layers.causal_attention("att", h, heads=2)
    return layers.dense_per_step("out", layers.rms_norm("rms", h))


def _language_model_params(vocab=7, width=6, hidden=4):
    rng = np.random.default_rng(3)

    def normal(*shape):
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    return {
        "emb": {"w": normal(vocab, width)},
        "ln": {"scale": np.ones(width, np.float32), "bias": np.zeros(width, np.float32)},
        "gru": {"w": normal(2 * hidden, width), "b": np.zeros(2 * hidden, np.float32)},
        "att": {name: {"w": normal(4, hidden)} for name in "qkv"} | {"o": {"w": normal(4, 4)}},
        "rms": {"scale": np.ones(hidden, np.float32)},
        "out": {"w": normal(vocab, hidden), "b": np.zeros(vocab, np.float32)},
    }


@pytest.mark.parametrize("strategy", [eo.Eggroll, eo.OpenES])
def test_a_language_model_written_once_runs_for_the_population_and_each_member(backend, strategy):
    es = strategy(
        _language_model_params(), popsize=6, sigma=0.1, learning_rate=0.1, seed=4, backend=backend
    )
    pop = es.ask()
    tokens = np.random.default_rng(5).integers(0, 7, (3, 5))
    logits = _language_model(nn.PopulationLayers(pop), tokens)
    assert logits.shape == (6, 3, 5, 7) and logits.dtype == np.float32
    losses = nn.sequence_cross_entropy(logits, tokens)
    for i, member in enumerate(_members(pop)):
        single = _language_model(member, tokens)
        np.testing.assert_allclose(host(logits[i]), host(single), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            host(losses[i]), host(nn.sequence_cross_entropy(single, tokens)), rtol=1e-5
        )
    assert len(set(np.round(host(losses), 5))) == 6  # every member sees its own noise
    parts = pop.split(2)  # sub-populations embed as the whole does
    joined = np.concatenate([host(p.embed("emb/w", tokens)) for p in parts])
    np.testing.assert_allclose(joined, host(pop.embed("emb/w", tokens)), rtol=1e-6)


def test_embedding_gathers_rows_and_never_builds_a_table_per_member():
    vocab, width, popsize = 50_000, 64, 16
    params = {"emb": {"w": np.zeros((vocab, width))}}
    es = eo.Eggroll(params, popsize=popsize, sigma=0.1, learning_rate=0.1, seed=0, rank=2)
    pop = es.ask()
    tokens = np.random.default_rng(0).integers(0, vocab, (2, 8))
    tracemalloc.start()
    out = pop.embed("emb/w", tokens)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    table_bytes = vocab * width * 8  # one member's dense table: 25.6 MB
    assert out.shape == (popsize, 2, 8, width)
    assert peak < table_bytes / 20, peak


# -- sequence losses and sampling -------------------------------------------------------------


def test_sequence_cross_entropy_is_the_mean_negative_log_likelihood_per_member():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 2, 4, 5)) * 3
    targets = rng.integers(0, 5, (2, 4))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, np.broadcast_to(targets[..., None], (3, 2, 4, 1)), -1)
    np.testing.assert_allclose(nn.sequence_cross_entropy(logits, targets), expected.mean((1, 2, 3)))
    per_member = rng.integers(0, 5, (3, 2, 4))
    loss = nn.sequence_cross_entropy(logits, per_member)
    for i in range(3):
        np.testing.assert_allclose(loss[i], nn.sequence_cross_entropy(logits[i], per_member[i]))
    huge = np.array([[[[1e4, 0.0]]]])  # stable: no overflow
    np.testing.assert_allclose(nn.sequence_cross_entropy(huge, np.array([[1]])), [1e4])


def test_sample_tokens_draw_from_the_softmax_and_greedy_takes_the_argmax():
    probabilities = np.array([0.1, 0.0, 0.6, 0.3])
    with np.errstate(divide="ignore"):
        logits = np.broadcast_to(np.log(probabilities), (20_000, 4))
    tokens = nn.sample_tokens(logits, np.random.default_rng(0))
    counts = np.bincount(tokens, minlength=4) / len(tokens)
    np.testing.assert_allclose(counts, probabilities, atol=0.015)
    assert counts[1] == 0  # an impossible token is never drawn
    np.testing.assert_array_equal(tokens, nn.sample_tokens(logits, 0))  # a seed repeats
    cold = nn.sample_tokens(logits, 1, temperature=0.05)
    assert (cold == 2).mean() > 0.99
    np.testing.assert_array_equal(nn.greedy_tokens(np.array([[0.0, 3.0, 1.0]])), [1])


def test_sampling_stays_on_the_device(backend):
    logits = backend.xp.asarray(np.random.default_rng(0).standard_normal((4, 3, 5)))
    tokens = nn.sample_tokens(logits, np.random.default_rng(1), temperature=0.7)
    assert type(tokens) is type(logits) and tokens.shape == (4, 3)
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 5
    assert type(nn.greedy_tokens(logits)) is type(logits)


# -- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def both_layers():
    pop = _ask(
        _language_model_params(),
        noise="Eggroll",
        popsize=4,
        rank=1,
        mirrored=True,
        backend_name="numpy",
    )
    return [nn.PopulationLayers(pop), nn.ParamsLayers(pop[0].params())]


@pytest.mark.parametrize(
    ("tokens", "error", "match"),
    [
        (
            np.array([[1, 7]]),
            ValueError,
            r"`tokens` holds the id 7, outside the vocabulary \[0, 7\)",
        ),
        (np.array([[-1, 2]]), ValueError, r"`tokens` holds the id -1, outside"),
        (
            np.array([[1.0, 2.0]]),
            TypeError,
            "`tokens` must hold integer token ids, got dtype float64",
        ),
        (np.array([[True]]), TypeError, "`tokens` must hold integer token ids, got dtype bool"),
        (np.zeros((2, 0), int), ValueError, r"`tokens` must be \(batch, T\).*got shape \(2, 0\)"),
        (np.zeros(3, int), ValueError, r"`tokens` must have shape \(batch, T\).*got \(3,\)"),
    ],
)
def test_bad_tokens_name_the_argument_and_value(both_layers, tokens, error, match):
    for layers in both_layers:
        with pytest.raises(error, match=match):
            layers.embedding("emb", tokens)


def test_out_of_range_tokens_name_the_table(both_layers):
    for layers in both_layers:
        with pytest.raises(ValueError, match=r"vocabulary \[0, 7\) of the embedding 'emb/w'"):
            layers.embedding("emb", np.array([[9]]))


def test_bad_sequences_name_the_argument_and_value(both_layers):
    for layers in both_layers:
        with pytest.raises(
            ValueError, match=r"layer 'ln' expects 6 features .*got shape \(2, 3, 5\)"
        ):
            layers.layer_norm("ln", np.zeros((2, 3, 5)))
        with pytest.raises(ValueError, match=r"layer 'rms' expects 4 features"):
            layers.rms_norm("rms", np.zeros((2, 3, 6)))
        with pytest.raises(ValueError, match=r"T >= 1, got shape \(2, 0, 6\)"):
            layers.layer_norm("ln", np.zeros((2, 0, 6)))
        with pytest.raises(ValueError, match=r"layer 'gru' expects 6 features"):
            layers.min_gru("gru", np.zeros((2, 3, 4)))
        with pytest.raises(ValueError, match=r"T >= 1, got shape \(2, 0, 6\)"):
            layers.min_gru("gru", np.zeros((2, 0, 6)))
        with pytest.raises(ValueError, match=r"`h0` of minGRU 'gru' must have shape \(2, 4\)"):
            layers.min_gru("gru", np.zeros((2, 3, 6)), np.zeros((2, 5)))
        with pytest.raises(ValueError, match=r"layer 'att' expects 4 features"):
            layers.causal_attention("att", np.zeros((2, 3, 5)), heads=2)
        with pytest.raises(ValueError, match=r"`heads`=3 must divide the query width 4"):
            layers.causal_attention("att", np.zeros((2, 3, 4)), heads=3)
        with pytest.raises(ValueError, match=r"`heads` must be a positive int, got 0"):
            layers.causal_attention("att", np.zeros((2, 3, 4)), heads=0)
        with pytest.raises(ValueError, match=r"`eps` must be a positive number, got -1.0"):
            layers.layer_norm("ln", np.zeros((2, 3, 6)), eps=-1.0)
        with pytest.raises(ValueError, match=r"`out/w` must be \(2 \* hidden, inputs\).*\(7, 4\)"):
            layers.min_gru("out", np.zeros((2, 3, 4)))
        with pytest.raises(KeyError, match="no leaf 'nope/scale'"):
            layers.rms_norm("nope", np.zeros((2, 3, 6)))
        with pytest.raises(ValueError, match=r"T >= 1, got shape \(2, 0, 4\)"):
            layers.dense_per_step("out", np.zeros((2, 0, 4)))
        with pytest.raises(ValueError, match=r"layer 'out' expects 4 features"):
            layers.dense_per_step("out", np.zeros((2, 3, 5)))
    population = both_layers[0]
    with pytest.raises(ValueError, match=r"leading member axis of 4, got shape \(3, 2, 3, 6\)"):
        population.layer_norm("ln", np.zeros((3, 2, 3, 6)))
    with pytest.raises(
        ValueError, match=r"`tokens` must have shape \(batch, T\) or \(4, batch, T\)"
    ):
        population.embedding("emb", np.zeros((3, 2, 3), int))


def test_bad_losses_and_sampling_arguments_name_the_value():
    logits = np.zeros((2, 3, 4, 5))
    with pytest.raises(
        ValueError, match=r"`targets` holds the id 5, outside the vocabulary \[0, 5\)"
    ):
        nn.sequence_cross_entropy(logits, np.full((3, 4), 5))
    with pytest.raises(TypeError, match="`targets` must hold integer token ids, got dtype float64"):
        nn.sequence_cross_entropy(logits, np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"`targets` must have shape \(3, 4\) or \(2, 3, 4\)"):
        nn.sequence_cross_entropy(logits, np.zeros((3, 2), int))
    with pytest.raises(ValueError, match=r"`targets` must be \(batch, T\).*got shape \(3, 0\)"):
        nn.sequence_cross_entropy(np.zeros((3, 0, 5)), np.zeros((3, 0), int))
    with pytest.raises(ValueError, match=r"`logits` must be \(\.\.\., batch, T, vocab\)"):
        nn.sequence_cross_entropy(np.zeros((3, 5)), np.zeros((3,), int))
    for temperature in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(
            ValueError, match=f"`temperature` must be a positive finite number, got {temperature}"
        ):
            nn.sample_tokens(np.zeros((2, 3)), 0, temperature=temperature)
