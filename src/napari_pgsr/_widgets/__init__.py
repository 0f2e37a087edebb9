"""Dock widgets: the only place where Qt / napari GUI code is imported."""
