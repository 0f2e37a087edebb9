#!/usr/bin/env bash
# Regenerate the README screenshots from a real napari viewer (under Xvfb when there is no display).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
run=(); [ -z "${DISPLAY:-}" ] && run=(xvfb-run -a -s "-screen 0 1600x1000x24")
"${run[@]}" .venv/bin/python scripts/screenshots.py docs/images
"${run[@]}" .venv/bin/napari-pgsr-demo --headless --screenshot docs/images/restore.png
# palette PNGs keep the repository small
.venv/bin/python -c "
from PIL import Image; import sys
for path in sys.argv[1:]:
    Image.open(path).convert('RGB').quantize(colors=128).save(path, optimize=True)
" docs/images/*.png
