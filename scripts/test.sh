#!/usr/bin/env bash
# Command (2): set up .venv and run the whole test suite (GUI tests in a real napari viewer on Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
