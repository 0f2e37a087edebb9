#!/usr/bin/env bash
# Command (1): set up .venv and run the main job on the built-in sample data.
# With a display, napari opens with the sample movie, split into pairs, and the plugin's widgets docked.
# Without one, the same steps run in a hidden viewer on a virtual display and a screenshot is saved.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
  exec xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/napari-pgsr-demo --headless "$@"
fi
exec .venv/bin/napari-pgsr-demo "$@"
