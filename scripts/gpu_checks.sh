#!/usr/bin/env bash
# The GPU checks of issues 4-6, for a session lent the device machine (30 minutes of it; 10 a command).
#
#   here, once:   bash scripts/gpu_checks.sh prepare      # the shared photos -> .device-data/ (git-ignored)
#   there:        run(command="bash scripts/gpu_checks.sh test precompute", carry=[".device-data"])
#                 run(command="bash scripts/gpu_checks.sh finetune predict", carry=[".device-data"])
#                 run(command="bash scripts/gpu_checks.sh quality", carry=[".device-data"])
#
# Each step writes its output to $OUT/<step>.log (what comes back from the device); the figures go
# into docs/benchmarks.md with the device's name from $OUT/device.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
PHOTOS=.device-data/dogs-vs-cats-2k/train
OUT=${OUT:-/tmp/gpu-checks}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1

step_prepare() {
    mkdir -p .device-data
    cp -r ../shared/data/dogs-vs-cats-2k .device-data/
    du -sh .device-data
}
step_test() { python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decode.py; }
step_precompute() { python3 scripts/bench_precompute.py --src "$PHOTOS" --copies 10; }
step_finetune() { python3 scripts/bench_finetune.py --photos "$PHOTOS" --copies 10 --epochs 2; }
step_predict() { python3 scripts/bench_predict.py --src "$PHOTOS" --copies 10; }
step_quality() {
    # configs/scratch-resnet18.yaml from random init on the 1,602 / 400 split: the 85% goal.
    local data=/tmp/scratch-data
    rm -rf "$data" /tmp/scratch-runs
    python3 -m tlkit split "$PHOTOS" --val 400 --out "$data" --quiet
    python3 -m tlkit finetune --config configs/scratch-resnet18.yaml --data "$data" \
        --runs-dir /tmp/scratch-runs --name scratch 2>&1 | grep -v "^\s*$"
    cp /tmp/scratch-runs/scratch/metrics.jsonl /tmp/scratch-runs/scratch/report.json "$OUT"/ 2>/dev/null
}

[ $# -gt 0 ] || { echo "usage: $0 prepare | STEP... (test precompute finetune predict quality)" >&2; exit 2; }
if [ "$1" = prepare ]; then step_prepare; exit; fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>&1
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)" \
    >> "$OUT/device.txt"
status=0
for step in "$@"; do
    echo "== $step"
    started=$(date +%s)
    "step_$step" 2>&1 | tee "$OUT/$step.log" || status=1
    echo "== $step: $(( $(date +%s) - started )) s" | tee -a "$OUT/$step.log"
done
exit $status
