"""Nucleus instance segmentation for light-microscopy images (Data Science Bowl 2018 recipe).

Must not: import submodules (``import pipeline`` stays cheap).
"""

__version__ = "0.1.0"
