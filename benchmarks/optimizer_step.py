"""An optimizer step on NumPy, block by block against whole leaves.

``optim.adam`` (and ``sgd``) ``apply`` on one float32 leaf of 2**20, 2**22 and 2**24 parameters:
the step as the library runs it (:func:`eggroll_opt._fused.blocked`, blocks of
``_fused.BLOCK`` elements), and the same step with one block as large as the leaf (the
reference array operations over whole leaves, as before blocking). Both give the same bits; the
table gives their median seconds and the ratio. A leaf the last-level cache holds gains nothing;
beyond it, the passes of Adam read from the cache instead of main memory.

Run ``python -m benchmarks.optimizer_step [--sizes 20,22,24] [--repeats 9]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np

from eggroll_opt import _fused, optim

from ._measure import describe, machine


def step_seconds(name: str, size: int, block: int, repeats: int) -> float:
    """Median seconds of one ``apply`` of optimizer ``name`` on a leaf of ``size`` floats."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal(size, dtype=np.float32)}
    out = {"w": np.empty_like(params["w"])}
    gradient = rng.standard_normal(size, dtype=np.float32)
    transform = optim.adam(1e-3) if name == "adam" else optim.sgd(1e-3)
    state = transform.init(params)
    apply = transform.apply
    assert apply is not None  # adam and sgd end in an element-wise step
    seconds = []
    with mock.patch.object(_fused, "BLOCK", block), mock.patch.object(_fused, "WHOLE", block):
        for _ in range(repeats + 1):
            grads = {"w": gradient.copy()}
            start = time.perf_counter()
            _, state = apply(grads, state, params, out)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:])


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.optimizer_step``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.optimizer_step")
    parser.add_argument("--sizes", default="20,22,24", help="log2 of the leaf sizes")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    lines = [
        "| optimizer | parameters | blocks of 2^18: ms | whole leaf: ms | whole / blocks |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("adam", "sgd"):
        for power in (int(p) for p in args.sizes.split(",")):
            size = 2**power
            blocked = step_seconds(name, size, _fused.BLOCK, args.repeats)
            whole = step_seconds(name, size, size, args.repeats)
            lines.append(
                f"| {name} | 2^{power} | {blocked * 1e3:.2f} | {whole * 1e3:.2f} | "
                f"{whole / blocked:.2f} |"
            )
    lines += ["", f"Machine: {describe(machine())}."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
