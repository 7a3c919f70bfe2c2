"""Nucleus instance segmentation for light-microscopy images (Data Science Bowl 2018 recipe)."""

__version__ = "0.1.0"
