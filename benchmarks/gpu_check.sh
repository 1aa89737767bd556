#!/usr/bin/env bash
# The GPU verification run, prepared to be run once on a lent GPU machine, from the repo root:
#   mkdir -p .cache/gpu-data/FashionMNIST/raw && cp ../shared/data/FashionMNIST/raw/*.gz .cache/gpu-data/FashionMNIST/raw/
#   then, on the GPU machine (carry .cache/gpu-data):  OUT=$OUT bash benchmarks/gpu_check.sh
# Needs torch >= 2.4 with CUDA and hypothesis installed there; uses the checkout via PYTHONPATH.
# Every log and JSON lands under $OUT; a step that fails is logged and the next one still runs.
set -u
OUT=${OUT:-gpu-results}
DATA=${DATA:-.cache/gpu-data}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
step() {  # step NAME COMMAND...: run it, log its output and exit status
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/steps.log"
    "$@" > "$OUT/$name.log" 2>&1
    echo "== $name exit $?" | tee -a "$OUT/steps.log"
}
step device bash -c 'nvidia-smi; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"'
step tests python -m pytest -q tests
step speed python benchmarks/speed.py --device cuda --out "$OUT"
for model in gru rnn; do
    step "train-$model" python -m experiments.fashion_mnist --model "$model" --impl recurrent --epochs 2 \
        --device cuda --data-dir "$DATA" --out "$OUT/runs/$model-recurrent-seed0-cuda"
done
