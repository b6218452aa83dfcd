#!/usr/bin/env bash
# The test suite, from a fresh clone: set up, then pytest. Viewer tests need Xvfb (a
# display) and xdotool (to press the viewer's keys); where one is missing and we may
# install it (root with apt), it is installed here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
missing=()
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v xdotool >/dev/null 2>&1 || missing+=(xdotool)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test: installing ${missing[*]} for the viewer tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") \
        >/dev/null 2>&1 || echo "test: could not install ${missing[*]}; viewer tests will skip" >&2
fi
python -m pytest -q "$@"
