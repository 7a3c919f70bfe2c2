"""pipeline.batch.measure: ``nuclei measure`` on label images made elsewhere (bad input; the
measurements themselves are checked in test_image_features.py)."""

import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.cli import main as cli_main

from ..conftest import disks
from ..hostile import one_error_line


@pytest.mark.hostile
def test_two_label_images_of_one_name_are_refused_naming_both(tmp_path, capsys):
    """labels/x.tif and labels/x.png: which one to measure is ambiguous (finetune and export refuse
    a name that stands for two files too): one line naming both, exit 2, nothing written."""
    image, labels = disks()
    Image.fromarray(image).save(tmp_path / "x.png")
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "labels" / "x.tif", labels.astype(np.uint16))
    Image.fromarray((labels > 0).astype(np.uint8)).save(tmp_path / "labels" / "X.png")
    out = tmp_path / "out"
    status = cli_main(["measure", str(tmp_path / "x.png"), "--labels", str(tmp_path / "labels"), "-o", str(out)])
    line = one_error_line(capsys.readouterr().err, "x.tif", "X.png")
    assert status == 2, line
    assert not (out / "counts.csv").exists()
