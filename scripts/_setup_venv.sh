# Sourced by demo.sh and test.sh: make .venv if missing, install tlkit into it, activate it.
# Usage: source scripts/_setup_venv.sh [EXTRAS]     e.g. EXTRAS=test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv" >&2
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
if ! python -c "import torch, torchvision" 2>/dev/null; then
    # torch and torchvision must come as a matching pair. On machines that keep known-good
    # wheels on local disk (a pip constraints file caps the versions), ask for exactly those:
    # an unpinned torch would pull a multi-GB download, and a registry torchvision may not
    # import beside another torch. Elsewhere, pip resolves the floors in pyproject.toml.
    if [ -f /etc/xdg/pip/constraints.txt ]; then
        case "$(uname -m)" in
            aarch64) pair="torch==2.9.1 torchvision==0.24.1" ;;
            *) pair="torch==2.14.1 torchvision==0.29.1" ;;
        esac
        echo "installing $pair (several minutes the first time)" >&2
        # shellcheck disable=SC2086
        python -m pip install -q --disable-pip-version-check $pair 2>&1 | grep -v "^WARNING: Location" || true
    fi
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "installing tlkit ($spec) into .venv" >&2
python -m pip install -q --disable-pip-version-check -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
python -c "import tlkit, torch, torchvision" || { echo "tlkit did not install; see the pip output above" >&2; exit 1; }
