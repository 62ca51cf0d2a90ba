"""Usage errors of every command: usage shown once, one error line, exit 2, never a traceback.

The commands are read from the typer app itself, so a new command is covered without editing
this file.
"""

import pytest
import typer

from trustlab.cli import build_app, main


def _leaf_commands(command, path=()):
    sub = getattr(command, "commands", None)
    if not sub:
        yield path, command
        return
    for name, child in sub.items():
        yield from _leaf_commands(child, (*path, name))


LEAVES = list(_leaf_commands(typer.main.get_command(build_app())))
WITH_REQUIRED_ARGUMENT = [path for path, cmd in LEAVES
                          if any(p.required for p in cmd.params)]


def _usage_error(capsys, argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    text = out + err
    return code, text


@pytest.mark.parametrize("argv", [["tinyml", "catalog", "--format", "json"], ["pi", "train", "--epochs", "abc"],
                                  ["nosuch"], ["spn", "fit", "--min-instances", "many"]])
def test_mistyped_command_is_usage_and_one_error_line(capsys, argv):
    code, text = _usage_error(capsys, argv)
    assert code == 2, text
    assert "Traceback" not in text
    assert text.count("Usage:") == 1
    assert len([line for line in text.splitlines() if line.startswith("Error:")]) == 1


def test_every_group_has_commands_with_required_arguments():
    groups = {path[0] for path in WITH_REQUIRED_ARGUMENT}
    assert {"pi", "replication", "spn", "tinyml"} <= groups, groups


@pytest.mark.parametrize("path", WITH_REQUIRED_ARGUMENT, ids=" ".join)
def test_missing_argument_is_usage_and_exit_2(capsys, path):
    code, text = _usage_error(capsys, path)
    assert code == 2, text
    assert "Traceback" not in text and text.count("Usage:") == 1
    assert "Missing" in text
