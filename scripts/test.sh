#!/usr/bin/env bash
# The test suite, from a fresh clone: set up, then pytest. Viewer tests need Xvfb;
# where it is missing and we may install it (root with apt), it is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if ! command -v Xvfb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing xvfb for the viewer tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb) >/dev/null 2>&1 \
        || echo "test: could not install xvfb; viewer tests will skip" >&2
fi
python -m pytest -q "$@"
