"""The napari plugin (optional extra: ``pip install -e ".[napari]"``), declared in ``napari.yaml``.

- :mod:`.widgets`: the dock widgets "Segment nuclei" and "Fine-tune on these labels" (Qt);
- :mod:`.layers`: napari layer data ↔ the pipeline's arrays, without Qt: segment an image
  layer's data, make the Labels and Points layers, open a ``nuclei segment`` output folder
  (the reader), the sample image.

Importing this package imports neither napari nor Qt (the base install has neither): napari
imports the modules the manifest names when it needs them.

Must not: hold segmentation, measurement or training logic (:class:`pipeline.model.segmenter.Segmenter`,
:mod:`pipeline.method.features`, :func:`pipeline.training.finetune.finetune` do that).
"""
