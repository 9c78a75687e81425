#!/usr/bin/env bash
# The prepared device check (benchmarks/gpu_check.py): one table of NumPy-vs-CuPy noise, ask/tell
# beside a same-shape GEMM and OpenES, population forward beside plain inference, launch and sync
# counts, and the gpu-marked tests. Run from anywhere, on a machine with an NVIDIA GPU, CuPy,
# NumPy, SciPy, pytest and hypothesis; nothing is installed and no network is needed:
#     bash benchmarks/gpu_check.sh              # under 8 minutes; JSON and table to $OUT if set
#     bash benchmarks/gpu_check.sh --dry-run    # the same code on the strict CuPy stand-in, tiny
# Progress goes to stderr row by row; the table to stdout at the end. A hard limit of 470 s stops
# a run that hangs (the report in $OUT keeps every row measured until then).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout --kill-after=10 470 python -m benchmarks.gpu_check "$@"
