"""Floor 4: networks, model folders, runtime (device, precision, threads), the predictor (tiling, TTA)
and the one entry point from a model to labels (:class:`pipeline.model.segmenter.Segmenter`).

May import: floors 0-3.
"""
