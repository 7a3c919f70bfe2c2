"""Targets: border mask, the stored target arrays, the ``targets`` stage."""

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from pipeline.cli import main as cli_main
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz, save_npz
from pipeline.method.heads import get_head
from pipeline.method.training_targets import (
    border_mask,
    make_targets,
    nucleus_radii,
)
from pipeline.method.weight_maps import weight_map
from pipeline.stages.targets import process_one


def squares(shape, boxes):
    """Label map with rectangles ``(y0, y1, x0, x1)`` labelled 1..n in order."""
    labels = np.zeros(shape, np.int32)
    for k, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        labels[y0:y1, x0:x1] = k
    return labels


def test_border_between_touching_nuclei_not_around_isolated_one():
    # 1 and 2 touch along column 20; 3 is far away
    labels = squares((60, 80), [(10, 30, 10, 20), (10, 30, 20, 30), (40, 52, 60, 72)])
    border = border_mask(labels)
    assert border.dtype == bool and border.shape == labels.shape
    assert border[20, 19] and border[20, 20]  # both sides of the contact
    assert not border[labels == 3].any()
    assert not border[35:, 50:].any()  # nothing around the isolated nucleus
    assert not border[:, :8].any() and not border[:, 32:].any()


def test_border_width_adapts_to_nucleus_size():
    # small squares (equivalent diameter ~9 px -> radius 1) and large ones (~45 px -> radius 4)
    small = squares((40, 40), [(10, 18, 10, 18), (10, 18, 18, 26)])
    large = squares((80, 120), [(10, 50, 10, 50), (10, 50, 50, 90)])
    radii = nucleus_radii(large)
    assert list(nucleus_radii(small)) == [0, 1, 1] and list(radii) == [0, 4, 4]
    row = border_mask(small)[14]
    assert np.flatnonzero(row).tolist() == [17, 18]  # one pixel deep on each side
    row = border_mask(large)[30]
    assert np.flatnonzero(row).tolist() == list(range(46, 54))  # four pixels deep on each side


def test_border_bridges_narrow_background_gaps_only():
    # large nuclei (radius 4 each, 8 on background): a 5-px gap is entirely border, the middle
    # of a 12-px gap is border, a 17-px gap has none
    labels = squares((60, 200), [(10, 50, 10, 50), (10, 50, 55, 95), (10, 50, 107, 147), (10, 50, 164, 190)])
    border = border_mask(labels)
    assert border[30, 50:55].all()  # the 5-px gap
    assert not border[30, 40:50].any() and not border[30, 55:65].any()  # gap >= radius: none inside
    assert np.flatnonzero(border[30, 95:107]).tolist() == [4, 5, 6, 7]  # within 8 px of both
    assert not border[30, 147:164].any() and not border[labels == 4].any()


def test_border_matches_max_min_filter_definition(two_discs):
    # constant radius r: nucleus pixels look r px around, background pixels 2r px
    for r in (1, 2, 3):
        border = border_mask(two_discs, radius_min=r, radius_max=r)
        for radius, where in ((r, two_discs > 0), (2 * r, two_discs == 0)):
            foot = np.hypot(*np.mgrid[-radius : radius + 1, -radius : radius + 1]) <= radius
            big = np.where(two_discs > 0, two_discs, np.iinfo(np.int32).max)
            lo = ndi.minimum_filter(big, footprint=foot, mode="constant", cval=np.iinfo(np.int32).max)
            hi = ndi.maximum_filter(two_discs, footprint=foot, mode="constant", cval=0)
            two_labels = lo < hi
            np.testing.assert_array_equal(border[where], two_labels[where])
    assert border_mask(two_discs).any()


@st.composite
def label_maps(draw):
    h, w = draw(st.integers(6, 40)), draw(st.integers(6, 40))
    labels = np.zeros((h, w), np.int32)
    for k in draw(st.lists(st.integers(1, 50), max_size=6, unique=True)):
        y, x, r = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1)), draw(st.integers(0, 7))
        labels[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = k
    return labels


@settings(max_examples=50, deadline=None, derandomize=True, database=None)
@given(labels=label_maps(), r=st.integers(0, 4))
def test_border_is_two_labels_within_radius(labels, r):
    """Brute force: a pixel is border iff >= 2 distinct labels lie within r (2r on background)."""
    border = border_mask(labels, radius_min=r, radius_max=r)
    ids = np.unique(labels[labels > 0])
    dist = (
        np.stack([ndi.distance_transform_edt(labels != k) for k in ids])
        if ids.size
        else np.zeros((0, *labels.shape))
    )
    reach = np.where(labels > 0, r, 2 * r)
    np.testing.assert_array_equal(border, (dist <= reach).sum(axis=0) >= 2)


def test_no_nuclei_is_all_background():
    labels = np.zeros((16, 20), np.int32)
    assert (get_head("softmax").encode_labels(labels, border_mask(labels)) == 2).all()
    t = make_targets(labels)
    assert not t["mask"].any() and not t["border"].any() and (t["weights"] == 1).all()


def test_make_targets_agrees_with_the_separate_functions(two_discs):
    t = make_targets(two_discs, w0=7.0, sigma=4.0, border_radius_min=1, border_radius_max=3)
    assert {k: v.dtype for k, v in t.items()} == {
        "classes": np.uint8,
        "mask": np.uint8,
        "border": np.uint8,
        "weights": np.float32,
    }
    classes = get_head("softmax").encode_labels(two_discs, border_mask(two_discs, 1, 3))
    np.testing.assert_array_equal(t["classes"], classes)
    np.testing.assert_array_equal(t["border"], border_mask(two_discs, 1, 3))
    np.testing.assert_array_equal(t["mask"], two_discs > 0)
    np.testing.assert_allclose(t["weights"], weight_map(two_discs, w0=7.0, sigma=4.0), rtol=1e-6)


def write_prepared(tmp_path, n=3, workers=1, extra=None):
    prepared, out = tmp_path / "prepared", tmp_path / "targets"
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(n)]
    for i in ids:
        labels = squares((40, 48), [(5, 20, 5, 20), (5, 20, 20, 30), (25, 35, 30, 45)])
        labels[labels > 0] += rng.integers(0, 2)
        save_npz(prepared / f"{i}.npz", image=np.zeros((40, 48, 3), np.uint8), labels=labels)
    pd.DataFrame({"id": ids, "height": 40, "width": 48}).to_csv(prepared / "index.csv", index=False)
    params = {
        "data": {"prepared": str(prepared)},
        "targets": {
            "out": str(out),
            "w0": 10.0,
            "sigma": 5.0,
            "border_radius_min": 1,
            "border_radius_max": 4,
            "workers": workers,
            "diameter": None,
            **(extra or {}),
        },
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path, prepared, out, ids


@pytest.mark.parametrize("workers", [1, 2])
def test_stage_writes_one_file_per_prepared_image(tmp_path, workers):
    params, prepared, out, ids = write_prepared(tmp_path, workers=workers)
    assert cli_main(["targets", "--params", str(params)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i}.npz" for i in ids]  # no temporary left
    for i in ids:
        got = load_npz(out / f"{i}.npz")
        labels = load_npz(prepared / f"{i}.npz")["labels"]
        want = make_targets(labels)
        assert {k: v.dtype for k, v in got.items()} == {
            "image": np.uint8,
            "labels": np.int32,
            "scale": np.float64,
            "classes": np.uint8,
            "mask": np.uint8,
            "border": np.uint8,
            "weights": np.float16,
        }
        for key in ("classes", "mask", "border"):
            np.testing.assert_array_equal(got[key], want[key])
        np.testing.assert_allclose(got["weights"], want["weights"], rtol=1e-3)
        assert float(got["scale"]) == 1.0 and np.array_equal(got["labels"], labels)


def test_stage_rescales_to_the_canonical_diameter(tmp_path):
    from pipeline.method.scale import median_diameter

    params, prepared, out, ids = write_prepared(tmp_path, n=1, extra={"diameter": 24.0})
    labels = load_npz(prepared / f"{ids[0]}.npz")["labels"]
    assert cli_main(["targets", "--params", str(params)]) == 0
    got = load_npz(out / f"{ids[0]}.npz")
    factor = float(got["scale"])
    assert factor == pytest.approx(24.0 / median_diameter(labels))
    assert got["image"].shape[:2] == got["labels"].shape == got["classes"].shape
    assert got["labels"].shape == tuple(round(s * factor) for s in labels.shape)
    assert median_diameter(got["labels"]) == pytest.approx(24.0, rel=0.1)
    np.testing.assert_array_equal(got["mask"], got["labels"] > 0)
    bad = yaml.safe_load(params.read_text())
    bad["targets"]["diameter"] = "big"
    params.write_text(yaml.safe_dump(bad))
    assert cli_main(["targets", "--params", str(params)]) == 1


def test_stage_reports_missing_and_bad_inputs(tmp_path, capsys):
    params, prepared, out, ids = write_prepared(tmp_path, n=2)
    (prepared / f"{ids[1]}.npz").unlink()
    assert cli_main(["targets", "--params", str(params)]) == 1
    assert f"{ids[1]}.npz: no such file" in capsys.readouterr().err
    save_npz(prepared / f"{ids[1]}.npz", image=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(NucleiError, match="no 2-D integer array 'labels'"):
        process_one(prepared / f"{ids[1]}.npz", out / "x.npz", {})
    (prepared / "index.csv").unlink()
    assert cli_main(["targets", "--params", str(params)]) == 1
    assert "index.csv: no such file" in capsys.readouterr().err
    params, *_ = write_prepared(tmp_path / "b", extra={"sigma": "wide"})
    assert cli_main(["targets", "--params", str(params)]) == 1
    assert "targets.sigma must be a number" in capsys.readouterr().err
