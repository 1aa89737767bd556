#!/usr/bin/env bash
# The GPU verification run of the CUDA kernels, prepared to be run once on a lent GPU machine, from the repo root:
#   mkdir -p .cache/gpu-data/FashionMNIST/raw && cp ../shared/data/FashionMNIST/raw/*.gz .cache/gpu-data/FashionMNIST/raw/
#   then, on the GPU machine (carry .cache/gpu-data):  OUT=$OUT bash benchmarks/gpu_check.sh
# Needs torch >= 2.4 with CUDA (and its Triton), hypothesis and matplotlib installed there; uses the
# checkout via PYTHONPATH. Steps: device info; the test suite on the default backend, then its CUDA
# tests with RECURRENT_BACKEND=triton; the Triton kernels' compile check (benchmarks/triton_check.py);
# the CUDA speed benchmark; 10-epoch Fashion-MNIST trainings of GRU and RNN, ours (RECURRENT_BACKEND=auto)
# and torch.nn's. Sized for ~9 minutes on an H200; EPOCHS=N shortens the trainings. Every step has a
# time limit (a hung kernel costs that step only). Every log and JSON lands under $OUT; a step that
# fails is logged and the next one still runs.
set -u
OUT=${OUT:-gpu-results}
DATA=${DATA:-.cache/gpu-data}
EPOCHS=${EPOCHS:-10}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HYPOTHESIS_PROFILE=ci
unset RECURRENT_BACKEND TRITON_INTERPRET  # the default run is what a user gets
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log its output and exit status
    local name=$1 limit=$2; shift 2
    echo "== $name: $*" | tee -a "$OUT/steps.log"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name exit $? ($((SECONDS - start)) s)" | tee -a "$OUT/steps.log"
}
step device 60 bash -c 'nvidia-smi; python -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"'
# The suite's float64 gradchecks are CPU-bound: spread them over 8 processes where pytest-xdist is installed.
PARALLEL=$(python -c "import xdist" 2>/dev/null && echo "-n 8")
step tests 180 python -m pytest -q $PARALLEL tests
# Forced Triton refuses CPU tensors without the interpreter (.ci/run covers those), so only the CUDA tests.
step tests-triton 150 env RECURRENT_BACKEND=triton python -m pytest -q $PARALLEL tests -k "cuda or test_triton"
step triton-check 90 python benchmarks/triton_check.py --jobs "$(nproc)" --json "$OUT/triton-check.json"
step speed 200 python benchmarks/speed.py --device cuda --out "$OUT"
for model in gru rnn; do
    for impl in recurrent torch; do
        run=(env); [ "$impl" = recurrent ] && run=(env RECURRENT_BACKEND=auto)  # Triton where it can run
        step "train-$model-$impl" 120 "${run[@]}" python -m experiments.fashion_mnist --model "$model" \
            --impl "$impl" --epochs "$EPOCHS" --device cuda --data-dir "$DATA" --out "$OUT/runs/$model-$impl"
    done
done
