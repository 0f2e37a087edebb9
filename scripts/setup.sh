#!/usr/bin/env bash
# Set up everything napari-pgsr needs in .venv at the repository root (idempotent).
# - a Python >= 3.10 virtual environment with the package (editable) and its test tools;
# - torch 2.13.0 unless a torch is already in .venv (GPU users: install your CUDA torch into .venv first,
#   or set PGSR_TORCH to the requirement you want); PGSR_TORCH_INDEX picks the index, e.g.
#   https://download.pytorch.org/whl/cpu for the small CPU build where PyPI would serve the CUDA one;
# - on a machine without a display, as root: Xvfb, Mesa and the xcb libraries Qt 6 needs (apt-get).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*"; }

if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && ! command -v Xvfb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "no display: installing Xvfb, Mesa and Qt's xcb libraries with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 \
      libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 \
      libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 >/dev/null
  else
    log "WARNING: no display and no Xvfb; install xvfb and libgl1-mesa-dri (as root) for the viewer and GUI tests"
  fi
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3.12 python3.10 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "[setup] need Python >= 3.10" >&2; exit 1; }

if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing python3-venv with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  else
    echo "[setup] $PYTHON cannot create virtual environments: install python3-venv" >&2; exit 1
  fi
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # missing, or left broken by a failed run
  log "creating .venv with $($PYTHON --version)"
  rm -rf .venv
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  log "installing ${PGSR_TORCH:-torch==2.13.0}${PGSR_TORCH_INDEX:+ from $PGSR_TORCH_INDEX}"
  "${PIP[@]}" install ${PGSR_TORCH_INDEX:+--index-url "$PGSR_TORCH_INDEX"} "${PGSR_TORCH:-torch==2.13.0}"
fi
stamp=.venv/.pgsr-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing napari-pgsr and its test tools into .venv"
  "${PIP[@]}" install -e ".[testing]"
  touch "$stamp"
fi
log "ready: $(.venv/bin/python -c 'import napari, torch; print(f"napari {napari.__version__}, torch {torch.__version__}")')"
