# Sourced by demo.sh and test.sh: make .venv if missing, install tlkit into it, activate it.
# Usage: source scripts/_setup_venv.sh [EXTRAS]     e.g. EXTRAS=test
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-}"

# A full disk makes pip fail halfway with a long traceback: check first, and say what to do.
FREE_SPACE="Free some space (old virtual environments or clones, ~/.cache/pip) and run this again"
require_free_gb() {  # NEEDED_GB WHAT
    local free_gb
    free_gb=$(df -Pk . | awk 'NR == 2 {print int($4 / 1048576)}')
    if [ "$free_gb" -lt "$1" ]; then
        echo "error: installing $2 needs about $1 GB free on the disk of $PWD, which has $free_gb GB." \
            "$FREE_SPACE; nothing was installed." >&2
        exit 1
    fi
}

# pip's own output stays (it names the package that failed), but for a full disk's traceback; a failed
# install stops here.
pip_install() {
    local log status=0 why
    log=$(mktemp)
    python -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ] && grep -q "No space left on device" "$log"; then
        why="the disk of $PWD filled up while pip installed $*. $FREE_SPACE."
    else
        grep -v "^WARNING: Location" "$log" >&2 || true
        why="pip could not install $* (its message is above)."
    fi
    rm -f "$log"
    if [ "$status" -ne 0 ]; then
        echo "error: $why" >&2
        exit 1
    fi
}
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
        require_free_gb 7 "$pair (a CUDA build, about 5.5 GB in .venv)"
        echo "installing $pair (several minutes the first time)" >&2
        # shellcheck disable=SC2086
        pip_install $pair
    fi
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
echo "installing tlkit ($spec) into .venv" >&2
pip_install -e "$spec"
python -c "import tlkit, torch, torchvision" || { echo "tlkit did not install; see the pip output above" >&2; exit 1; }
