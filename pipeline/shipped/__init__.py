"""What ships inside the package: the default model (``model/``), the H&E variant (``he/``), the
images of the forgetting guard of ``nuclei finetune`` (``guard/``) and the napari sample
(``sample/``), found with :mod:`importlib.resources` wherever the package is installed.

Must not: import any other module of the package.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped(*parts: str) -> Path:
    """The path of a file or folder shipped with the package, e.g. ``shipped("model")``.

    The package is installed as files (a wheel or a checkout), so the resource is a real path.
    """
    return Path(str(files(__name__).joinpath(*parts)))


#: The napari sample and the bioimage.io test input: a 256 × 256 fluorescence image of DSB2018.
SAMPLE_IMAGE = shipped("sample", "fluorescence.png")

#: The name that stands for the shipped model wherever a model folder is asked for (``--model``,
#: ``segment.model``, ``predict.model``, ``train.init``); a folder of that name is ``./default``.
DEFAULT_MODEL = "default"
#: The name of the shipped H&E variant (``he/``: the default's stained network trained further on four H&E
#: sources, one of them CC BY-NC-SA 4.0, so its weights are for non-commercial use; its card says
#: when it beats the default); a folder of that name is ``./he``.
HE_MODEL = "he"
#: Each shipped model's name and its folder in the package.
SHIPPED_MODELS = {DEFAULT_MODEL: "model", HE_MODEL: "he"}


def model_folder(ref: str | Path) -> Path:
    """A model reference as a folder: a name of :data:`SHIPPED_MODELS` is that shipped model,
    anything else a path."""
    name = SHIPPED_MODELS.get(str(ref))
    return shipped(name) if name else Path(ref)
