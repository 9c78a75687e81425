"""The MNIST CNN task of :mod:`benchmarks.peers`: a generation of ``examples/mnist.py``'s CNN.

The task, the same for every library: the CNN of ``examples/mnist.py`` (conv 1->8, 3x3, stride 2,
padding 1 -> relu -> conv 8->16, 3x3, stride 2, padding 1 -> relu -> flatten (784) -> dense
784->64 -> relu -> dense 64->10; 52,138 float32 parameters), He-initialised by that example's
``init_cnn(seed=0, width=64)``. popsize 256; each generation one mini-batch of 128 training
images shared by all members (the same seeded sequence of batches for every library); fitness =
mean cross-entropy on that batch; sigma 0.02 and Adam with step 0.01 (the defaults of
``examples/mnist.py``) where the library has Adam; mirrored (antithetic) sampling where it has
it. A generation is ask + the fitness of every member + tell.

Rows, each in its own subprocess at each thread count:

* ``eggroll_opt/Eggroll`` (rank 1) and ``eggroll_opt/OpenES`` (full-rank noise): the population
  forward is ``examples/mnist.py``'s ``population_losses`` (its ``cnn`` through
  ``nn.PopulationLayers``, in parts of 8 members, its default), on n threads at n threads
  (``eggroll_opt.evaluate(vectorized=True, executor=<thread pool>)``), each with one BLAS thread,
  as the example trains;
* ``eggroll-trainer/EGGROLLTrainer`` and ``eggroll-trainer/VanillaESTrainer``: ``step()``, which
  calls the fitness function once per member with a ``torch.nn.Module`` holding that member's
  weights; they have no Adam, so plain SGD whose first step has the root-mean-square per
  coordinate of Adam's first step (``lr``);
* ``evotorch/PGPE``: a vectorised problem, all members through ``torch.func.vmap`` of
  ``torch.func.functional_call`` (PyTorch turns the batched convolution weights into a grouped
  convolution), Adam, centred ranks, symmetric sampling, the standard deviation held fixed;
* ``evosax/Open_ES``: ``jax.vmap`` of the CNN written with ``jax.lax.conv_general_dilated``,
  ask + fitness + tell under one ``jax.jit`` (its compilation timed on its own);
* ``floor/...``: no ES, the mean CNN's plain batch inference on popsize x 128 images (the same
  number of image-evaluations as a generation), in the fastest of a few chunk sizes: ours
  (``nn.ParamsLayers`` and the example's ``cnn``), PyTorch and JAX (``jax.jit``).

At n threads every row's process gets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` = n, ``torch.set_num_threads(n)`` where it uses PyTorch, ``XLA_FLAGS`` for n
threads, and, when n is fewer than the machine's CPUs, n CPUs only (``sched_setaffinity``: jax
0.10 ignores the thread flags). Each row reports its CPU seconds per wall second.

The loss and accuracy of each row's mean parameters are computed after the run by the same NumPy
forward (:func:`reference_logits`, written here, independent of every library) on a fixed
held-out batch of test images.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .peers import MB, _run_generations, _seconds, rss_now, settings_lines

TASK = "mnist-cnn"
WIDTH = 64  # hidden units of the dense layer, examples/mnist.py's default
BATCH = 128  # training images per generation
SIGMA = 0.02  # examples/mnist.py's default --sigma
LEARNING_RATE = 0.01  # examples/mnist.py's default --learning-rate (Adam)
CHUNK = 8  # examples/mnist.py's default --chunk (members per forward part)
BATCH_SEED = 1  # the sequence of training batches
#: (layer, leaf, shape) of every parameter, in the order of a flat vector and a torch module.
LAYOUT: list[tuple[str, str, tuple[int, ...]]] = [
    ("c1", "w", (8, 1, 3, 3)),
    ("c1", "b", (8,)),
    ("c2", "w", (16, 8, 3, 3)),
    ("c2", "b", (16,)),
    ("fc", "w", (WIDTH, 784)),
    ("fc", "b", (WIDTH,)),
    ("out", "w", (10, WIDTH)),
    ("out", "b", (10,)),
]
PARAMS = sum(math.prod(shape) for _, _, shape in LAYOUT)  # 52,138
FLOOR_CHUNKS = {
    "ours": [32, 64, 128, 256, 1024, 4096],
    "torch": [128, 256, 1024],
    "jax": [128, 256, 1024],
}
REPOSITORY = Path(__file__).resolve().parent.parent
EXAMPLE = REPOSITORY / "examples" / "mnist.py"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_OURS = ["eggroll_opt", "numpy", "scipy"]
_TORCH = ["torch", "numpy"]
_JAX = ["jax", "jaxlib", "numpy"]
#: Each row: its library, the modules it imports (eggroll_opt loads the data for all of them),
#: the distributions whose versions it records (the first is the row's version).
ROWS: dict[str, dict[str, Any]] = {
    "eggroll_opt/Eggroll": {"library": "eggroll_opt", "needs": ["eggroll_opt"], "versions": _OURS},
    "eggroll_opt/OpenES": {"library": "eggroll_opt", "needs": ["eggroll_opt"], "versions": _OURS},
    "eggroll-trainer/EGGROLLTrainer": {
        "library": "eggroll-trainer",
        "needs": ["eggroll_opt", "eggroll_trainer", "torch"],
        "versions": ["eggroll-trainer", *_TORCH],
    },
    "eggroll-trainer/VanillaESTrainer": {
        "library": "eggroll-trainer",
        "needs": ["eggroll_opt", "eggroll_trainer", "torch"],
        "versions": ["eggroll-trainer", *_TORCH],
    },
    "evotorch/PGPE": {
        "library": "evotorch",
        "needs": ["eggroll_opt", "evotorch", "torch"],
        "versions": ["evotorch", "torch", "ray", "numpy"],
    },
    "evosax/Open_ES": {
        "library": "evosax",
        "needs": ["eggroll_opt", "evosax", "jax", "optax"],
        "versions": ["evosax", "jax", "jaxlib", "optax", "flax", "numpy"],
    },
    "floor/eggroll_opt": {"library": "eggroll_opt", "needs": ["eggroll_opt"], "versions": _OURS},
    "floor/torch": {"library": "torch", "needs": ["eggroll_opt", "torch"], "versions": _TORCH},
    "floor/jax": {"library": "jax", "needs": ["eggroll_opt", "jax"], "versions": _JAX},
}


def plan(quick: bool, mnist_dir: str | None = None) -> dict[str, Any]:
    """The configuration every worker gets (``threads`` is added per run)."""
    sizes = (
        {"popsize": 32, "warmup": 1, "timed": 3, "held_out": 500, "timeout": 300}
        if quick
        else {"popsize": 256, "warmup": 2, "timed": 18, "held_out": 2000, "timeout": 1800}
    )
    return {
        "task": TASK,
        **sizes,
        "batch": BATCH,
        "sigma": SIGMA,
        "learning_rate": LEARNING_RATE,
        "chunk": CHUNK,
        "width": WIDTH,
        "params": PARAMS,
        "floor_images": sizes["popsize"] * BATCH,
        "mnist_dir": mnist_dir if mnist_dir is not None else default_mnist_dir(),
    }


def default_mnist_dir() -> str:
    """``$EGGROLL_OPT_MNIST``, else ``shared/data/mnist`` beside the repository."""
    return os.environ.get("EGGROLL_OPT_MNIST") or str(REPOSITORY.parent / "shared/data/mnist")


def unavailable(config: dict[str, Any]) -> str | None:
    """Why no MNIST row can run here (the example or the data is missing), None if they can."""
    if not EXAMPLE.is_file():
        return f"{EXAMPLE} not found (the MNIST task runs from a checkout of the repository)"
    folder = Path(config["mnist_dir"])
    missing = [name for name in MNIST_FILES if not (folder / name).is_file()]
    if missing:
        return (
            f"MNIST not found in {str(folder)!r} (lacks {', '.join(missing)}); "
            "pass --mnist-dir or set EGGROLL_OPT_MNIST"
        )
    return None


# -- what every worker shares -----------------------------------------------------------------
_EXAMPLE_MODULE: list[ModuleType] = []


def load_example() -> ModuleType:
    """``examples/mnist.py`` as a module, loaded once.

    Its folder is on ``sys.path`` only while it loads (for its ``_backprop`` and ``_common``):
    ``examples/distributed.py`` would otherwise shadow Dask's ``distributed`` afterwards.
    """
    if not _EXAMPLE_MODULE:
        spec = importlib.util.spec_from_file_location("_peers_mnist_example", EXAMPLE)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {EXAMPLE}")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(EXAMPLE.parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(EXAMPLE.parent))
        _EXAMPLE_MODULE.append(module)
    return _EXAMPLE_MODULE[0]


def load_data(config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The example's ``prepare`` of MNIST: training images and labels, the held-out batch."""
    from eggroll_opt.datasets import load_mnist

    train_x, train_y, test_x, test_y = load_example().prepare(load_mnist(config["mnist_dir"]))
    count = config["held_out"]
    return {
        "train_x": train_x,
        "train_y": train_y,
        "held_x": np.ascontiguousarray(test_x[:count]),
        "held_y": test_y[:count],
    }


def batch_indices(generations: int, train_size: int, batch: int, seed: int = BATCH_SEED) -> Any:
    """The training images of each generation, (generations, batch), the same for every row."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(train_size, batch, replace=False) for _ in range(generations)])


def initial_params(width: int = WIDTH) -> dict[str, dict[str, np.ndarray]]:
    """``examples/mnist.py``'s ``init_cnn(seed=0, width)``."""
    params: dict[str, dict[str, np.ndarray]] = load_example().init_cnn(0, width)
    return params


def flat_from_tree(tree: dict[str, dict[str, Any]]) -> np.ndarray:
    """The parameters as one float32 vector in :data:`LAYOUT` order."""
    return np.concatenate(
        [np.asarray(tree[layer][leaf], np.float32).ravel() for layer, leaf, _ in LAYOUT]
    )


def tree_from_flat(vector: Any) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of :func:`flat_from_tree`."""
    vector = np.asarray(vector, np.float32)
    tree: dict[str, dict[str, np.ndarray]] = {}
    start = 0
    for layer, leaf, shape in LAYOUT:
        size = math.prod(shape)
        tree.setdefault(layer, {})[leaf] = vector[start : start + size].reshape(shape)
        start += size
    return tree


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 cross-correlation, stride 2, padding 1, NCHW / OIHW, in plain NumPy."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))[
        :, :, ::2, ::2
    ]  # (N, C, H_out, W_out, 3, 3)
    return np.einsum("nchwij,ocij->nohw", windows, w, optimize=True) + b[:, None, None]


def reference_logits(params: dict[str, dict[str, Any]], images: np.ndarray) -> np.ndarray:
    """The CNN's logits for one parameter tree, in float64 NumPy (the yardstick of every row)."""
    p = {
        layer: {leaf: np.asarray(value, np.float64) for leaf, value in leaves.items()}
        for layer, leaves in params.items()
    }
    x = np.asarray(images, np.float64)
    x = np.maximum(_conv(x, p["c1"]["w"], p["c1"]["b"]), 0)
    x = np.maximum(_conv(x, p["c2"]["w"], p["c2"]["b"]), 0)
    x = x.reshape(x.shape[0], -1)
    x = np.maximum(x @ p["fc"]["w"].T + p["fc"]["b"], 0)
    return np.asarray(x @ p["out"]["w"].T + p["out"]["b"])


def reference_loss(
    params: dict[str, dict[str, Any]], images: np.ndarray, labels: np.ndarray
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of one parameter tree on a batch (NumPy)."""
    logits = reference_logits(params, images)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -float(np.mean(log_probs[np.arange(len(labels)), labels]))
    return loss, float(np.mean(logits.argmax(axis=1) == labels))


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(generation: Callable[[], None], config: dict[str, Any]) -> dict[str, Any]:
    """A row's timing fields: :func:`benchmarks.peers._run_generations` (``seconds_per_generation``
    and every ``generation_seconds``) and ``cpu_per_wall``, the process's CPU seconds per wall
    second over all those generations (about the number of busy threads; less when others share
    the CPUs)."""
    cpu, wall = _cpu_seconds(), time.perf_counter()
    stats, seconds = _run_generations(generation, config["warmup"], config["timed"])
    return {
        "seconds_per_generation": stats,
        "generation_seconds": seconds,
        "cpu_per_wall": (_cpu_seconds() - cpu) / max(time.perf_counter() - wall, 1e-9),
    }


def _row(
    data: dict[str, np.ndarray],
    start: dict[str, dict[str, Any]],
    end: dict[str, dict[str, Any]] | None,
    **fields: Any,
) -> dict[str, Any]:
    """A worker's row: its fields (``compile_seconds`` None unless given) plus the held-out loss
    and accuracy at the start and end."""
    loss0, accuracy0 = reference_loss(start, data["held_x"], data["held_y"])
    row = {"initial_loss": loss0, "initial_accuracy": accuracy0, "compile_seconds": None, **fields}
    if end is None:  # an inference floor: the parameters do not change
        row.update(loss=None, accuracy=None)
    else:
        row["loss"], row["accuracy"] = reference_loss(end, data["held_x"], data["held_y"])
    return row


def _generation_counter(
    config: dict[str, Any], data: dict[str, np.ndarray]
) -> Callable[[], tuple[np.ndarray, np.ndarray]]:
    """Each call gives the next generation's batch (images, labels), the same for every row."""
    indices = batch_indices(config["warmup"] + config["timed"], len(data["train_x"]), BATCH)
    state = {"generation": 0}

    def next_batch() -> tuple[np.ndarray, np.ndarray]:
        index = indices[state["generation"] % len(indices)]
        state["generation"] += 1
        return data["train_x"][index], data["train_y"][index]

    return next_batch


def _torch_setup(config: dict[str, Any]) -> Any:
    import torch

    threads = config.get("threads")
    if threads:
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError:  # only possible before any parallel work; leave it then
            pass
    return torch


def _torch_cnn(torch: Any, tree: dict[str, dict[str, Any]]) -> Any:
    """The CNN as a ``torch.nn.Sequential`` holding ``tree``'s weights (float32)."""
    from collections import OrderedDict

    layers = torch.nn
    model = layers.Sequential(
        OrderedDict(
            c1=layers.Conv2d(1, 8, 3, stride=2, padding=1),
            relu1=layers.ReLU(),
            c2=layers.Conv2d(8, 16, 3, stride=2, padding=1),
            relu2=layers.ReLU(),
            flatten=layers.Flatten(),
            fc=layers.Linear(784, WIDTH),
            relu3=layers.ReLU(),
            out=layers.Linear(WIDTH, 10),
        )
    )
    with torch.no_grad():
        for layer, leaf, _ in LAYOUT:
            target = getattr(model, layer).weight if leaf == "w" else getattr(model, layer).bias
            target.copy_(torch.from_numpy(np.asarray(tree[layer][leaf], np.float32)))
    return model


def _torch_tree(model: Any) -> dict[str, dict[str, np.ndarray]]:
    return {
        layer: {
            "w": getattr(model, layer).weight.detach().numpy().copy(),
            "b": getattr(model, layer).bias.detach().numpy().copy(),
        }
        for layer in ("c1", "c2", "fc", "out")
    }


def _jax_forward(jax: Any) -> Callable[[Any, Any], Any]:
    """The CNN for one parameter tree, in JAX: ``forward(params, images) -> logits``."""
    lax, numbers = jax.lax, ("NCHW", "OIHW", "NCHW")

    def conv(x: Any, layer: Any) -> Any:
        out = lax.conv_general_dilated(
            x, layer["w"], (2, 2), ((1, 1), (1, 1)), dimension_numbers=numbers
        )
        return jax.nn.relu(out + layer["b"][:, None, None])

    def forward(params: Any, images: Any) -> Any:
        x = conv(conv(images, params["c1"]), params["c2"])
        x = x.reshape(x.shape[0], -1)
        x = jax.nn.relu(x @ params["fc"]["w"].T + params["fc"]["b"])
        return x @ params["out"]["w"].T + params["out"]["b"]

    return forward


# -- the workers (each runs in its own subprocess) --------------------------------------------
def _worker_eggroll_opt(config: dict[str, Any], strategy: str) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    import eggroll_opt as eo

    example = load_example()
    data = load_data(config)
    start = example.init_cnn(0, WIDTH)
    cls = {"Eggroll": eo.Eggroll, "OpenES": eo.OpenES}[strategy]
    es = cls(
        example.init_cnn(0, WIDTH),
        popsize=config["popsize"],
        sigma=config["sigma"],
        learning_rate=config["learning_rate"],
        optimizer="adam",
        rank=1,
        mirrored=True,
        seed=0,
        backend="numpy",
    )
    next_batch = _generation_counter(config, data)
    baseline = rss_now()
    threads = config.get("threads") or 1
    pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 1 else None

    def generation() -> None:
        images, labels = next_batch()
        pop = es.ask()
        es.tell(example.population_losses(pop, images, labels, config["chunk"], pool))

    with threadpool_limits(1, user_api="blas"):  # as examples/mnist.py trains
        timing = _timed(generation, config)
    noise = "rank 1" if strategy == "Eggroll" else "full-rank noise"
    return _row(
        data,
        start,
        eo.to_numpy(es.params),
        method=f"{strategy} ({noise}, Adam)",
        settings=(
            f"{strategy}(sigma={config['sigma']:g}, learning_rate={config['learning_rate']:g}, "
            "optimizer='adam', rank=1, mirrored=True, fitness_shaping='centered_rank' (default), "
            f"backend='numpy'); fitness via examples/mnist.py population_losses "
            f"(nn.PopulationLayers, {config['chunk']} members per part, on {threads} "
            "thread(s) with one BLAS thread each)"
        ),
        **timing,
        rss_after_setup_bytes=baseline,
    )


def _cross_entropy_torch(torch: Any, logits: Any, labels: Any) -> Any:
    """Mean cross-entropy over the batch axis of (..., batch, 10) logits: shape (...)."""
    log_probs = torch.log_softmax(logits, dim=-1)
    picked = torch.gather(log_probs, -1, labels.expand(*logits.shape[:-1]).unsqueeze(-1))
    return -picked.squeeze(-1).mean(dim=-1)


def _worker_eggroll_trainer(config: dict[str, Any], trainer_name: str) -> dict[str, Any]:
    torch = _torch_setup(config)
    import eggroll_trainer

    data = load_data(config)
    start = initial_params()
    model = _torch_cnn(torch, start)
    popsize, sigma, lr = config["popsize"], config["sigma"], config["learning_rate"]
    current: dict[str, Any] = {}

    def fitness(member: Any) -> float:  # called once per member; the trainers maximise
        with torch.no_grad():
            logits = member(current["images"])
            return -float(torch.nn.functional.cross_entropy(logits, current["labels"]))

    common = {
        "model": model,
        "fitness_fn": fitness,
        "population_size": popsize,
        "sigma": sigma,
        "seed": 0,
    }
    if trainer_name == "EGGROLLTrainer":
        # Its step is lr' sqrt(N) mean_i(z_i sigma E_i): RMS per coordinate lr' sigma.
        step = lr / sigma
        trainer = eggroll_trainer.EGGROLLTrainer(
            model.parameters(),
            learning_rate=step,
            rank=1,
            noise_reuse=2,
            group_size=0,
            **common,
        )
        settings = (
            f"rank 1 on the 2-D weights (fc, out; the conv kernels and biases get full-rank "
            f"noise), noise_reuse=2 (antithetic pairs), group_size=0 (global z-score), plain "
            f"SGD learning_rate={step:g} = lr/sigma"
        )
    else:
        # Its step is lr' mean_i(z_i eps_i): RMS per coordinate lr' / sqrt(N).
        step = lr * math.sqrt(popsize)
        trainer = eggroll_trainer.VanillaESTrainer(model.parameters(), learning_rate=step, **common)
        settings = (
            f"full-rank noise, no antithetic sampling (it has none), z-score, plain SGD "
            f"learning_rate={step:g} = lr*sqrt(N)"
        )
    next_batch = _generation_counter(config, data)
    baseline = rss_now()

    def generation() -> None:
        images, labels = next_batch()
        current["images"] = torch.from_numpy(images)
        current["labels"] = torch.from_numpy(labels)
        with torch.no_grad():
            trainer.step()

    timing = _timed(generation, config)
    return _row(
        data,
        start,
        _torch_tree(model),
        method=f"{trainer_name} ({'rank 1' if trainer_name == 'EGGROLLTrainer' else 'full-rank'}"
        ", SGD)",
        settings=(
            f"{settings} (first step's RMS per coordinate = Adam's, {lr:g}); step() under "
            "torch.no_grad(); fitness called once per member on an nn.Module of the CNN"
        ),
        **timing,
        rss_after_setup_bytes=baseline,
    )


def _worker_evotorch(config: dict[str, Any]) -> dict[str, Any]:
    torch = _torch_setup(config)
    from evotorch import Problem
    from evotorch.algorithms import PGPE

    data = load_data(config)
    start = initial_params()
    model = _torch_cnn(torch, start)
    names = [f"{layer}.{'weight' if leaf == 'w' else 'bias'}" for layer, leaf, _ in LAYOUT]
    sizes = [math.prod(shape) for _, _, shape in LAYOUT]
    current: dict[str, Any] = {}

    def one_member(params: dict[str, Any], images: Any) -> Any:
        return torch.func.functional_call(model, params, (images,))

    members = torch.func.vmap(one_member, in_dims=(0, None))

    def losses(solutions: Any) -> Any:  # (popsize, PARAMS) -> (popsize,), one batched forward
        with torch.no_grad():
            parts = torch.split(solutions, sizes, dim=1)
            params = {
                name: part.reshape(len(solutions), *shape)
                for name, part, (_, _, shape) in zip(names, parts, LAYOUT, strict=True)
            }
            logits = members(params, current["images"])
            return _cross_entropy_torch(torch, logits, current["labels"])

    problem = Problem(
        "min",
        losses,
        solution_length=PARAMS,
        initial_bounds=(-1.0, 1.0),  # unused: center_init gives the start
        dtype=torch.float32,
        vectorized=True,
        seed=0,
    )
    searcher = PGPE(
        problem,
        popsize=config["popsize"],
        center_learning_rate=config["learning_rate"],
        stdev_learning_rate=0.0,
        stdev_init=config["sigma"],
        optimizer="adam",
        ranking_method="centered",
        center_init=torch.from_numpy(flat_from_tree(start)),
        symmetric=True,
        stdev_max_change=None,
    )
    next_batch = _generation_counter(config, data)
    baseline = rss_now()

    def generation() -> None:
        images, labels = next_batch()
        current["images"] = torch.from_numpy(images)
        current["labels"] = torch.from_numpy(labels)
        searcher.step()

    timing = _timed(generation, config)
    center = searcher.status["center"]
    return _row(
        data,
        start,
        tree_from_flat(center.detach().cpu().numpy()),
        method="PGPE (full-rank, Adam, fixed sigma)",
        settings=(
            f"PGPE(popsize={config['popsize']}, center_learning_rate={config['learning_rate']:g}, "
            f"optimizer='adam', stdev_init={config['sigma']:g}, stdev_learning_rate=0 (fixed), "
            "ranking_method='centered', symmetric=True); vectorised Problem: every member in one "
            "torch.func.vmap(functional_call) (batched conv weights become a grouped conv), "
            "under torch.no_grad()"
        ),
        **timing,
        rss_after_setup_bytes=baseline,
    )


def _worker_evosax(config: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import optax
    from evosax.algorithms import Open_ES
    from evosax.core.fitness_shaping import centered_rank_fitness_shaping_fn

    data = load_data(config)
    start = initial_params()
    solution = jax.tree.map(jnp.asarray, start)
    es = Open_ES(
        config["popsize"],
        solution,
        use_antithetic_sampling=True,
        optimizer=optax.adam(learning_rate=config["learning_rate"]),
        std_schedule=optax.constant_schedule(config["sigma"]),
        fitness_shaping_fn=centered_rank_fitness_shaping_fn,
    )
    params = es.default_params
    key = jax.random.key(0)
    key, init_key = jax.random.split(key)
    state = es.init(init_key, solution, params)
    members = jax.vmap(_jax_forward(jax), in_axes=(0, None))

    def losses(population: Any, images: Any, labels: Any) -> Any:
        log_probs = jax.nn.log_softmax(members(population, images), axis=-1)
        picked = jnp.take_along_axis(log_probs, labels[None, :, None], axis=-1)
        return -picked[..., 0].mean(axis=-1)

    def one_generation(state: Any, key: Any, images: Any, labels: Any) -> tuple[Any, Any]:
        key, ask_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        state, _ = es.tell(tell_key, population, losses(population, images, labels), state, params)
        return state, key

    next_batch = _generation_counter(config, data)
    images0, labels0 = (jnp.asarray(a) for a in next_batch())
    jax.block_until_ready(state)
    baseline = rss_now()
    began = time.perf_counter()
    compiled = jax.jit(one_generation).lower(state, key, images0, labels0).compile()
    compile_seconds = time.perf_counter() - began
    next_batch = _generation_counter(config, data)  # start the batches again
    carry = [state, key]

    def generation() -> None:
        images, labels = next_batch()
        carry[0], carry[1] = compiled(carry[0], carry[1], jnp.asarray(images), jnp.asarray(labels))
        jax.block_until_ready(carry[0])

    timing = _timed(generation, config)
    end = jax.tree.map(np.asarray, es.get_mean(carry[0]))
    return _row(
        data,
        start,
        end,
        method="Open_ES (full-rank, Adam)",
        settings=(
            f"Open_ES(use_antithetic_sampling=True, std_schedule=constant {config['sigma']:g}, "
            f"optimizer=optax.adam({config['learning_rate']:g}), fitness_shaping_fn="
            "centered_rank); fitness: jax.vmap of the CNN (lax.conv_general_dilated) over the "
            "population; ask + fitness + tell in one jax.jit"
        ),
        **timing,
        compile_seconds=compile_seconds,
        rss_after_setup_bytes=baseline,
    )


def _best_chunk(
    make_pass: Callable[[int], Callable[[], None]], chunks: list[int], images: int
) -> tuple[int, dict[str, float]]:
    """The chunk size whose pass over ``images`` is fastest (best of two, after one warm-up)."""
    seconds = {}
    for chunk in [c for c in chunks if c <= images] or [images]:
        one_pass = make_pass(chunk)
        one_pass()
        times = []
        for _ in range(2):
            began = time.perf_counter()
            one_pass()
            times.append(time.perf_counter() - began)
        seconds[str(chunk)] = min(times)
    best = min(seconds, key=lambda chunk: seconds[chunk])
    return int(best), seconds


def _floor_row(
    config: dict[str, Any],
    data: dict[str, np.ndarray],
    make_pass: Callable[[int], Callable[[], None]],
    chunks: list[int],
    describe: str,
    compile_seconds: Callable[[int], float] | None = None,
) -> dict[str, Any]:
    count = config["floor_images"]
    chunk, by_chunk = _best_chunk(make_pass, chunks, count)
    compiled = compile_seconds(chunk) if compile_seconds is not None else None
    baseline = rss_now()
    timing = _timed(make_pass(chunk), config)
    tried = ", ".join(f"{c}: {s:.3f} s" for c, s in by_chunk.items())
    return _row(
        data,
        initial_params(),
        None,
        method=f"inference floor, chunk {chunk}",
        settings=(
            f"{describe}; the mean CNN on {count:,} training images (popsize x {BATCH}), "
            f"in chunks of {chunk} images, the fastest of: {tried} (best of two)"
        ),
        **timing,
        compile_seconds=compiled,
        rss_after_setup_bytes=baseline,
        chunk=chunk,
        chunk_seconds=by_chunk,
    )


def _worker_floor_ours(config: dict[str, Any]) -> dict[str, Any]:
    from eggroll_opt import nn

    example = load_example()
    data = load_data(config)
    images = np.ascontiguousarray(data["train_x"][: config["floor_images"]])
    layers = nn.ParamsLayers(example.init_cnn(0, WIDTH))

    def make_pass(chunk: int) -> Callable[[], None]:
        def one_pass() -> None:
            for start in range(0, len(images), chunk):
                example.cnn(layers, images[start : start + chunk])

        return one_pass

    return _floor_row(
        config,
        data,
        make_pass,
        FLOOR_CHUNKS["ours"],
        "eggroll_opt: examples/mnist.py cnn through nn.ParamsLayers (NumPy)",
    )


def _worker_floor_torch(config: dict[str, Any]) -> dict[str, Any]:
    torch = _torch_setup(config)
    data = load_data(config)
    model = _torch_cnn(torch, initial_params())
    images = torch.from_numpy(np.ascontiguousarray(data["train_x"][: config["floor_images"]]))

    def make_pass(chunk: int) -> Callable[[], None]:
        def one_pass() -> None:
            with torch.no_grad():
                for start in range(0, len(images), chunk):
                    model(images[start : start + chunk])

        return one_pass

    return _floor_row(
        config,
        data,
        make_pass,
        FLOOR_CHUNKS["torch"],
        "PyTorch: the CNN as an nn.Module, under torch.no_grad()",
    )


def _worker_floor_jax(config: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    data = load_data(config)
    params = jax.tree.map(jnp.asarray, initial_params())
    images = jnp.asarray(data["train_x"][: config["floor_images"]])
    forward = jax.jit(_jax_forward(jax))
    compiled: dict[int, float] = {}

    def compile_for(chunk: int) -> float:
        if chunk not in compiled:
            began = time.perf_counter()
            jax.jit(_jax_forward(jax)).lower(params, images[:chunk]).compile()
            compiled[chunk] = time.perf_counter() - began
        return compiled[chunk]

    def make_pass(chunk: int) -> Callable[[], None]:
        parts = [images[start : start + chunk] for start in range(0, len(images), chunk)]

        def one_pass() -> None:
            outs = [forward(params, part) for part in parts]
            jax.block_until_ready(outs)

        return one_pass

    return _floor_row(
        config,
        data,
        make_pass,
        FLOOR_CHUNKS["jax"],
        "JAX: the CNN (lax.conv_general_dilated) under jax.jit, one call per chunk",
        compile_for,
    )


WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "eggroll_opt/Eggroll": lambda config: _worker_eggroll_opt(config, "Eggroll"),
    "eggroll_opt/OpenES": lambda config: _worker_eggroll_opt(config, "OpenES"),
    "eggroll-trainer/EGGROLLTrainer": lambda c: _worker_eggroll_trainer(c, "EGGROLLTrainer"),
    "eggroll-trainer/VanillaESTrainer": lambda c: _worker_eggroll_trainer(c, "VanillaESTrainer"),
    "evotorch/PGPE": _worker_evotorch,
    "evosax/Open_ES": _worker_evosax,
    "floor/eggroll_opt": _worker_floor_ours,
    "floor/torch": _worker_floor_torch,
    "floor/jax": _worker_floor_jax,
}


# -- report ------------------------------------------------------------------------------------
def _loss(row: dict[str, Any]) -> str:
    if row.get("loss") is None:
        return f"{row['initial_loss']:.4f} (no training)"
    return f"{row['initial_loss']:.4f} -> {row['loss']:.4f}"


def _accuracy(row: dict[str, Any]) -> str:
    if row.get("accuracy") is None:
        return f"{row['initial_accuracy']:.3f}"
    return f"{row['initial_accuracy']:.3f} -> {row['accuracy']:.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The MNIST CNN rows: a table, ratios to Eggroll and to the floors, settings and threads."""
    if not rows:
        return "No MNIST CNN rows."
    first = rows[0]
    images = first["popsize"] * BATCH
    lines = [
        f"## MNIST CNN: EGGROLL against peer libraries ({first['params']:,} parameters, popsize "
        f"{first['popsize']}, {BATCH} images per generation, sigma {SIGMA:g})",
        "",
        f"Seconds per generation (ask + {images:,} image-evaluations + tell) over "
        f"{first['timed_generations']} generations after {first['warmup_generations']} warm-up "
        f"generations; floor rows: seconds for the same {images:,} image-evaluations of the mean "
        "CNN, no ES. Each row in its own process. Loss and accuracy of the mean on "
        f"{first.get('held_out', '?')} held-out test images (same NumPy code), at the start and "
        f"after {first['loss_generations']} generations. At n threads a row's process has "
        "OMP/OPENBLAS/MKL_NUM_THREADS=n, torch.set_num_threads(n) and XLA_FLAGS for n threads, "
        "and runs on n CPUs only when n is fewer than the machine's (XLA ignores its flags); "
        "CPU s / wall s is its CPU time per second of the timed run.",
        "",
        "| row | threads | method | version | s / generation, median (min-max) | CPU s / wall s | "
        "compile s | RSS after setup MB | peak RSS MB | RSS increase MB | held-out loss | "
        "held-out accuracy |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        threads = row.get("thread_count") or "default"
        if "skipped" in row:
            lines.append(
                f"| {row['row']} | {threads} | | {row['version']} | skipped: {row['skipped']} "
                "| | | | | | | |"
            )
            continue
        compile_s = row["compile_seconds"]
        lines.append(
            f"| {row['row']} | {threads} | {row['method']} | {row['version']} | "
            f"{_seconds(row['seconds_per_generation'])} | {row['cpu_per_wall']:.2f} | "
            f"{'-' if compile_s is None else f'{compile_s:.2f}'} | "
            f"{row['rss_after_setup_bytes'] / MB:.0f} | {row['peak_rss_bytes'] / MB:.0f} | "
            f"{row['rss_increase_bytes'] / MB:.0f} | {_loss(row)} | {_accuracy(row)} |"
        )
    done = [row for row in rows if "skipped" not in row]
    ratios = []
    for row in done:
        same = [r for r in done if r.get("thread_count") == row.get("thread_count")]
        ours = next((r for r in same if r["row"] == "eggroll_opt/Eggroll"), None)
        floors = [r for r in same if r["row"].startswith("floor/")]
        median = row["seconds_per_generation"]["median"]
        to_ours = (
            f"{median / ours['seconds_per_generation']['median']:.2f}x" if ours is not None else "-"
        )
        floor = min(floors, key=lambda r: r["seconds_per_generation"]["median"], default=None)
        to_floor = (
            f"{median / floor['seconds_per_generation']['median']:.1f}x ({floor['row']})"
            if floor is not None
            else "-"
        )
        peak = f"{row['peak_rss_bytes'] / max(ours['peak_rss_bytes'], 1):.1f}x" if ours else "-"
        ratios.append(
            f"| {row['row']} | {row.get('thread_count') or 'default'} | {to_ours} | {to_floor} "
            f"| {peak} |"
        )
    if ratios:
        lines += [
            "",
            "| row | threads | time / eggroll_opt Eggroll | time / fastest floor | "
            "peak RSS / eggroll_opt Eggroll |",
            "|---|---:|---:|---:|---:|",
            *ratios,
        ]
    lines += [
        "",
        *settings_lines(rows, name="row", with_threads=True),
    ]
    return "\n".join(lines)
