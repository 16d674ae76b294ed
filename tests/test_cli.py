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


def test_overrides_may_follow_an_option(capsys):
    # `hqm train CONFIG --overwrite key=value` was refused as "unrecognized arguments"
    assert main(["train", "qpic_r18_synthetic", "--overwrite", "train.epohcs=3"]) == 2
    assert "Did you mean 'train.epochs'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["train", "qpic_r18_synthetic", "--overwrite", "--no-such-flag"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the stray word alone is named, not the override beside it
        main(["train", "qpic_r18_synthetic", "--overwrite", "train.epochs=3", "foo"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith("unrecognized arguments: foo")


@pytest.mark.parametrize(
    "command", [["check-data", "qpic_r18_synthetic"], ["predict", "ckpt.pt"], ["export", "ckpt.pt", "out"]]
)
def test_unrecognised_option_shows_the_commands_usage(capsys, command):
    # `hqm check-data CONFIG --bogus` printed hqm's top-level usage and "hqm: error", not the command's
    with pytest.raises(SystemExit) as e:
        main([*command, "--bogus"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert (
        f"usage: hqm {command[0]}" in err
        and f"hqm {command[0]}: error: unrecognized arguments: --bogus" in err
    )


def test_eval_needs_weights(capsys, tmp_path):
    assert main(["eval", "qpic_r18_synthetic"]) == 2
    assert "weights=PATH" in capsys.readouterr().err
    ckpt = tmp_path / "best.pt"  # a checkpoint and weights=: one of the two would be ignored
    ckpt.write_bytes(b"")
    assert main(["eval", str(ckpt), "weights=other.pt"]) == 2
    assert "weights=other.pt goes with a config" in capsys.readouterr().err


@pytest.mark.parametrize("flag, variant", [([], "matlab"), (["--ap-thresholds", "numpy"], "numpy")])
def test_eval_file_passes_the_threshold_variant(monkeypatch, capsys, flag, variant):
    seen = {}

    def evaluate_file(dataset, root, predictions, mode, max_dets, ap_thresholds):
        seen["ap_thresholds"] = ap_thresholds
        return {"mAP_full": 0.5}, None

    monkeypatch.setattr("hqm.engine.evaluator_run.evaluate_file", evaluate_file)
    argv = ["eval-file", "--dataset", "hico_det", "--root", "r", "--predictions", "p.json", *flag]
    assert main(argv) == 0 and seen == {"ap_thresholds": variant}
    assert "50.00" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv[:7], "--ap-thresholds", "matlab2"])


@pytest.mark.parametrize("command", ["train", "eval", "predict", "check-data", "synth"])
def test_a_missing_argument_does_not_call_the_optional_overrides_required(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "the following arguments are required" in err and "overrides" not in err.splitlines()[-1]
