"""``python -m pipeline`` runs the ``nuclei`` command line.

Must not: do anything but call :func:`pipeline.cli.main`.
"""

from pipeline.cli import entry_point

entry_point()
