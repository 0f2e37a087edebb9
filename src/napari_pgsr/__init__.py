"""napari-pgsr: restore low-exposure fluorescence movies learned from alternating exposure pairs."""

__version__ = "0.1.0"
