#!/usr/bin/env bash
# One prepared pass over a lent NVIDIA GPU: the machine, the main example, the tests whose
# names say cuda (the CUDA runtime on the GPU, and every device-parametrized test's cuda
# case), then matrix products and the reference benchmarks with PyTorch and JAX on the same GPU.
#
#     OUT=/tmp/gpu bash benchmarks/gpu_session.sh [TEST_SECONDS] [BENCH_SECONDS]
#
# Every phase has a time limit so that the later ones run even when one hangs; logs and a
# JUnit report go to $OUT. Needs CuPy, PyTorch, pytest (pytest-xdist, pytest-timeout) and,
# for its rows, JAX with a GPU plugin.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session}
mkdir -p "$OUT"
TEST_SECONDS=${1:-170}
BENCH_SECONDS=${2:-150}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX would take 75% of the GPU's memory at start

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
    nproc
    python3 -c "import sys, numpy, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
    python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1
    python3 -c "from autodiff.backends.registry import backends; print([(b.name, b.problem()) for b in backends()])"
} 2>&1 | tee "$OUT/machine.txt"

echo "== main example on the default device"
timeout 60 python3 examples/mnist.py 2>&1 | tail -2 | tee "$OUT/example.txt"

echo "== test suite (${TEST_SECONDS} s at most)"
workers=$(( $(nproc) > 16 ? 16 : $(nproc) ))
timeout "$TEST_SECONDS" python3 -m pytest -q -n "$workers" --dist loadfile -p no:cacheprovider --timeout 120 \
    --junitxml="$OUT/junit.xml" -o junit_family=xunit1 py_test -k "cuda" > "$OUT/tests_cuda.log" 2>&1
echo "cuda-named tests exit $?"; tail -2 "$OUT/tests_cuda.log"

echo "== benchmarks (${BENCH_SECONDS} s at most each)"
timeout "$BENCH_SECONDS" python3 benchmarks/bench_dot.py --device cuda --sizes 1024 2048 4096 --no-numpy 2>&1 \
    | tee "$OUT/bench_dot.txt" | tail -16
timeout "$BENCH_SECONDS" python3 benchmarks/bench_reference.py --device cuda --large --no-compile --no-tinygrad \
    2>&1 | tee "$OUT/bench_large.txt" | tail -6
echo "-- the same with CUDA graphs off (a launch per kernel)"
AUTODIFF_DISABLE=cuda_graphs timeout "$BENCH_SECONDS" python3 benchmarks/bench_reference.py --device cuda --large \
    --no-compile --no-tinygrad --no-jax 2>&1 | tee "$OUT/bench_large_no_graphs.txt" | tail -3
timeout "$BENCH_SECONDS" python3 benchmarks/bench_reference.py --device cuda --shape 32,256,512,2048,4 --steps 20 \
    --no-compile --no-tinygrad 2>&1 | tee "$OUT/bench_xl.txt" | tail -6
timeout "$BENCH_SECONDS" python3 benchmarks/bench_reference.py --device cuda --layers 1 6 --steps 200 --no-compile \
    --no-tinygrad 2>&1 | tee "$OUT/bench_small.txt" | tail -10

echo "== failures"
python3 - "$OUT/junit.xml" <<'EOF' | tee "$OUT/failures.txt" | head -60
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as err:
    sys.exit(f"no JUnit report: {err}")
for case in root.iter("testcase"):
    for bad in list(case.findall("failure")) + list(case.findall("error")):
        message = (bad.get("message") or "").splitlines()
        print(f"{case.get('classname')}::{case.get('name')}: {message[0][:300] if message else ''}")
EOF
