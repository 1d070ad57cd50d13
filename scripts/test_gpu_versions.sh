#!/usr/bin/env bash
# The test suite on the GPU machine's torch and torchvision (2.11.0 / 0.26.0: its own installation,
# which the device tool cannot replace), here on the CPU, in a second venv made once.
#
#   bash scripts/test_gpu_versions.sh            # makes .venv-gpu-versions the first time (~4 GB), then runs pytest
#   bash scripts/test_gpu_versions.sh -k decode  # extra arguments go to pytest
#
# Not part of CI: that torch is a CUDA build of several GB. Run it after changing anything that
# touches torch or torchvision's API (decode, autocast, the allocator, compile).
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_PAIR="torch==2.11.0 torchvision==0.26.0"
VENV=.venv-gpu-versions
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $TORCH_PAIR (a few minutes the first time)" >&2
    python3 -m venv "$VENV"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $TORCH_PAIR 2>&1 | { grep -v "^WARNING: Location" || true; }
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | { grep -v "^WARNING: Location" || true; }
"$VENV/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
# The pair must still be the one asked for: installing tlkit may not have moved it.
"$VENV/bin/python" - "$TORCH_PAIR" <<'EOF'
import sys, torch, torchvision
wanted = dict(spec.split("==") for spec in sys.argv[1].split())
have = {"torch": torch.__version__.split("+")[0], "torchvision": torchvision.__version__.split("+")[0]}
if have != wanted:
    sys.exit(f"error: the venv holds {have}, not {wanted}")
EOF
exec "$VENV/bin/python" -m pytest -q -ra -p no:cacheprovider "$@"
