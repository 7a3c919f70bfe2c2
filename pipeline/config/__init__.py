"""Floor 1: the schemas of the project's settings files (``params.yaml``; a model folder's ``config.yaml``), read and validated in one place.

May import: ``pipeline.errors``.
"""
