"""Helpers of the hostile cases (``@pytest.mark.hostile``: bad input answered in one line with
the exit status of docs/bad-input.md; ``scripts/hostile_segment.py`` runs them after its own):
model folders edited to say absurd things, small annotated folders, and the command line.
"""

from __future__ import annotations

import shutil

import numpy as np
import tifffile
import yaml
from PIL import Image

from pipeline.cli import main as cli_main

from .conftest import disks, grid_centres


def edited_model(model_dir, tmp_path, name="model", **changes):
    """A copy of ``model_dir`` whose config.yaml has ``changes`` (``model__depth=6`` for the
    ``depth`` of the ``model`` section)."""
    folder = tmp_path / name
    shutil.copytree(model_dir, folder)
    values = yaml.safe_load((folder / "config.yaml").read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            values[section][sub] = value
        else:
            values[section] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return folder


def one_error_line(err: str, *words: str) -> str:
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("nuclei: error:")]
    assert len(lines) == 1, err[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def annotated_folder(tmp_path, n=3, shape=(96, 96)):
    """``n`` disk images in ``tmp_path/images`` (PNG) with labels in ``tmp_path/labels`` (TIFF)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    paths = []
    for k in range(n):
        image, labels = disks(shape=shape, centres=grid_centres(shape, 24, offset=12 + k), radius=6)
        Image.fromarray(image).save(tmp_path / "images" / f"i{k}.png")
        tifffile.imwrite(tmp_path / "labels" / f"i{k}.tif", labels.astype(np.uint16))
        paths.append(tmp_path / "images" / f"i{k}.png")
    return paths


def segment_cli(capsys, *argv) -> tuple[int, str]:
    status = cli_main(["segment", *map(str, argv)])
    return status, capsys.readouterr().err


def nuclei_cli(capsys, command: str, *argv) -> tuple[int, str]:
    """``nuclei COMMAND ARGV...`` in this process: its exit status (argparse's usage errors
    included) and what it wrote to stderr."""
    try:
        status = cli_main([command, *map(str, argv)])
    except SystemExit as exc:  # argparse
        status = exc.code
    return status, capsys.readouterr().err


def finetune_cli(capsys, *argv) -> tuple[int, str]:
    return nuclei_cli(capsys, "finetune", *argv)
