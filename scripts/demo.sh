#!/usr/bin/env bash
# The whole tlkit workflow on an embedded, offline dataset: scikit-learn's handwritten
# digits written out as photos. Creates .venv if missing. A few minutes on a 2-core CPU.
set -euo pipefail
source "$(dirname "$0")/_setup_venv.sh"
demo=demo/digits
rm -rf "$demo"  # the demo's own folder, remade on every run

python scripts/make_digits.py "$demo/train"
tlkit check "$demo/train"
tlkit split "$demo/train" --val 0.2            # -> demo/digits/training, demo/digits/validation

echo
echo "results:"
echo "  $demo/training/<digit>/, $demo/validation/<digit>/   the split"
echo "  $demo/split.csv                                    which file went where"
