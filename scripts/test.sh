#!/usr/bin/env bash
# Set up .venv (if missing) with the test extras and run the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k split
set -euo pipefail
source "$(dirname "$0")/_setup_venv.sh" test
set +e
python -m pytest -q -ra "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
