#!/usr/bin/env bash
# The whole tlkit workflow on an embedded, offline dataset: scikit-learn's handwritten
# digits written out as photos. Creates .venv if missing. A few minutes on a 2-core CPU.
set -euo pipefail
source "$(dirname "$0")/_setup_venv.sh"
demo=demo/digits
rm -rf "$demo" demo/runs  # the demo's own folders (git-ignored), remade on every run

python scripts/make_digits.py "$demo/train"
tlkit check "$demo/train"
tlkit split "$demo/train" --val 0.2            # -> demo/digits/training, demo/digits/validation
# No pretrained weights ship offline, so the demo trains a small CNN from scratch.
tlkit finetune --data "$demo" --backbone simple-cnn --weights none --epochs 8 --optimizer adamw \
    --lr 0.002 --scheduler onecycle --runs-dir demo/runs --name digits
tlkit evaluate "$demo/validation" --runs-dir demo/runs
tlkit predict "$demo/validation/7" --runs-dir demo/runs --out demo/predictions.csv --force
tlkit export --format onnx --runs-dir demo/runs --out demo/digits.onnx --force

echo
echo "results:"
echo "  $demo/training/, $demo/validation/, $demo/split.csv    the split and its manifest"
echo "  demo/runs/digits/            best.safetensors + best.json, metrics.jsonl, curves.png, confusion.png"
echo "  demo/runs/digits/evaluate-validation/   report.json, confusion.png, mistakes.png"
echo "  demo/predictions.csv         a prediction for every validation image of the digit 7"
echo "  demo/digits.onnx (+ digits.onnx.json)   the model for deployment, checked against PyTorch"
