#!/usr/bin/env bash
# Set up .venv (if missing) with the test extras and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k split
set -euo pipefail
source "$(dirname "$0")/_setup_venv.sh" test
# The HTML pages (audit, evaluate's mistakes) are checked in a real browser: Debian's chromium, installed once
# with apt-get as root or with sudo; where it cannot be, those tests skip and say why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    as_root=""
    [ "$(id -u)" -eq 0 ] || as_root="sudo -n"
    echo "installing chromium (Debian's package) for the browser tests of the HTML pages" >&2
    apt_quiet() { $as_root env DEBIAN_FRONTEND=noninteractive apt-get "$@" >/dev/null 2>&1; }
    apt_quiet install -y -qq --no-install-recommends chromium \
        || { apt_quiet update -qq && apt_quiet install -y -qq --no-install-recommends chromium; } \
        || echo "warning: chromium could not be installed; the browser tests of the HTML pages will skip" >&2
fi
set +e
python -m pytest -q -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
