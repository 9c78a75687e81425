"""Command line: ``python -m eggroll_opt demo|bench [--help]``."""

from __future__ import annotations

import sys

USAGE = (
    "usage: python -m eggroll_opt {demo,bench} [options]   (add --help for the options)\n"
    "  demo   evolve a CartPole-v1 policy with Eggroll and OpenES\n"
    "  bench  the benchmark tables (time, memory, scaling, convergence) on this machine"
)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a sub-command; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from ._demo import main as demo

        return demo(rest)
    if command == "bench":
        try:
            from .benchmarks import bench
        except ImportError:  # running from a source tree without installing
            from benchmarks import bench

        return bench.main(rest)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
