"""Floor 3: labelled data and the pipeline's own files: sources and their layouts, annotations, folds,
run-length encoding, the prediction file, packing for a GPU machine.

May import: floors 0-2.
"""
