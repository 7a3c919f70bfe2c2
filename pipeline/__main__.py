"""``python -m pipeline`` runs the ``nuclei`` command line."""

from pipeline.cli import entry_point

entry_point()
