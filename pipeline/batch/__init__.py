"""Floor 5: the user-facing batch tool: ``nuclei segment`` (files in, an output folder out: labels,
overlays, tables, report, outlines; whole slides; Dask clusters) and ``nuclei export``.

May import: floors 0-4.
"""
