"""One run directory, one run: the lock (two processes at once, a dead owner), refusing a folder that
holds a run, --resume / --overwrite, hqm demo re-runs, and hqm train never generating data."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.engine.rundir import LOCK_NAME, RunDirError, claim_run_dir, holds_run, next_free_run_dir


def fake_run(out, *names: str) -> None:
    """A folder with the given run files (contents irrelevant)."""
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(name)


def test_lock_refuses_a_second_process_and_never_outlives_its_owner(tmp_path):
    out = tmp_path / "run"
    first = claim_run_dir(out)
    with pytest.raises(RunDirError, match="in use by a training run that is still running \\(pid"):
        claim_run_dir(out)  # a second open file description: refused like another process
    first.release()
    claim_run_dir(out).release()
    # a process that took the lock and died without releasing it (SIGKILL-like exit) blocks nothing
    code = (
        "import os; from hqm.engine.rundir import claim_run_dir; "
        f"lock = claim_run_dir({str(out)!r}); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert "pid" in (out / LOCK_NAME).read_text()  # the file stays, the lock does not
    claim_run_dir(out).release()


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path):
    out = tmp_path / "run"
    fake_run(out, LOCK_NAME, "config.yaml", "log.txt")  # an attempt that never trained: reusable
    claim_run_dir(out).release()
    fake_run(out, "checkpoints/last.pt", "metrics.jsonl", "results.csv", "notes.md", "tensorboard/ev")
    assert holds_run(out) == ["checkpoints/last.pt", "metrics.jsonl", "results.csv"]
    with pytest.raises(RunDirError, match="already holds a training run.*--resume .*--overwrite"):
        claim_run_dir(out)
    claim_run_dir(out, resume=str(out / "checkpoints" / "last.pt")).release()  # its own checkpoint
    other = tmp_path / "other" / "last.pt"
    fake_run(tmp_path / "other", "last.pt")
    with pytest.raises(RunDirError, match="would mix two runs"):
        claim_run_dir(out, resume=str(other))
    with pytest.raises(RunDirError, match="pick one"):
        claim_run_dir(out, resume=str(other), overwrite=True)
    assert (out / "metrics.jsonl").read_text() == "metrics.jsonl"  # nothing touched so far
    claim_run_dir(out, overwrite=True).release()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "notes.md"]  # only run files deleted
    assert next_free_run_dir(out) == out
    fake_run(out, "results.csv")
    fake_run(tmp_path / "run-2", "metrics.jsonl")
    assert next_free_run_dir(out) == tmp_path / "run-3"


def test_files_at_a_runs_names_that_hqm_did_not_write_are_refused(tmp_path):
    """A user's own config.yaml (the config being trained, say) in train.output_dir was replaced by
    the resolved config; log.txt / curves.png / tensorboard/ would be appended to or replaced."""
    out = tmp_path / "exp"
    fake_run(out, "config.yaml", "notes.md")
    for overwrite in (False, True):
        with pytest.raises(
            RunDirError, match=r"exp holds config.yaml, which hqm train did not write.*move it"
        ):
            claim_run_dir(out, overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.md"]  # no lock file left
    assert (out / "config.yaml").read_text() == "config.yaml"
    fake_run(out, "log.txt", "curves.png", "tensorboard/events")
    with pytest.raises(RunDirError, match="config.yaml, log.txt, curves.png, tensorboard/, .*move them"):
        claim_run_dir(out)
    assert next_free_run_dir(out) == tmp_path / "exp-2"  # hqm demo's next folder skips it too
    claim_run_dir(tmp_path / "fresh").release()  # a folder hqm claimed keeps its lock file: its own
    fake_run(tmp_path / "fresh", "config.yaml", "log.txt")
    claim_run_dir(tmp_path / "fresh").release()
    fake_run(tmp_path / "old", "checkpoints/last.pt", "config.yaml")  # a run (of an hqm before the lock)
    claim_run_dir(tmp_path / "old", resume=str(tmp_path / "old" / "checkpoints" / "last.pt")).release()


def test_hqm_train_keeps_the_users_config_in_its_output_dir(tiny_root, tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    text = "# my experiment\n_base_: qpic_r18_synthetic\n"
    (exp / "config.yaml").write_text(text)
    argv = _train(tiny_root, exp)
    argv[1] = str(exp / "config.yaml")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds config.yaml, which hqm train did not write" in err and "Traceback" not in err
    assert (exp / "config.yaml").read_text() == text and sorted(p.name for p in exp.iterdir()) == [
        "config.yaml"
    ]


def _train(root, out, *extra: str) -> list[str]:
    return [
        "train",
        "qpic_r18_synthetic",
        *TINY_OVERRIDES,
        *TINY_DATA_64,
        f"data.root={root}",
        f"train.output_dir={out}",
        "train.max_steps=1",
        "train.batch_size=2",
        *extra,
    ]


def test_hqm_train_refuses_before_writing(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    fake_run(out, "checkpoints/last.pt", "config.yaml")
    assert main(_train(tiny_root, out)) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "Traceback" not in err
    assert (out / "config.yaml").read_text() == "config.yaml"  # not rewritten
    # a mistyped data.root is an error naming the missing file; nothing is generated there
    typo = tmp_path / "synthtic"
    assert main(_train(typo, tmp_path / "fresh")) == 2
    assert "annotations/meta.json not found" in capsys.readouterr().err and not typo.exists()


@pytest.mark.slow
def test_demo_reruns_into_a_fresh_folder_and_generates_only_when_asked(tmp_path, monkeypatch, capsys):
    """hqm demo on a fresh machine writes the benchmark; run twice, it keeps the first run."""
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs" / "demo", "checkpoints/last.pt", "metrics.jsonl")
    overrides = [o for o in TINY_OVERRIDES + TINY_DATA_64 if not o.startswith("data.dataset")]
    argv = [
        "demo",
        *overrides,
        "data.root=data/synthetic",
        "train.max_steps=1",
        "train.batch_size=2",
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "holds an earlier demo run; this one goes to runs/demo-2" in captured.err
    assert (tmp_path / "runs" / "demo" / "metrics.jsonl").read_text() == "metrics.jsonl"
    assert (tmp_path / "runs" / "demo-2" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "data" / "synthetic" / "annotations" / "meta.json").is_file()
