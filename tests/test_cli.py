"""The ``hqm`` entry point: help texts and clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hqm.cli import build_parser, main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "demo", "synth"):
        assert cmd in out


@pytest.mark.parametrize("cmd", ["train", "eval", "demo", "synth"])
def test_subcommand_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "hqm", "--help"], capture_output=True, text=True, check=True)
    assert "Hard-Positive Query Mining" in out.stdout


def test_bad_override_is_one_clear_line(capsys):
    assert main(["train", "qpic_r18_synthetic", "train.epohcs=3"]) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'train.epochs'" in err and "Traceback" not in err


def test_eval_needs_weights(capsys):
    assert main(["eval", "qpic_r18_synthetic"]) == 2
    assert "weights=PATH" in capsys.readouterr().err
