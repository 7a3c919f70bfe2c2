"""Kaggle run-length encoding: round trips, hand-written strings, submission validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.data.rle import (
    RLEError,
    decode,
    decode_image,
    encode_labels,
    encode_mask,
    parse_rle,
    submission_frame,
    validate_submission,
    write_submission,
)
from pipeline.errors import NucleiError


def reference_encode(mask: np.ndarray) -> str:
    """The classic Kaggle kernel encoder (independent of pipeline.data.rle)."""
    pixels = np.concatenate([[0], mask.T.ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


label_maps = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: arrays(np.int32, shape, elements=st.integers(0, 4))
)


@settings(max_examples=150, deadline=None)
@given(labels=label_maps, scale=st.sampled_from([1, 7, 1000]))
def test_round_trip_random_label_maps(labels, scale):
    labels = labels * scale  # non-contiguous label values
    rles = encode_labels(labels)
    values = np.unique(labels[labels > 0])
    assert len(rles) == values.size
    for value, rle in zip(values, rles, strict=True):
        assert rle == reference_encode(labels == value)
        np.testing.assert_array_equal(decode(rle, labels.shape), labels == value)
    decoded = decode_image(rles, labels.shape)
    assert decoded.dtype == np.int32
    expected = np.searchsorted(values, labels) + 1  # k-th smallest value -> k
    np.testing.assert_array_equal(decoded, np.where(labels > 0, expected, 0))
    frame = submission_frame({"img": rles})
    assert validate_submission(frame, {"img": labels.shape}) == []


def test_empty_map_has_no_nuclei_and_one_empty_row():
    labels = np.zeros((5, 6), np.int32)
    assert encode_labels(labels) == []
    assert encode_mask(labels) == ""
    np.testing.assert_array_equal(decode_image([], (5, 6)), labels)
    np.testing.assert_array_equal(decode_image([""], (5, 6)), labels)
    frame = submission_frame({"a": [], "b": ["1 2"]})
    assert frame.to_dict("list") == {"ImageId": ["a", "b"], "EncodedPixels": ["", "1 2"]}
    assert validate_submission(frame, {"a": (5, 6), "b": (5, 6)}) == []


def test_nuclei_touching_the_border():
    labels = np.zeros((4, 5), np.int32)
    labels[:, 0] = 3  # whole first column: pixels 1..4
    labels[3, 4] = 9  # last pixel, bottom right: pixel 20
    labels[0, 1:] = 5  # top row from column 1: pixels 5, 9, 13, 17
    assert encode_labels(labels) == ["1 4", "5 1 9 1 13 1 17 1", "20 1"]
    assert encode_labels(np.ones((4, 5), np.int32)) == ["1 20"]


def test_decode_hand_written_strings():
    # 3 rows x 4 columns; pixel k is at row (k-1) % 3, column (k-1) // 3
    mask = decode("1 2 5 1 10 3", (3, 4))
    expected = np.zeros((3, 4), bool)
    expected[0:2, 0] = True  # pixels 1, 2
    expected[1, 1] = True  # pixel 5
    expected[:, 3] = True  # pixels 10, 11, 12
    np.testing.assert_array_equal(mask, expected)
    assert decode("", (3, 4)).sum() == 0
    labels = decode_image(["4 3", "", "1 1"], (3, 4))
    assert labels[0, 0] == 2 and (labels[:, 1] == 1).all() and (labels > 0).sum() == 4


def test_decode_image_rejects_overlapping_nuclei():
    with pytest.raises(RLEError, match="overlap"):
        decode_image(["1 5", "4 3"], (3, 4))


@pytest.mark.parametrize(
    ("rle", "n_pixels", "message"),
    [
        ("1 2 5", 12, "odd number of values"),
        ("1 x", 12, "non-integer value 'x'"),
        ("1.5 2", 12, "non-integer value '1.5'"),
        ("0 2", 12, "start 0 is not positive"),
        ("-3 2", 12, "start -3 is not positive"),
        ("3 0", 12, "length 0 is not positive"),
        ("3 -1", 12, "length -1 is not positive"),
        ("11 3", 12, "beyond the image's 12 pixels"),
        ("13 1", 12, "beyond the image's 12 pixels"),
        ("7 2 1 2", 12, "not in ascending order"),
        ("1 5 4 2", 12, "runs overlap"),
        ("9223372036854775807 5", None, "too large"),
        ("1 99999999999999999999", None, "value 99999999999999999999 is too large"),
    ],
)
def test_parse_rle_errors(rle, n_pixels, message):
    with pytest.raises(RLEError, match=message):
        parse_rle(rle, n_pixels)


def test_parse_rle_accepts_valid_strings():
    starts, lengths = parse_rle(" 1 2  4 1 12 1 ", 12)  # adjacent runs and extra spaces are fine
    np.testing.assert_array_equal(starts, [0, 3, 11])
    np.testing.assert_array_equal(lengths, [2, 1, 1])
    np.testing.assert_array_equal(parse_rle("100 5")[0], [99])  # no size given: no range check
    for empty in ("", "   ", None, float("nan")):
        assert parse_rle(empty, 12)[0].size == 0


def test_validate_submission_reports_each_problem_with_id_and_line():
    df = pd.DataFrame(
        {
            "ImageId": ["a", "a", "a", "b", "b", "b", "c"],
            "EncodedPixels": ["1 3", "3 2", "1 2 3", "5 1", "20 5", "2 2 1 1", "1 1"],
        }
    )
    problems = validate_submission(df, {"a": (4, 4), "b": (4, 4)})
    assert problems == [
        "image a, line 4: odd number of values (3); expected start/length pairs",
        "image b, line 6: run 1: pixels 20..24 beyond the image's 16 pixels",
        "image b, line 7: runs not in ascending order (start 1 after 2)",
        "image a, lines 2 and 3: nuclei overlap (they share pixels)",
    ]


def test_validate_submission_overlaps_between_several_nuclei():
    df = pd.DataFrame({"ImageId": ["x"] * 4, "EncodedPixels": ["1 10", "20 2", "5 2", "21 1"]})
    problems = validate_submission(df)
    assert problems == [
        "image x, lines 2 and 4: nuclei overlap (they share pixels)",
        "image x, lines 3 and 5: nuclei overlap (they share pixels)",
    ]
    ok = pd.DataFrame({"ImageId": ["x", "x", "y"], "EncodedPixels": ["1 10", "11 2", "1 10"]})
    assert validate_submission(ok) == []


def test_validate_submission_missing_columns_and_ids():
    assert "missing column(s) EncodedPixels" in validate_submission(pd.DataFrame({"ImageId": ["a"]}))[0]
    df = pd.DataFrame({"ImageId": ["", "a"], "EncodedPixels": ["1 1", "1 1"]})
    assert validate_submission(df) == ["line 2: empty ImageId"]


def test_write_submission_validates_then_writes(tmp_path):
    good = submission_frame({"a": ["1 2", "5 1"], "b": []})
    out = tmp_path / "sub" / "submission.csv"
    write_submission(good, out, {"a": (3, 4), "b": (3, 4)})
    text = out.read_text().splitlines()
    assert text == ["ImageId,EncodedPixels", "a,1 2", "a,5 1", "b,"]
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind

    bad_out = tmp_path / "bad.csv"
    bad = submission_frame({"a": ["1 2 3"]})
    with pytest.raises(NucleiError, match=r"bad\.csv: invalid submission.*odd number of values"):
        write_submission(bad, bad_out)
    assert not bad_out.exists()
