#!/usr/bin/env bash
# Sourced by quickstart.sh and test.sh: a project virtual environment in .venv with
# iiwa-rl installed (editable) with its test tools and Ray (the ray extra: vector_mode ray,
# `iiwa-rl sweep` and their tests). torch is pinned by constraints.txt to
# the CPU build (an unpinned torch pulls a CUDA build of several GB); pyproject keeps
# its own range open. Idempotent: a second run only checks.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IIWA_RL_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV" >&2
    python3 -m venv "$VENV"
fi
STAMP="$VENV/.iiwa-rl-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/constraints.txt" -nt "$STAMP" ]; then
    echo "setup: installing iiwa-rl and its dependencies (a few minutes the first time)" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[test,ray]"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
# One thread per process: on a 2-core machine thread pools oversubscribe the cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
