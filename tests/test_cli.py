"""``nuclei --help`` lists every command once, under the groups of ``pipeline.cli.GROUPS`` (as git and
dvc group theirs); a command's own help and an unknown command are unchanged by the grouping."""

import re

import pytest

from pipeline.cli import COMMANDS, GROUPS, command_list, main


def test_every_command_is_in_exactly_one_group():
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(COMMANDS) and len(grouped) == len(set(grouped))


def test_the_groups_are_those_of_the_issue():
    assert GROUPS == {
        "analyse your images": ("segment", "measure", "export", "finetune", "export-model"),
        "the DVC stages and scoring": ("prepare", "targets", "train", "predict", "postprocess", "tune", "evaluate",
                                       "submit", "score"),
        "model tools": ("average", "widen", "quantise", "pack"),
    }


def test_help_lists_each_command_under_its_group(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    sections = re.split(r"\n\n(?=[^\s][^\n]*:\n)", text)
    found = {}
    for section in sections:
        title, _, body = section.partition(":\n")
        found[title] = tuple(re.findall(r"^  (\S+)  ", body, flags=re.M))
    for title, names in GROUPS.items():
        assert found[title] == names, (title, found.get(title))
    assert "usage: nuclei [-h] [--version] COMMAND ..." in text


def test_help_wraps_to_the_width_asked():
    lines = command_list(width=60).splitlines()
    assert max(map(len, lines)) <= 60
    joined = " ".join(line.strip() for line in lines)
    assert all(" ".join(help_text.split()) in joined for _, help_text in COMMANDS.values())


def test_a_command_keeps_its_own_usage_line(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    assert capsys.readouterr().out.startswith("usage: nuclei score ")


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["bogus"])
    assert done.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
