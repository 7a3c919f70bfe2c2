"""The hostile pass over ``nuclei segment`` (``scripts/hostile_segment.py``, issue 41; the newer
commands' cases, issue 62, are the tests marked ``hostile``, which the script also runs): every case
is handled — one line per problem and no traceback, every other image still segmented, label files
and tables that agree. Each case runs in its own temporary folder with the shipped model;
:data:`OPEN` lists the cases that wait for a change elsewhere."""

from __future__ import annotations

import pytest

from .conftest import load_script

pytestmark = pytest.mark.slow

hostile = load_script("hostile_segment.py")


#: Cases whose fix lies outside the files of their issue: (title, reason). Strict: a fix makes them fail.
OPEN: dict[str, str] = {}


def test_the_pass_has_its_cases():
    assert len(hostile.CASES) >= 28
    assert set(OPEN) <= {title for title, _ in hostile.CASES}


@pytest.mark.parametrize("check", [
    pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=OPEN[t])) if t in OPEN else c
    for t, c in hostile.CASES], ids=[t[:60] for t, _ in hostile.CASES])
def test_case_is_handled(check, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")  # no progress bars
    monkeypatch.chdir(tmp_path)
    detail = check(tmp_path)
    assert isinstance(detail, str) and detail  # each case says what it saw
