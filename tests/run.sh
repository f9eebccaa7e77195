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
# tests/test_serve_browser.py drives Debian's chromium through chromium-driver
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python -m pytest -q "$@"
