"""Floor 2: reading and writing files: images in any format, TIFF planes and series, orientation tags,
pixel-size metadata, huge images piece by piece, atomic writes, which files an input names.

May import: floors 0-1 (``errors``, ``progress``, ``config``).
"""
