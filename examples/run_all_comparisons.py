"""Every parameter-matching comparison in one run: one table and one plot.

Runs ``parameter_matching.py`` over all its architectures (MLP, CNN, tanh policy) and all its
methods (EGGROLL r=1, 2, 4, OpenES and Adam on the exact gradient), with the same generation
budget and settings for every run, then prints one markdown table and saves one PNG with a row
per architecture (held-out loss relative to the start, against generations and seconds). See
``python examples/parameter_matching.py --help`` for what is measured.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import parameter_matching as pm
from _common import markdown_table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run all comparisons; returns ``{"results": [...], "table": str, "seconds": float}``."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    pm.add_arguments(parser)
    parser.add_argument(
        "--archs", default=",".join(pm.ARCHITECTURES), help="comma-separated architectures"
    )
    parser.add_argument(
        "--plot", default=None, help="PNG path (default comparisons.png; off in --quick)"
    )
    args = parser.parse_args(argv)
    pm.apply_quick(args)
    if args.plot is None and not args.quick:
        args.plot = "comparisons.png"
    archs = [arch.strip() for arch in args.archs.split(",") if arch.strip()]
    unknown = sorted(set(archs) - set(pm.ARCHITECTURES))
    if unknown:
        parser.error(f"unknown architectures {unknown}; choose from {list(pm.ARCHITECTURES)}")
    start = time.perf_counter()
    results = pm.run_methods(archs, args)
    seconds = time.perf_counter() - start
    table = markdown_table(pm.summary_rows(results, args.target))
    print(
        f"\nParameter matching, {args.generations} generations, popsize {args.popsize}, "
        f"batch {args.batch}, sigma {args.sigma}, ES Adam lr {args.learning_rate}, "
        f"backprop Adam lr {args.backprop_lr}; wall time {seconds:.0f} s\n"
    )
    print(table)
    if args.plot:
        pm.plot_grid(results, args.plot, args.target)
    return {"results": results, "table": table, "seconds": seconds}


if __name__ == "__main__":
    main()
