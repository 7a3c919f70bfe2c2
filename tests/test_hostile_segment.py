"""The hostile pass over ``nuclei segment`` (``scripts/hostile_segment.py``, issue 41): every case
is handled — one line per problem and no traceback, every other image still segmented, label files
and tables that agree. Each case runs in its own temporary folder with the shipped model."""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("hostile_segment", ROOT / "scripts" / "hostile_segment.py")
hostile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile)


def test_the_pass_has_its_cases():
    assert len(hostile.CASES) >= 28


@pytest.mark.parametrize("check", [c for _, c in hostile.CASES], ids=[t[:60] for t, _ in hostile.CASES])
def test_case_is_handled(check, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")  # no progress bars
    monkeypatch.chdir(tmp_path)
    detail = check(tmp_path)
    assert isinstance(detail, str) and detail  # each case says what it saw
