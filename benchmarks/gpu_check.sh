#!/usr/bin/env bash
# The GPU verification run of the CUDA kernels, prepared to be run on a lent GPU machine, from the repo root:
#   mkdir -p .cache/gpu-data/FashionMNIST/raw && cp ../shared/data/FashionMNIST/raw/*.gz .cache/gpu-data/FashionMNIST/raw/
#   then, on the GPU machine (carry .cache/gpu-data):  OUT=$OUT BUDGET=420 bash benchmarks/gpu_check.sh
# Needs torch >= 2.4 with CUDA (and its Triton), hypothesis and matplotlib installed there; uses the
# checkout via PYTHONPATH. Steps, most telling first (a run cut short still returns what it did):
#   device        nvidia-smi and the versions;
#   tune          the Triton kernels alone, per time step, under the pinned blocks and candidates
#                 (benchmarks/triton_tune.py, float32);
#   tests-triton  the suite's CUDA tests with RECURRENT_BACKEND=triton, then the resident kernels' tests;
#   speed         benchmarks/speed.py --device cuda (cuDNN, ours by default, TorchScript, Triton, resident);
#   train         Fashion-MNIST trainings of GRU and RNN (EPOCHS each), ours (as a user gets it) and torch.nn's;
#   tune-bf16     the tuning run in bfloat16;
#   tests         the whole suite on the default backend;
#   triton-check  the compile check (tools/triton_check.py) with this machine's Triton.
# STEPS="tune speed" reruns just those. Every step has a time limit, and none runs past BUDGET seconds
# from the start (a hung kernel costs that step only). The logs and JSON files are gathered under
# $RESULTS and packed into $OUT/gpu-results.tgz after every step (the device tool returns at most 8
# files), so a run cut short still returns what it did.
set -u
OUT=${OUT:-gpu-results}
RESULTS=${RESULTS:-/tmp/gpu-results}
DATA=${DATA:-.cache/gpu-data}
EPOCHS=${EPOCHS:-3}
BUDGET=${BUDGET:-600}
STEPS=${STEPS:-device tune tests-triton speed train tune-bf16 tests triton-check}
mkdir -p "$OUT" "$RESULTS"
export PYTHONPATH=$PWD HYPOTHESIS_PROFILE=ci PYTHONUNBUFFERED=1
unset RECURRENT_BACKEND TRITON_INTERPRET  # the default run is what a user gets
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log its output and exit status
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - SECONDS))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        echo "== $name skipped: the budget is spent" | tee -a "$RESULTS/steps.log"
        return
    fi
    echo "== $name (limit $limit s): $*" | tee -a "$RESULTS/steps.log"
    local start=$SECONDS
    timeout -k 5 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    echo "== $name exit $? ($((SECONDS - start)) s)" | tee -a "$RESULTS/steps.log"
    tar czf "$OUT/gpu-results.tgz" --exclude='*.pt' -C "$RESULTS" .  # checkpoints would pass the 16 MiB a file
}
# The suite's float64 gradchecks are CPU-bound: spread them over 8 processes where pytest-xdist is installed.
PARALLEL=$(python -c "import xdist" 2>/dev/null && echo "-n 8")
wanted device && step device 30 bash -c 'nvidia-smi; python -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"'
TUNE_CASES=${TUNE_CASES:-fmnist-gru2,fmnist-birnn,fmnist-lstm2,gru-L100-H256,lstm-L100-H256}  # gru-L256-H512: minutes
wanted tune && step tune-float32 100 python benchmarks/triton_tune.py --dtype float32 --cases "$TUNE_CASES" --json "$RESULTS/tune-float32.json"
# Forced Triton refuses CPU tensors without the interpreter (.ci/run covers those), so only the CUDA tests.
wanted tests-triton && step tests-triton 100 env RECURRENT_BACKEND=triton python -m pytest -q $PARALLEL tests -k "cuda or test_triton or test_generated"
# The resident kernels (opt-in): their parity tests on the GPU, where memory ordering and shared memory are real.
wanted tests-triton && step tests-resident 60 python -m pytest -q $PARALLEL tests/routes/test_triton.py tests/routes/test_resident.py -k resident
wanted speed && step speed 170 python benchmarks/speed.py --device cuda --reps 10 --out "$RESULTS"
if wanted train; then
    for model in ${TRAIN_MODELS:-gru rnn}; do
        for impl in recurrent torch; do
            step "train-$model-$impl" 60 python -m experiments.fashion_mnist --model "$model" \
                --impl "$impl" --epochs "$EPOCHS" --device cuda --data-dir "$DATA" --out "$RESULTS/runs/$model-$impl"
        done
    done
fi
wanted tune-bf16 && step tune-bfloat16 80 python benchmarks/triton_tune.py --dtype bfloat16 --rounds 5 --cases "$TUNE_CASES" --json "$RESULTS/tune-bfloat16.json"
wanted tests && step tests 150 python -m pytest -q $PARALLEL tests
wanted triton-check && step triton-check 90 python tools/triton_check.py --jobs "$(nproc)" --json "$RESULTS/triton-check.json"
cat "$RESULTS/steps.log"
