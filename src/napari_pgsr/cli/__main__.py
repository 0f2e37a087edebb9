"""`python -m napari_pgsr.cli train|predict|measure|export ...` (what torchrun launches)."""

from . import main

raise SystemExit(main())
