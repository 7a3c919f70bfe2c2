"""pipeline.files.channels: channel names made column keys that never collide (issue 89)."""

import pytest

from pipeline.files.channels import channel_keys
from pipeline.method.features import CHANNEL_COLUMNS, COLUMN_DICTIONARY, describe_column, measurement_columns


def columns_of(keys) -> list[str]:
    return [prefix + key for key in keys for prefix in CHANNEL_COLUMNS]


@pytest.mark.hostile
def test_no_channel_name_makes_a_column_of_every_image():
    """A channel named after what follows a per-channel prefix in a column of every image
    ('intensity': mean_intensity, integrated_intensity) is renamed, and columns.csv says how."""
    fixed = {*COLUMN_DICTIONARY, *measurement_columns(0.5)}
    names = sorted({column[len(prefix):] for column in fixed for prefix in CHANNEL_COLUMNS if column.startswith(prefix)})
    assert "intensity" in names
    for name in names:
        for spelling in (name, name.upper()):
            keys = channel_keys(["DAPI", spelling])
            assert not set(columns_of(keys)) & fixed, (spelling, keys)
            unit, meaning = describe_column(f"mean_{keys[1]}")
            assert f"channel 1 of the file, named '{spelling}'" in meaning


@pytest.mark.hostile
@pytest.mark.parametrize("names", [["c1", "x", "x"], ["1", "c1", "x"], ["DAPI", "intensity", "intensity__c1"],
                                   ["a", "A", "c0", "c1"], ["", "c0", "0"]])
def test_channel_keys_never_collide(names):
    keys = channel_keys(names)
    assert len({k.casefold() for k in keys}) == len(keys), keys
    assert len(set(columns_of(keys))) == len(columns_of(keys))
