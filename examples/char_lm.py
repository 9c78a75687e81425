"""Train a character-level language model with EGGROLL: no gradients, a whole population per step.

The model reads characters and predicts the next one: embedding (vocab x E) -> minGRU (hidden
H) -> RMS norm -> dense (H -> vocab), written once as :func:`language_model` for a whole
population (:class:`~eggroll_opt.nn.PopulationLayers`, no member ever materialised: the
embedding is a gather of low-rank factor rows and every weight matrix goes through
``Population.linear``) or for one parameter tree (:class:`~eggroll_opt.nn.ParamsLayers`).
Each generation draws ``--batch`` windows of ``--seq-len + 1`` characters from the training
text, shared by all members; a member's fitness is its mean next-character cross-entropy on
them (:func:`~eggroll_opt.nn.sequence_cross_entropy`, minimized), and Adam takes the step
(fixed σ, rank-1 noise on every matrix; with ``--cosine`` Adam's step size falls along a
cosine to a tenth of ``--learning-rate`` over ``--generations``).

The text is a file named by ``--text`` (read as UTF-8), or by default the documentation topics
that ship with Python (``pydoc_data.topics``), so the example runs offline. The vocabulary is
the set of distinct characters of the whole text; the last ``--held-out`` fraction is never
trained on. Quality is held-out **bits per character** (bpc): the mean of ``-log2 p(next
char)`` over the held-out characters after the first, read in windows of ``--seq-len``
characters whose state starts at zero (each window overlaps the previous one by a character, so
each is predicted once, from at least one character of context; a tail shorter than a window is
left out). Beside it:

* a unigram and a bigram model of the training text, with add-one smoothing, scored on the
  same held-out characters;
* the same network, from the same initial parameters, trained by Adam on exact gradients
  (PyTorch's autograd on the CPU) on batches of the same shape for the same training wall time
  as EGGROLL's. PyTorch is optional (``pip install torch``); without it the baseline is skipped
  and the table says so.

Training time counts ``ask``, the population's forward pass and ``tell`` (for Adam: forward,
backward and step); held-out evaluations and samples are not counted.

Examples:
    python examples/char_lm.py --generations 2500 --cosine --minutes 30 --plot lm.png
    python examples/char_lm.py --minutes 25          # a fixed step size, for 25 minutes
    python examples/char_lm.py --text my_book.txt --generations 500 --sample-every 50
    python examples/char_lm.py --checkpoint lm.npz --generations 200      # then continue:
    python examples/char_lm.py --checkpoint lm.npz --generations 400 --resume

A resumed run must repeat the settings of the run it continues (the model, the population,
``--seed``, ``--cosine``, ...); ``--generations`` and ``--minutes`` may change, except that with
``--cosine`` the schedule is ``--generations`` long, so a ``--cosine`` run resumes only with
the same ``--generations`` (a run stopped by ``--minutes`` then ends as a straight run would).
The learning curves go to ``char_lm.png`` in the current folder (``--plot PATH`` elsewhere,
``--plot ""`` for none; without matplotlib the run says so and skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple

import numpy as np
from _backprop import torch_available
from _common import cosine_adam, markdown_table

import eggroll_opt as eo
from eggroll_opt import nn

DEFAULT_TEXT = "pydoc_data.topics"
# --quick: a small model for a few seconds of training (what CI runs).
QUICK = {
    "embed": 16,
    "hidden": 32,
    "seq_len": 16,
    "batch": 16,
    "popsize": 128,
    "learning_rate": 0.05,
    "generations": 40,
    "minutes": 0.0,
    "evaluate_every": 20,
    "sample_every": 20,
    "sample_length": 60,
}
# What a checkpoint's run must share with the command that resumes it.
SETTINGS = (
    "text",
    "held_out",
    "embed",
    "hidden",
    "seq_len",
    "batch",
    "popsize",
    "sigma",
    "learning_rate",
    "rank",
    "seed",
    "cosine",
)


# -- the text --------------------------------------------------------------------------------


def load_text(path: str | None) -> str:
    """The text of the file ``path`` (UTF-8), or Python's documentation topics when None.

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a folder, an empty file or one that is not UTF-8 text.
    """
    if path is None or path == DEFAULT_TEXT:
        from pydoc_data.topics import topics

        return "\n".join(topics[name] for name in sorted(topics))
    if not os.path.exists(path):
        raise FileNotFoundError(f"`--text` {path!r} does not exist.")
    if os.path.isdir(path):
        raise ValueError(f"`--text` {path!r} is a folder, not a text file.")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as error:
        raise ValueError(f"`--text` {path!r} is not UTF-8 text ({error}).") from None
    if not text:
        raise ValueError(f"`--text` {path!r} is empty.")
    return text


class Corpus(NamedTuple):
    """A text as token ids: the vocabulary, the training split and the held-out split."""

    vocab: str  # the distinct characters, sorted; a character's id is its position
    train: np.ndarray  # int64 ids
    held_out: np.ndarray

    def encode(self, text: str, argument: str = "text") -> np.ndarray:
        """Ids of the characters of ``text``; raises ValueError naming ``argument`` for a
        character outside the vocabulary."""
        index = {char: i for i, char in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(
                f"`{argument}` {text!r} holds characters that are not in the text's vocabulary: "
                f"{''.join(unknown)!r}."
            )
        return np.array([index[char] for char in text], dtype=np.int64)

    def decode(self, ids: Any) -> str:
        """The characters of the ids ``ids``."""
        return "".join(self.vocab[int(i)] for i in np.asarray(ids).reshape(-1))


def make_corpus(text: str, held_out: float, seq_len: int, path: str | None = None) -> Corpus:
    """Split ``text`` into training and held-out ids (the held-out part is the end); ``path``
    is the ``--text`` it was read from (None or :data:`DEFAULT_TEXT`: Python's topics), named in
    errors.

    Raises:
        ValueError: for a ``held_out`` fraction outside (0, 1), a ``seq_len`` below 1, or a
            text too short to give each split at least one window of ``seq_len + 1``
            characters.
    """
    if not 0 < held_out < 1:
        raise ValueError(f"`--held-out` must be a fraction in (0, 1), got {held_out!r}.")
    if seq_len < 1:
        raise ValueError(f"`--seq-len` must be at least 1, got {seq_len}.")
    vocab = "".join(sorted(set(text)))
    index = {char: i for i, char in enumerate(vocab)}
    ids = np.array([index[char] for char in text], dtype=np.int64)
    split = len(ids) - round(held_out * len(ids))
    train, held = ids[:split], ids[split:]
    if min(len(train), len(held)) < seq_len + 1:
        needed = math.ceil((seq_len + 1) / min(held_out, 1 - held_out))
        source = (
            f"the default text ({DEFAULT_TEXT})"
            if path is None or path == DEFAULT_TEXT
            else f"`--text` {path!r}"
        )
        raise ValueError(
            f"{source} has {len(ids)} characters: too short for `--seq-len` {seq_len} with "
            f"`--held-out` {held_out} (the training and the held-out part need {seq_len + 1} "
            f"characters each, got {len(train)} and {len(held)}; about {needed} characters "
            "would do)."
        )
    return Corpus(vocab=vocab, train=train, held_out=held)


def held_out_windows(ids: np.ndarray, seq_len: int) -> np.ndarray:
    """Windows (count, seq_len + 1) of ``ids`` that overlap by one id: each id after the first
    is a target exactly once (a remainder shorter than a window is left out)."""
    count = (len(ids) - 1) // seq_len
    starts = np.arange(count) * seq_len
    return ids[starts[:, None] + np.arange(seq_len + 1)]


def training_batch(train: np.ndarray, batch: int, seq_len: int, seed: int, generation: int) -> Any:
    """``batch`` random windows (batch, seq_len + 1) of the training ids for ``generation``
    (the same ones on a resumed run)."""
    rng = np.random.default_rng([seed, generation])
    starts = rng.integers(0, len(train) - seq_len, size=batch)
    return train[starts[:, None] + np.arange(seq_len + 1)]


def ngram_bpc(corpus: Corpus, targets_from: np.ndarray) -> dict[str, float]:
    """Held-out bpc of add-one-smoothed unigram and bigram models of the training ids.

    ``targets_from`` are the held-out windows (count, T + 1): their targets ``[:, 1:]`` and
    previous characters ``[:, :-1]`` are the ones the network is scored on.
    """
    size = len(corpus.vocab)
    previous, targets = targets_from[:, :-1].reshape(-1), targets_from[:, 1:].reshape(-1)
    unigram = np.bincount(corpus.train, minlength=size) + 1.0
    unigram /= unigram.sum()
    pairs = np.zeros((size, size))
    np.add.at(pairs, (corpus.train[:-1], corpus.train[1:]), 1.0)
    pairs += 1.0
    pairs /= pairs.sum(axis=1, keepdims=True)
    return {
        "unigram": float(-np.log2(unigram[targets]).mean()),
        "bigram": float(-np.log2(pairs[previous, targets]).mean()),
    }


# -- the model -------------------------------------------------------------------------------


def init_params(vocab_size: int, embed: int, hidden: int, seed: int) -> dict[str, Any]:
    """Float32 parameters: a unit-normal embedding, a minGRU with 1/sqrt(fan-in) weights, and a
    zero output layer (the first prediction is uniform)."""
    rng = np.random.default_rng(seed)
    return {
        "embed": {"w": rng.standard_normal((vocab_size, embed)).astype(np.float32)},
        "gru": {
            "w": (rng.standard_normal((2 * hidden, embed)) / math.sqrt(embed)).astype(np.float32),
            "b": np.zeros(2 * hidden, np.float32),
        },
        "norm": {"scale": np.ones(hidden, np.float32)},
        "out": {
            "w": np.zeros((vocab_size, hidden), np.float32),
            "b": np.zeros(vocab_size, np.float32),
        },
    }


def recurrent_states(layers: Any, tokens: Any, h0: Any = None) -> Any:
    """Every step's minGRU state for the token ids ``tokens`` (batch, T)."""
    return layers.min_gru("gru", layers.embedding("embed", tokens), h0)


def next_char_logits(layers: Any, states: Any) -> Any:
    """Logits of the next character from the recurrent states."""
    return layers.dense_per_step("out", layers.rms_norm("norm", states))


def language_model(layers: Any, tokens: Any) -> Any:
    """Next-character logits (..., batch, T, vocab) for every position of ``tokens``."""
    return next_char_logits(layers, recurrent_states(layers, tokens))


def population_losses(pop: eo.Population, windows: np.ndarray, chunk: int) -> np.ndarray:
    """Every member's mean next-character cross-entropy (nats) on the shared ``windows``, in
    parts of ``chunk`` members."""
    inputs, targets = windows[:, :-1], windows[:, 1:]
    return np.concatenate(
        [
            eo.to_numpy(
                nn.sequence_cross_entropy(
                    language_model(nn.PopulationLayers(part), inputs), targets
                )
            )
            for part in pop.split(chunk)
        ]
    )


def bits_per_char(params: dict[str, Any], windows: np.ndarray, batch: int = 256) -> float:
    """Mean bits per predicted character of one parameter tree on ``windows`` (count, T + 1)."""
    layers = nn.ParamsLayers(eo.to_numpy(params))
    total = 0.0
    for start in range(0, len(windows), batch):
        part = windows[start : start + batch]
        logits = language_model(layers, part[:, :-1])[None]
        total += float(nn.sequence_cross_entropy(logits, part[:, 1:])[0]) * len(part)
    return total / len(windows) / math.log(2)


def sample_text(
    params: dict[str, Any],
    corpus: Corpus,
    prompt: str,
    length: int,
    seed: int,
    temperature: float = 0.8,
) -> str:
    """``prompt`` followed by ``length`` characters drawn from the model one at a time (the
    minGRU state carries over, so each character costs one step)."""
    layers = nn.ParamsLayers(eo.to_numpy(params))
    rng = np.random.default_rng(seed)
    tokens, state = corpus.encode(prompt, "--prompt")[None], None
    drawn = []
    for _ in range(length):
        states = recurrent_states(layers, tokens, state)
        state = states[:, -1]
        logits = next_char_logits(layers, states[:, -1:])[:, -1]
        tokens = nn.sample_tokens(logits, rng, temperature=temperature)[:, None]
        drawn.append(int(tokens[0, 0]))
    return prompt + corpus.decode(drawn)


# -- EGGROLL ---------------------------------------------------------------------------------


def _optimizer(args: argparse.Namespace) -> Any:
    """Adam with the fixed ``--learning-rate``, or with ``--cosine`` one that falls along a
    cosine to a tenth of it over ``--generations``."""
    return cosine_adam(args.learning_rate, args.generations) if args.cosine else "adam"


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in SETTINGS}


def _schedule(args: argparse.Namespace) -> int | None:
    """The length of the ``--cosine`` schedule (``--generations``), None without ``--cosine``:
    a resumed run must keep it, where a fixed step size may run longer."""
    return args.generations if args.cosine else None


def _sidecar(checkpoint: str) -> str:
    """The JSON file beside a checkpoint: the run's settings, vocabulary and curve."""
    return checkpoint + ".json"


def _resume(args: argparse.Namespace, corpus: Corpus) -> tuple[eo.Eggroll, dict[str, Any]]:
    """The strategy and the run record saved at ``--checkpoint``, checked against ``args``."""
    path = args.checkpoint
    if not os.path.exists(path) or not os.path.exists(_sidecar(path)):
        missing = path if not os.path.exists(path) else _sidecar(path)
        raise FileNotFoundError(f"`--resume`: the checkpoint file {missing!r} does not exist.")
    with open(_sidecar(path), encoding="utf-8") as file:
        record = json.load(file)
    if record["vocab"] != corpus.vocab:
        raise ValueError(
            f"`--text` {args.text!r} has a vocabulary of {len(corpus.vocab)} characters that "
            f"does not match the embedding of the checkpoint {path!r} "
            f"({len(record['vocab'])} characters)."
        )
    for name, saved in record["settings"].items():
        if getattr(args, name) != saved:
            flag = "--" + name.replace("_", "-")
            raise ValueError(
                f"`{flag}` is {getattr(args, name)!r} but the checkpoint {path!r} was trained "
                f"with {saved!r}; resume with the same setting."
            )
    schedule = record.get("schedule")
    if schedule is not None and args.generations != schedule:
        raise ValueError(
            f"`--generations` is {args.generations} but the checkpoint {path!r} was trained "
            f"with `--cosine` over `--generations` {schedule}; a cosine of another length would "
            f"not continue the same run: resume with `--generations {schedule}`."
        )
    es = eo.Eggroll.load(path, backend="numpy", optimizer=_optimizer(args) if args.cosine else None)
    return es, record


def train_eggroll(args: argparse.Namespace, corpus: Corpus, windows: np.ndarray) -> dict[str, Any]:
    """Run EGGROLL until ``--generations`` or ``--minutes``; returns its curve and final bpc.

    With ``--checkpoint`` the strategy is saved every ``--checkpoint-every`` generations and
    at the end (an ``.npz`` from :meth:`eggroll_opt.Eggroll.save`, and a JSON record of the
    settings, the ``--cosine`` schedule's length, the vocabulary and the curve beside it);
    ``--resume`` continues from them.
    """
    curve: dict[str, list[float]]
    if args.resume:
        es, record = _resume(args, corpus)
        curve, seconds = record["curve"], record["seconds"]
        print(f"resumed {args.checkpoint} at generation {es.generation} ({seconds:.1f} s trained)")
    else:
        es = eo.Eggroll(
            init_params(len(corpus.vocab), args.embed, args.hidden, args.seed),
            popsize=args.popsize,
            sigma=args.sigma,
            learning_rate=args.learning_rate,
            optimizer=_optimizer(args),
            rank=args.rank,
            seed=args.seed,
            backend="numpy",
        )
        seconds = 0.0
        curve = {"generation": [0], "seconds": [0.0], "train": [math.nan], "held-out": []}
        curve["held-out"].append(bits_per_char(es.params, windows))

    def save() -> None:
        if args.checkpoint:
            es.save(args.checkpoint)
            record = {
                "settings": _settings(args),
                "schedule": _schedule(args),
                "vocab": corpus.vocab,
                "curve": curve,
                "seconds": seconds,
            }
            with open(_sidecar(args.checkpoint), "w", encoding="utf-8") as file:
                json.dump(record, file)

    budget = args.minutes * 60 if args.minutes > 0 else math.inf
    while es.generation < args.generations and seconds < budget:
        batch = training_batch(corpus.train, args.batch, args.seq_len, args.seed, es.generation)
        start = time.perf_counter()
        pop = es.ask()
        losses = population_losses(pop, batch, args.chunk)
        es.tell(losses)
        seconds += time.perf_counter() - start
        generation = es.generation
        done = generation >= args.generations or seconds >= budget
        if generation % args.evaluate_every == 0 or done:
            curve["generation"].append(generation)
            curve["seconds"].append(seconds)
            curve["train"].append(float(losses.mean()) / math.log(2))
            curve["held-out"].append(bits_per_char(es.params, windows))
            print(
                f"generation {generation:5d}  {seconds:7.1f} s  population "
                f"{curve['train'][-1]:.3f} bpc  held-out {curve['held-out'][-1]:.3f} bpc",
                flush=True,
            )
        if args.sample_every and (generation % args.sample_every == 0 or done):
            text = sample_text(es.params, corpus, args.prompt, args.sample_length, generation)
            print(f"  sample: {text!r}", flush=True)
        if args.checkpoint and (generation % args.checkpoint_every == 0 or done):
            save()
    if curve["generation"][-1] != es.generation:  # nothing ran (a finished run resumed)
        curve["generation"].append(es.generation)
        curve["seconds"].append(seconds)
        curve["train"].append(math.nan)
        curve["held-out"].append(bits_per_char(es.params, windows))
    save()
    return {
        "params": es.params,
        "num_params": es.num_params,
        "generations": es.generation,
        "seconds": seconds,
        "bpc": curve["held-out"][-1],
        "curve": curve,
    }


# -- Adam on exact gradients -----------------------------------------------------------------


def torch_loss(leaves: dict[str, Any], windows: Any) -> Any:
    """The network of :func:`language_model` in PyTorch: mean next-character cross-entropy
    (nats) on ``windows`` (batch, T + 1), differentiable with respect to ``leaves``
    (``{"embed/w": tensor, ...}``)."""
    import torch
    import torch.nn.functional as F

    inputs, targets = windows[:, :-1], windows[:, 1:]
    hidden = leaves["norm/scale"].shape[0]
    projected = F.linear(leaves["embed/w"][inputs], leaves["gru/w"], leaves["gru/b"])
    gate = torch.sigmoid(projected[..., :hidden])
    keep, drive = 1 - gate, gate * projected[..., hidden:]
    state = drive[:, 0]
    states = [state]
    for step in range(1, inputs.shape[1]):  # h_t = (1 - z_t) h_{t-1} + z_t c_t
        state = keep[:, step] * state + drive[:, step]
        states.append(state)
    h = torch.stack(states, dim=1)
    h = h * torch.rsqrt((h * h).mean(dim=-1, keepdim=True) + 1e-6) * leaves["norm/scale"]
    logits = F.linear(h, leaves["out/w"], leaves["out/b"])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def train_adam(
    args: argparse.Namespace,
    corpus: Corpus,
    windows: np.ndarray,
    seconds: float,
    evaluations: int = 10,
) -> dict[str, Any]:
    """Adam on PyTorch's exact gradients, from EGGROLL's initial parameters, for ``seconds`` of
    training, measured on the held-out ``windows`` ``evaluations`` times at even intervals;
    returns its curve and final held-out bpc."""
    import torch

    params = init_params(len(corpus.vocab), args.embed, args.hidden, args.seed)
    leaves = {
        f"{name}/{key}": torch.tensor(value, requires_grad=True)
        for name, layer in params.items()
        for key, value in layer.items()
    }
    optimizer = torch.optim.Adam(leaves.values(), lr=args.adam_learning_rate)

    def current() -> dict[str, Any]:
        return {
            name: {key: leaves[f"{name}/{key}"].detach().numpy().copy() for key in layer}
            for name, layer in params.items()
        }

    curve: dict[str, list[float]] = {
        "step": [0],
        "seconds": [0.0],
        "held-out": [bits_per_char(current(), windows)],
    }
    elapsed, step, next_check = 0.0, 0, seconds / evaluations
    while elapsed < seconds:
        batch = training_batch(corpus.train, args.batch, args.seq_len, args.seed, step)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = torch_loss(leaves, torch.from_numpy(batch))
        loss.backward()
        optimizer.step()
        elapsed += time.perf_counter() - start
        step += 1
        if elapsed >= next_check or elapsed >= seconds:
            next_check += seconds / evaluations
            curve["step"].append(step)
            curve["seconds"].append(elapsed)
            curve["held-out"].append(bits_per_char(current(), windows))
            batch_bpc = float(loss.detach()) / math.log(2)
            print(
                f"Adam step {step:6d}  {elapsed:7.1f} s  batch {batch_bpc:.3f} bpc  held-out "
                f"{curve['held-out'][-1]:.3f} bpc",
                flush=True,
            )
    return {
        "params": current(),
        "steps": step,
        "seconds": elapsed,
        "bpc": curve["held-out"][-1],
        "curve": curve,
    }


# -- the command -----------------------------------------------------------------------------


def plot(
    eggroll: dict[str, Any], adam: dict[str, Any] | None, ngrams: dict[str, float], path: str
) -> bool:
    """Held-out bpc against training seconds (both methods) and against EGGROLL's generations,
    with the n-gram models as lines; returns False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -e '.[examples]')")
        return False
    figure, (by_time, by_generation) = plt.subplots(1, 2, figsize=(11, 4))
    curve = eggroll["curve"]
    by_time.plot(curve["seconds"], curve["held-out"], label="EGGROLL")
    if adam is not None:
        by_time.plot(adam["curve"]["seconds"], adam["curve"]["held-out"], label="Adam (autograd)")
    by_generation.plot(curve["generation"], curve["held-out"], label="EGGROLL held-out")
    by_generation.plot(
        curve["generation"], curve["train"], label="EGGROLL population (batch)", alpha=0.6
    )
    for axis, xlabel in ((by_time, "training seconds"), (by_generation, "generation")):
        for (name, value), style in zip(ngrams.items(), (":", "--"), strict=True):
            axis.axhline(value, color="gray", linestyle=style, label=f"{name} {value:.2f}")
        axis.set_xlabel(xlabel)
        axis.set_ylabel("bits per character")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("character-level language model, held-out bits per character")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    print(f"plot: {path}")
    return True


def check_args(args: argparse.Namespace) -> None:
    """Raise ValueError naming the option and its value for settings that cannot run."""
    positive = ("embed", "hidden", "seq_len", "batch", "popsize", "rank", "chunk")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(
                f"`--{name.replace('_', '-')}` must be at least 1, got {getattr(args, name)}."
            )
    for name in ("generations", "sample_every", "sample_length"):
        if getattr(args, name) < 0:
            raise ValueError(
                f"`--{name.replace('_', '-')}` must be 0 or more, got {getattr(args, name)}."
            )
    for name in ("evaluate_every", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise ValueError(
                f"`--{name.replace('_', '-')}` must be at least 1, got {getattr(args, name)}."
            )
    for name in ("sigma", "learning_rate", "adam_learning_rate"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"`--{name.replace('_', '-')}` must be a positive number, got {value!r}."
            )
    if not (math.isfinite(args.minutes) and args.minutes >= 0):
        raise ValueError(f"`--minutes` must be 0 (no limit) or more, got {args.minutes!r}.")
    if args.resume and not args.checkpoint:
        raise ValueError("`--resume` needs `--checkpoint PATH`, got none.")
    if not args.prompt:
        raise ValueError(
            f"`--prompt` must hold at least one character (every sample starts from it), "
            f"got {args.prompt!r}."
        )
    if args.popsize % 2 or args.chunk % 2:
        name, value = ("popsize", args.popsize) if args.popsize % 2 else ("chunk", args.chunk)
        raise ValueError(f"`--{name}` must be even (mirrored sampling), got {value}.")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the example; returns the n-gram, EGGROLL and Adam results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--text", default=DEFAULT_TEXT, help="a UTF-8 text file (default: %(default)s)"
    )
    parser.add_argument("--held-out", type=float, default=0.1, help="fraction at the end (0.1)")
    parser.add_argument("--embed", type=int, default=32, help="embedding width (32)")
    parser.add_argument("--hidden", type=int, default=64, help="minGRU width (64)")
    parser.add_argument("--seq-len", type=int, default=32, help="characters per window (32)")
    parser.add_argument("--batch", type=int, default=16, help="windows per generation (16)")
    parser.add_argument("--popsize", type=int, default=256, help="population (256)")
    parser.add_argument("--sigma", type=float, default=0.05, help="noise scale (0.05)")
    parser.add_argument("--learning-rate", type=float, default=0.02, help="EGGROLL's Adam (0.02)")
    parser.add_argument(
        "--cosine", action="store_true", help="Adam's step falls to a tenth over --generations"
    )
    parser.add_argument("--rank", type=int, default=1, help="EGGROLL rank (1)")
    parser.add_argument("--generations", type=int, default=100_000, help="at most (100000)")
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="training-time budget, 0 for none (10)"
    )
    parser.add_argument("--chunk", type=int, default=16, help="members per forward part (16)")
    parser.add_argument("--evaluate-every", type=int, default=50, help="generations (50)")
    parser.add_argument("--sample-every", type=int, default=200, help="generations, 0: never")
    parser.add_argument("--sample-length", type=int, default=200, help="characters (200)")
    parser.add_argument("--prompt", default="The ", help="start of each sample ('The ')")
    parser.add_argument("--adam-learning-rate", type=float, default=0.003, help="baseline (0.003)")
    parser.add_argument("--no-baseline", action="store_true", help="skip Adam on gradients")
    parser.add_argument("--checkpoint", default="", help="save the run here (.npz and .npz.json)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="generations (100)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--plot",
        default="char_lm.png",
        help="PNG path for the learning curves, '' for none (default: %(default)s)",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**QUICK)  # options given on the command line still win
    args = parser.parse_args(argv)
    check_args(args)
    text = load_text(args.text)
    corpus = make_corpus(text, args.held_out, args.seq_len, args.text)
    corpus.encode(args.prompt, "--prompt")
    windows = held_out_windows(corpus.held_out, args.seq_len)
    ngrams = ngram_bpc(corpus, windows)
    print(
        f"text {args.text}: {len(text)} characters, vocabulary {len(corpus.vocab)}, "
        f"{len(corpus.train)} for training, {len(corpus.held_out)} held out "
        f"({windows.size - len(windows)} predicted)"
    )
    eggroll = train_eggroll(args, corpus, windows)
    adam = None
    if args.no_baseline:
        baseline_note = "skipped (--no-baseline)"
    elif not torch_available():
        baseline_note = "skipped: PyTorch is not installed (pip install torch)"
    else:
        evaluations = max(1, len(eggroll["curve"]["generation"]) - 1)  # as many as EGGROLL's
        adam = train_adam(args, corpus, windows, eggroll["seconds"], evaluations)
        baseline_note = ""
    rows = [
        {"model": "unigram (add-one)", "training": "counts", "held-out bpc": ngrams["unigram"]},
        {"model": "bigram (add-one)", "training": "counts", "held-out bpc": ngrams["bigram"]},
        {
            "model": f"minGRU, {eggroll['num_params']} parameters",
            "training": f"EGGROLL, popsize {args.popsize}, {eggroll['generations']} generations, "
            f"{eggroll['seconds']:.1f} s",
            "held-out bpc": eggroll["bpc"],
        },
        {
            "model": "same network",
            "training": (
                f"Adam on autograd gradients, {adam['steps']} steps, {adam['seconds']:.1f} s"
                if adam is not None
                else "Adam on gradients: " + baseline_note
            ),
            "held-out bpc": adam["bpc"] if adam is not None else "",
        },
    ]
    print("\n" + markdown_table(rows))
    for name, result in (("EGGROLL", eggroll), ("Adam", adam)):
        if result is not None:
            sample = sample_text(
                result["params"], corpus, args.prompt, args.sample_length, args.seed
            )
            print(f"{name} sample: {sample!r}")
    if args.plot:
        plot(eggroll, adam, ngrams, args.plot)
    return {"ngrams": ngrams, "eggroll": eggroll, "adam": adam, "baseline": baseline_note}


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
