"""Labelled sources: the folder layout, several sources in one prepared folder, the source split and
the balance of sources in training draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config.params import Config, DataConfig
from pipeline.data.folds import read_index, split_folds, table_groups
from pipeline.data.sources import read_label_image, read_sample
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz, write_labels, write_png
from pipeline.training.dataset import source_balance_weights

from ..conftest import disc, load_script


def synthetic_nuclei(seed: int, shape=(64, 80)) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs on a dark background: uint8 (H, W, 3) image, int32 (H, W) labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    for k in range(1, 7):
        labels[disc(shape, (rng.uniform(8, shape[0] - 8), rng.uniform(8, shape[1] - 8)), 5) & (labels == 0)] = k
    grey = (20 + 180 * (labels > 0) + rng.integers(0, 10, shape)).astype(np.uint8)
    return np.dstack([grey] * 3), labels


def _folder_source(root, n=6, seed=0):
    for i in range(n):
        image, labels = synthetic_nuclei(seed=seed + i)
        write_png(root / "images" / f"img{i}.png", image)
        write_labels(root / "labels" / f"img{i}.tif", labels)
    return root


def test_folder_layout_reads_image_and_labels(tmp_path):
    root = _folder_source(tmp_path / "src", n=1)
    image, labels = read_sample(root, "folder", "img0")
    assert image.dtype == np.uint8 and image.shape[2] == 3 and labels.dtype == np.int32
    assert labels.shape == image.shape[:2] and labels.max() == len(np.unique(labels)) - 1 > 0


def test_bad_label_images_are_one_line_errors(tmp_path):
    root = _folder_source(tmp_path / "src", n=1)
    write_labels(root / "labels" / "img0.tif", np.zeros((7, 9), np.int32))
    with pytest.raises(NucleiError, match=r"img0\.tif: label size 9x7 differs from image size"):
        read_sample(root, "folder", "img0")
    import tifffile

    tifffile.imwrite(tmp_path / "f.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(NucleiError, match="f.tif: label image of type float32"):
        read_label_image(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "n.tif", np.full((4, 4), -1, np.int16))
    with pytest.raises(NucleiError, match="n.tif: negative labels"):
        read_label_image(tmp_path / "n.tif")


def test_sources_prepare_into_one_index(tmp_path, sample_root, capsys):
    extra = _folder_source(tmp_path / "extra")
    write_png(extra / "images" / "unlabelled.png", np.zeros((8, 8, 3), np.uint8))
    params = tmp_path / "params.yaml"
    params.write_text(f"""seed: 0
data:
  sources:
    dsb2018: {{root: {sample_root}, layout: kaggle}}
    extra: {{root: {extra}, layout: folder}}
  prepared: {tmp_path / 'prep'}
  workers: 1
""")
    assert main(["prepare", "--params", str(params)]) == 0
    assert "skipped 1 images of" in capsys.readouterr().err  # the image without labels is named
    index = read_index(tmp_path / "prep")
    assert index.groupby("source").size().to_dict() == {"dsb2018": 20, "extra": 6}
    assert (index["id"].str.split("/").str[0] == index["source"]).all()
    assert (index["group"].str.split(":").str[0] == index["source"]).all()
    for row in index.groupby("source").head(1).itertuples():  # the id is the file's path below the folder
        assert load_npz(tmp_path / "prep" / f"{row.id}.npz")["labels"].max() == row.n_nuclei
    # folds are drawn within each source: the embedded sample's are those of it prepared alone
    alone = tmp_path / "alone"
    assert main(["prepare", "--params", str(params), "--root", str(sample_root), "--out", str(alone)]) == 0
    dsb = index[index.source == "dsb2018"]
    assert dsb["fold"].tolist() == read_index(alone)["fold"].tolist()
    assert dsb["group_fold"].tolist() == read_index(alone)["group_fold"].tolist()
    # leave one source out
    train_ids, val_ids = split_folds(index, "extra", "source")
    assert all(i.startswith("extra/") for i in val_ids) and len(val_ids) == 6
    assert not any(i.startswith("extra/") for i in train_ids)
    # a source prepared into the folder for another run is read only when named (data.sources)
    assert set(read_index(tmp_path / "prep", sources=["extra"])["source"]) == {"extra"}
    with pytest.raises(NucleiError, match=r"prep/other/index.csv: no such file \(run `nuclei prepare` for source 'other'\)"):
        read_index(tmp_path / "prep", sources=["dsb2018", "other"])


def test_groups_from_the_sources_own_table(tmp_path):
    """A source that describes its images (Kromp et al.'s image_description.csv) is grouped by its
    columns: the images of one diagnosis and preparation never straddle training and validation."""
    extra = _folder_source(tmp_path / "extra", n=10)
    kinds = ["cellline;cytospin"] * 4 + ["tumour;tissue section"] * 3 + ["tumour;cytospin"] * 2 + ["wilms;tissue section"]
    (extra / "table.csv").write_text("Image_Name;Diagnosis;Preparation\n"
                                     + "".join(f"img{i}.png;{k}\n" for i, k in enumerate(kinds)))
    params = tmp_path / "params.yaml"
    params.write_text(f"""data:
  sources:
    extra: {{root: {extra}, layout: folder, groups: table.csv, group_by: [Diagnosis, Preparation]}}
  prepared: {tmp_path / 'prep'}
  workers: 1
  folds: 3
""")
    assert main(["prepare", "--params", str(params)]) == 0
    index = read_index(tmp_path / "prep")
    assert index.set_index("id")["group"].to_dict() == {f"extra/img{i}": f"extra:{k.replace(';', '/')}"
                                                        for i, k in enumerate(kinds)}
    assert (index.groupby("group")["group_fold"].nunique() == 1).all()  # a group lies in one fold
    assert index["group_fold"].nunique() == 3
    (extra / "table.csv").write_text("Image_Name;Diagnosis;Preparation\nimg0.png;a;b\n")
    assert main(["prepare", "--params", str(params)]) == 1
    with pytest.raises(NucleiError, match=r"table.csv: image img1 is not listed \(9 images missing\)"):
        table_groups([f"img{i}" for i in range(10)], extra / "table.csv", ["Diagnosis"])
    with pytest.raises(NucleiError, match="groups needs a table file and group_by"):
        DataConfig.from_dict({"sources": {"x": {"root": "r", "layout": "folder", "groups": "t.csv"}}}, "p.yaml")


def test_source_split_needs_a_source_name():
    data = {"sources": {"a": {"root": "x"}, "b": {"root": "y", "layout": "folder"}}, "split": "source"}
    assert DataConfig.from_dict({**data, "val_fold": "b"}).val_fold == "b"
    assert DataConfig.from_dict(data | {"val_fold": "a"}).sources["a"]["layout"] == "kaggle"
    with pytest.raises(NucleiError, match="data.val_fold 'c' is not one of data.sources"):
        DataConfig.from_dict({**data, "val_fold": "c"})
    with pytest.raises(NucleiError, match="must be a source name with data.split 'source'"):
        DataConfig.from_dict({**data, "val_fold": 0})
    with pytest.raises(NucleiError, match="and a fold number otherwise"):
        DataConfig.from_dict({**data, "split": "grouped", "val_fold": "a"})
    with pytest.raises(NucleiError, match=r"data.sources must be .*'a/b' is not a folder name"):
        DataConfig.from_dict({"sources": {"a/b": {"root": "x"}}})
    with pytest.raises(NucleiError, match="source 'a' has layout 'zarr'"):
        DataConfig.from_dict({"sources": {"a": {"root": "x", "layout": "zarr"}}})
    with pytest.raises(NucleiError, match=r"data.root is now one of data.sources"):
        Config.from_dict({"data": {"root": "data/sample/stage1_train"}})


def test_source_balance():
    sources = ["dsb"] * 90 + ["e2f"] * 10
    groups = ["g0"] * 60 + ["g1"] * 30 + ["e"] * 10
    even = source_balance_weights(sources, groups, 1.0, 1.0)
    assert np.allclose(even, 0.01)  # every image equally
    equal = source_balance_weights(sources, groups, 0.0, 1.0)
    assert np.isclose(equal[:90].sum(), 0.5) and np.isclose(equal[90:].sum(), 0.5)
    sqrt = source_balance_weights(sources, groups, 0.5, 1.0)
    assert np.isclose(sqrt[90:].sum(), np.sqrt(10) / (np.sqrt(10) + np.sqrt(90)))
    nested = source_balance_weights(sources, groups, 0.0, 0.0)  # sources equal, then experiments equal
    assert np.isclose(nested[:60].sum(), 0.25) and np.isclose(nested[60:90].sum(), 0.25)
    weighted = source_balance_weights(sources, groups, 0.0, 1.0, {"e2f": 3.0})  # e2f three times dsb's share
    assert np.isclose(weighted[90:].sum(), 0.75) and np.allclose(weighted[:90], 0.25 / 90)
    assert np.allclose(source_balance_weights(sources, groups, 0.5, 1.0, {}), sqrt)
    with pytest.raises(ValueError, match="factors must be > 0"):
        source_balance_weights(sources, groups, 0.5, 1.0, {"e2f": 0.0})


def test_evaluate_reports_sources(tmp_path):
    from pipeline.method.metrics import PRECISION_KEYS
    from pipeline.stages.evaluate import summarise

    per_image = pd.DataFrame({"id": ["a/1", "a/2", "b/1"], "source": ["a", "a", "b"],
                              "image_type": ["fluo-small"] * 3, "dsb_score": [0.2, 0.4, 0.9]})
    metrics, _, by_type = summarise(per_image.assign(**dict.fromkeys(PRECISION_KEYS, 0.5)))
    assert metrics["by_source"]["a"]["n_images"] == 2
    assert np.isclose(metrics["by_source"]["b"]["dsb_score"], 0.9)


def test_a_type_subset_of_a_prepared_source_outside_its_held_out_fold_is_a_folder_source(tmp_path, sample_root, capsys):
    """``scripts/type_subset.py`` (how the H&E variant trains on DSB2018's stained images): the images of
    one type, never one of grouped fold 0, written as a folder source that prepares to the same pixels."""
    script = load_script("type_subset.py")
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 0\ndata:\n  sources:\n    dsb2018: {{root: {sample_root}, layout: kaggle}}\n"
                      f"  prepared: {tmp_path / 'prep'}\n  workers: 1\n")
    assert main(["prepare", "--params", str(params)]) == 0
    index = pd.read_csv(tmp_path / "prep" / "dsb2018" / "index.csv")
    image_type = index["image_type"].mode()[0]
    expected = index[(index.image_type == image_type) & (index.group_fold != 0)]
    assert 0 < len(expected) < len(index[index.image_type == image_type])  # fold 0 holds some of them
    out = tmp_path / "subset"
    assert script.main([str(tmp_path / "prep" / "dsb2018"), "-o", str(out), "--image-type", image_type]) == 0
    assert f"{len(expected)} {image_type} images of {tmp_path / 'prep' / 'dsb2018'} outside grouped fold 0" in capsys.readouterr().out
    assert sorted(p.stem for p in (out / "images").glob("*.png")) == sorted(expected["id"])
    for sample_id in expected["id"][:3]:
        stored = load_npz(tmp_path / "prep" / "dsb2018" / f"{sample_id}.npz")
        image, labels = read_sample(out, "folder", sample_id)
        assert np.array_equal(image, stored["image"]) and np.array_equal(labels, stored["labels"])
    assert script.main([str(tmp_path / "prep" / "other"), "-o", str(out)]) == 2
    assert "other/index.csv: no such file" in capsys.readouterr().err
