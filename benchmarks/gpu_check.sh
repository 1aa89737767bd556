#!/usr/bin/env bash
# The GPU verification run of the CUDA kernels, prepared to be run once on a lent GPU machine, from the repo root:
#   mkdir -p .cache/gpu-data/FashionMNIST/raw && cp ../shared/data/FashionMNIST/raw/*.gz .cache/gpu-data/FashionMNIST/raw/
#   then, on the GPU machine (carry .cache/gpu-data):  OUT=$OUT bash benchmarks/gpu_check.sh
# Needs torch >= 2.4 with CUDA (and its Triton), hypothesis and matplotlib installed there; uses the
# checkout via PYTHONPATH. Steps, most telling first (a run cut short still returns what it did):
#   device        nvidia-smi and the versions;
#   tune          the Triton kernels alone, per time step, under the pinned blocks and candidates
#                 (benchmarks/triton_tune.py, float32 then bfloat16), outputs compared with the pinned;
#   tests-triton  the suite's CUDA tests with RECURRENT_BACKEND=triton;
#   speed         benchmarks/speed.py --device cuda (cuDNN, ours by default, TorchScript, Triton);
#   train         10-epoch Fashion-MNIST trainings of GRU and RNN, ours (RECURRENT_BACKEND=auto) and torch.nn's;
#   tests         the whole suite on the default backend;
#   triton-check  the compile check (benchmarks/triton_check.py) with this machine's Triton.
# Sized (not yet timed) for about 9 minutes on an H200. STEPS="tune speed" reruns just those; EPOCHS=N shortens the
# trainings. Every step has a time limit (a hung kernel costs that step only). Every log and JSON
# lands under $OUT; a step that fails is logged and the next one still runs.
set -u
OUT=${OUT:-gpu-results}
DATA=${DATA:-.cache/gpu-data}
EPOCHS=${EPOCHS:-10}
STEPS=${STEPS:-device tune tests-triton speed train tests triton-check}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HYPOTHESIS_PROFILE=ci
unset RECURRENT_BACKEND TRITON_INTERPRET  # the default run is what a user gets
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
step() {  # step NAME SECONDS COMMAND...: run it under a time limit, log its output and exit status
    local name=$1 limit=$2; shift 2
    echo "== $name: $*" | tee -a "$OUT/steps.log"
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name exit $? ($((SECONDS - start)) s)" | tee -a "$OUT/steps.log"
}
# The suite's float64 gradchecks are CPU-bound: spread them over 8 processes where pytest-xdist is installed.
PARALLEL=$(python -c "import xdist" 2>/dev/null && echo "-n 8")
wanted device && step device 60 bash -c 'nvidia-smi; python -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())"'
if wanted tune; then
    for dtype in float32 bfloat16; do
        step "tune-$dtype" 120 python benchmarks/triton_tune.py --dtype "$dtype" --json "$OUT/tune-$dtype.json"
    done
fi
# Forced Triton refuses CPU tensors without the interpreter (.ci/run covers those), so only the CUDA tests.
wanted tests-triton && step tests-triton 150 env RECURRENT_BACKEND=triton python -m pytest -q $PARALLEL tests -k "cuda or test_triton"
wanted speed && step speed 200 python benchmarks/speed.py --device cuda --out "$OUT"
if wanted train; then
    for model in gru rnn; do
        for impl in recurrent torch; do
            run=(env); [ "$impl" = recurrent ] && run=(env RECURRENT_BACKEND=auto)  # Triton where it can run
            step "train-$model-$impl" 120 "${run[@]}" python -m experiments.fashion_mnist --model "$model" \
                --impl "$impl" --epochs "$EPOCHS" --device cuda --data-dir "$DATA" --out "$OUT/runs/$model-$impl"
        done
    done
fi
wanted tests && step tests 180 python -m pytest -q $PARALLEL tests
wanted triton-check && step triton-check 120 python benchmarks/triton_check.py --jobs "$(nproc)" --json "$OUT/triton-check.json"
