"""The parameter reference page docs/parameters.md is what docs_tools/make_params_reference.py writes."""

from __future__ import annotations

import dataclasses

from docs_tools import make_params_reference as script
from pipeline.config.params import SECTIONS


def test_committed_page_equals_the_generated_one():
    assert script.PAGE.read_text(encoding="utf-8") == script.render(), (
        "docs/parameters.md is out of date: run python -m docs_tools.make_params_reference"
    )


def test_page_lists_every_key_with_its_default_and_rule():
    page = script.render()
    for section in SECTIONS:
        assert f"## `{section.NAME}`" in page
        for field in dataclasses.fields(section):
            assert f"| `{field.name}` |" in page
    assert "| `marker_threshold` | `0.5` | a number in [0, 1] |" in page
    assert "| `split` | `grouped` | one of stratified, grouped, source |" in page
    assert "segment.block_size must exceed twice segment.block_margin" in page
