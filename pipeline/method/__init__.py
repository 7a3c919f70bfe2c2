"""Floor 2: the recipe as array functions (numpy, scipy, scikit-image, OpenCV): intensities, image
types, nucleus size, targets and weight maps, the heads' channels, the watershed, blocks,
measurements, overlays, metrics and the threshold grid search. No torch at import, no files, no
config loading.

May import: floors 0-1.
"""
