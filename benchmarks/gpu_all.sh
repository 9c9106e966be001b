#!/usr/bin/env bash
# Run every lrmath_gpu parity test and the GPU benchmark on a GPU machine with no network.
#
#   benchmarks/gpu_all.sh OUTDIR
#
# Wheels come from a local folder (default ./.whl, or $LRMATH_WHEELS): it must hold a NumPy 2.4.x
# wheel for the image's Python (the image's NumPy 2.5 breaks numba-cuda kernel compilation) and any
# of lrmath's pure-Python dependencies the image lacks (array-api-compat; ml_dtypes for the bfloat16
# cases). Prepare it on a machine with network, for the image's Python version X.Y, e.g.
#   pip download --only-binary=:all: --python-version X.Y --platform manylinux_2_28_x86_64 \
#       --dest .whl "numpy>=2.4,<2.5" array-api-compat ml_dtypes
# The repository itself is used in place (PYTHONPATH), nothing is built.
#
# Writes into OUTDIR: env.txt (nvidia-smi, versions, backend status), pip.txt, tests.txt and
# tests.xml (pytest), benchmark tables gpu_gpu.md/.json (CuPy kernels) and gpu_numba_gpu.md/.json
# (Numba kernels), bench_*.txt logs, and status.txt with the exit code of each step.
# Exit status: non-zero if the tests or a benchmark failed.
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_all.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WHL=${LRMATH_WHEELS:-$ROOT/.whl}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset NUMBA_ENABLE_CUDASIM  # real GPU: conftest only turns the simulator on when no GPU is present
: > "$OUT/status.txt"
status() { echo "$1 $2" | tee -a "$OUT/status.txt"; }

# 1. offline installs from the local wheel folder
if [ -d "$WHL" ] && ls "$WHL"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install --no-index --no-deps --find-links "$WHL" "$WHL"/*.whl > "$OUT/pip.txt" 2>&1
  status pip $?
else
  echo "no wheels in $WHL; using the image's packages as they are" | tee "$OUT/pip.txt"
  status pip skipped
fi

# 2. environment record
{
  nvidia-smi || true
  "$PY" - <<'PYEOF'
import importlib, json
v = {}
for m in ("numpy", "scipy", "cupy", "numba", "numba_cuda", "torch", "array_api_compat", "ml_dtypes", "hypothesis", "pytest"):
    try:
        v[m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as exc:
        v[m] = f"missing ({type(exc).__name__}: {exc})"
print(json.dumps(v, indent=1))
import numpy
if tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 5):
    print("WARNING: NumPy >= 2.5; numba-cuda 0.30 needs 2.4.x (lrmath_gpu shims np.row_stack, which is known to help)")
import lrmath_gpu
print(json.dumps(lrmath_gpu.available(), indent=1))
PYEOF
} > "$OUT/env.txt" 2>&1
status env $?

# 3. parity tests: every GPU test file, both backends (CuPy and Numba on the GPU)
"$PY" -m pytest tests/test_gpu_registry.py tests/test_gpu_kernels.py tests/test_gpu_mirrors.py \
  -q -rs -p no:cacheprovider --junitxml "$OUT/tests.xml" > "$OUT/tests.txt" 2>&1
TESTS=$?
status tests $TESTS
tail -n 30 "$OUT/tests.txt"

# 4. benchmarks: CuPy kernels (the committed table), then the Numba kernels on the same device
"$PY" -m benchmarks gpu --device cuda --out "$OUT" > "$OUT/bench_cupy.txt" 2>&1
B1=$?
status bench_cupy $B1
"$PY" -m benchmarks gpu --device cuda --out "$OUT" --backend numba --no-cpu --llama-layers 1 > "$OUT/bench_numba.txt" 2>&1
B2=$?
status bench_numba $B2

cat "$OUT/status.txt"
[ "$TESTS" -eq 0 ] && [ "$B1" -eq 0 ] && [ "$B2" -eq 0 ]
