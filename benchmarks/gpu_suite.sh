#!/usr/bin/env bash
# lit-gen's GPU checks and GPU benchmarks in one run on one CUDA GPU (about 5 minutes on an H200):
# the GPU tests (every family fitted in fp32 / bf16-mixed / 16-mixed, test and predict from the checkpoint,
# sampling on the device, Inception features equal to the CPU's), FID vs torch-fidelity on the GPU,
# images/s in fp32 and bf16, and the framework overhead on the MNIST configs in fp32 and bf16.
#
#   bash benchmarks/gpu_suite.sh MNIST_DIR [OUTPUT_DIR]
#
# MNIST_DIR holds the four MNIST IDX files (see docs/benchmarks.md). Each step's output goes to
# OUTPUT_DIR/<step>.txt (default gpu-results/); a failing step is reported and the next one runs.
set -u
mnist=${1:?usage: bash benchmarks/gpu_suite.sh MNIST_DIR [OUTPUT_DIR]}
out=${2:-gpu-results}
python=${PYTHON:-python}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    "$@" >"$out/$name.txt" 2>&1
    local code=$?
    grep -v -i -E "warn|tip:|litlogger|available:|^\s*$|LOCAL_RANK|Seed set" "$out/$name.txt" | tail -n 25
    echo "== $name: exit $code after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step gpu_tests "$python" -m pytest -q tests/test_gpu.py
step fid "$python" benchmarks/fid_vs_torch_fidelity.py --device cuda --num 400 --batch-size 100
step sampling "$python" benchmarks/sampling_speed.py --dataset mnist --batch 256 --bf16 --device cuda
for precision in 32-true bf16-mixed; do
    step "overhead_$precision" "$python" benchmarks/framework_overhead.py --dataset mnist --root "$mnist" \
        --device cuda --precision "$precision" --steps 200
done
