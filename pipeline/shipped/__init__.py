"""What ships inside the package: the default model (``model/``), the images of the forgetting
guard of ``nuclei finetune`` (``guard/``) and the napari sample (``sample/``), found with
:mod:`importlib.resources` wherever the package is installed.

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


def model_folder(ref: str | Path) -> Path:
    """A model reference as a folder: :data:`DEFAULT_MODEL` is the shipped model, anything else a path."""
    return shipped("model") if str(ref) == DEFAULT_MODEL else Path(ref)
