#!/usr/bin/env bash
# The project's test command (README and .ci/run call exactly this): builds .venv if needed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch pinned to the CPU build first: an unpinned torch would pull a multi-GB CUDA wheel.
python -m pip install -q torch==2.13.0
python -m pip install -q -e '.[test]'
python -m pytest -q "$@"
