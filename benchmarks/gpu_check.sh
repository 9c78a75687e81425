#!/usr/bin/env bash
# GPU check: the `gpu`-marked tests, then the CuPy benchmark table.
# Run from the repository root on a machine with an NVIDIA GPU, CuPy, NumPy, SciPy, pytest and
# hypothesis; nothing is installed and no network is needed:
#     bash benchmarks/gpu_check.sh
# If $OUT is set, the table is also written there (core.md, core.json) with the test log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python - <<'PY'
import cupy
props = cupy.cuda.runtime.getDeviceProperties(0)
print("CuPy", cupy.__version__, "on", props["name"].decode(), flush=True)
PY
log="${OUT:-/tmp}/gpu_tests.log"
python -m pytest -m gpu -p no:cacheprovider -q -rs tests 2>&1 | tee "$log"
tests_rc=${PIPESTATUS[0]}
python -m benchmarks.core --backend cupy ${OUT:+--out "$OUT"}
bench_rc=$?
echo "gpu tests exit $tests_rc, benchmark exit $bench_rc"
exit $(( tests_rc != 0 || bench_rc != 0 ))
