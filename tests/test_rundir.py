"""One run directory, one run: the lock (two processes at once, a dead owner), refusing a folder that
holds a run, --resume / --overwrite, hqm demo re-runs, and hqm train never generating data."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.engine.rundir import (
    LOCK_NAME,
    RunDirError,
    claim_run_dir,
    foreign_files,
    holds_run,
    next_free_run_dir,
    run_config_header,
)

#: the first line of a run's file of that name (RunWriter's formats, the run config's header)
FIRST_LINE = {
    "metrics.jsonl": '{"kind": "train", "step": 20, "epoch": 0}',
    "results.csv": "epoch,step,mAP_full",
}


def fake_run(out, *names: str) -> None:
    """A folder with the given run files (contents: the name, after the first line a run writes into
    config.yaml, metrics.jsonl and results.csv, or a zip archive's first bytes for a .pt)."""
    for name in names:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".pt"):  # torch.save writes zip archives
            (out / name).write_bytes(b"PK\x03\x04" + name.encode())
            continue
        first = run_config_header(out) if name == "config.yaml" else FIRST_LINE.get(name)
        (out / name).write_text((first + "\n" if first else "") + name)


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
    fake_run(out, "checkpoints/last.pt", "metrics.jsonl", "results.csv", "notes.md")
    fake_run(out, "tensorboard/events.out.tfevents.1764744000.vm.1.0", "checkpoints/step_0000250.pt")
    assert holds_run(out) == [
        "checkpoints/last.pt",
        "checkpoints/step_0000250.pt",
        "metrics.jsonl",
        "results.csv",
    ]
    with pytest.raises(RunDirError, match="already holds a training run.*--resume .*--overwrite"):
        claim_run_dir(out)
    claim_run_dir(out, resume=str(out / "checkpoints" / "last.pt")).release()  # its own checkpoint
    other = tmp_path / "other" / "last.pt"
    fake_run(tmp_path / "other", "last.pt")
    with pytest.raises(RunDirError, match="would mix two runs"):
        claim_run_dir(out, resume=str(other))
    with pytest.raises(RunDirError, match="pick one"):
        claim_run_dir(out, resume=str(other), overwrite=True)
    assert (out / "metrics.jsonl").read_text().endswith("\nmetrics.jsonl")  # nothing touched so far
    claim_run_dir(out, overwrite=True).release()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME, "notes.md"]  # only run files deleted
    # a user's files in checkpoints/ (an export, DETR weights, notes) are not the run's: they stay
    fake_run(out, "checkpoints/best.pt", "checkpoints/detr-r50.pth", "checkpoints/exported/model.safetensors")
    fake_run(out, "tensorboard/events.out.tfevents.2", "tensorboard/mine.txt")
    claim_run_dir(out, overwrite=True).release()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        LOCK_NAME,
        "checkpoints/detr-r50.pth",
        "checkpoints/exported/model.safetensors",
        "notes.md",
        "tensorboard/mine.txt",
    ]
    shutil.rmtree(out / "checkpoints")
    shutil.rmtree(out / "tensorboard")
    assert next_free_run_dir(out) == out
    fake_run(out, "results.csv")
    fake_run(tmp_path / "run-2", "metrics.jsonl")
    assert next_free_run_dir(out) == tmp_path / "run-3"


def test_a_users_results_csv_or_metrics_jsonl_is_not_a_run(tmp_path):
    """A results.csv / metrics.jsonl of the user's own was called "a training run", and --overwrite
    deleted it; a run's .pt names only count in checkpoints/."""
    out = tmp_path / "ures"
    out.mkdir()
    (out / "results.csv").write_text("name,score\nalice,3\n")
    assert holds_run(out) == [] and foreign_files(out) == ["results.csv"]
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match=r"ures holds results.csv, which hqm did not write"):
            claim_run_dir(out, overwrite=overwrite)
    assert (out / "results.csv").read_text() == "name,score\nalice,3\n"
    (out / "results.csv").unlink()
    (out / "metrics.jsonl").write_text('["not", "a run record"]\n')
    assert foreign_files(out) == ["metrics.jsonl"]
    (out / "metrics.jsonl").unlink()
    fake_run(out, "checkpoints/model_final.pt")  # not a name a run writes
    assert holds_run(out) == [] and foreign_files(out) == []
    fake_run(out, "checkpoints/last.pt", "results.csv")  # beside a run, a user's metrics.jsonl too
    (out / "metrics.jsonl").write_text("my notes\n")
    with pytest.raises(RunDirError, match="holds metrics.jsonl, which hqm did not write"):
        claim_run_dir(out, overwrite=True)
    assert (out / "metrics.jsonl").read_text() == "my notes\n"


def test_files_at_a_runs_names_that_hqm_did_not_write_are_refused(tmp_path):
    """A user's own config.yaml (the config being trained, say) in train.output_dir was replaced by
    the resolved config; log.txt / curves.png / tensorboard/ would be appended to or replaced."""
    out = tmp_path / "exp"
    out.mkdir()
    (out / "config.yaml").write_text("# mine\n_base_: qpic_r18_synthetic\n")
    (out / "notes.md").write_text("notes")
    for overwrite in (False, True):
        with pytest.raises(
            RunDirError, match=r"exp holds config.yaml, which hqm did not write.*exp/run\), or move it"
        ):
            claim_run_dir(out, overwrite=overwrite)
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.md"]  # no lock file left
    assert (out / "config.yaml").read_text().startswith("# mine")
    assert next_free_run_dir(out) == tmp_path / "exp-2"  # hqm demo's next folder skips it too
    (out / "config.yaml").unlink()
    fake_run(out, "log.txt", "curves.png", "tensorboard/events")
    with pytest.raises(RunDirError, match="holds log.txt, curves.png, tensorboard/, .*move them"):
        claim_run_dir(out)
    # a folder hqm train claimed (its lock file) and whose config.yaml starts with the run's header
    fake_run(out, LOCK_NAME, "config.yaml")
    claim_run_dir(out).release()
    # a lock file left over (rm -rf dir/* keeps dot files) does not make a user's config.yaml a run's
    (out / "config.yaml").write_text("# mine\n")
    with pytest.raises(RunDirError, match="holds config.yaml, which"):
        claim_run_dir(out)
    # a link is never a run's file: training would write through it, out of the folder
    (out / "config.yaml").unlink()
    (out / "config.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    with pytest.raises(RunDirError, match=r"symbolic links to missing targets \(config.yaml -> .*elsewhere"):
        claim_run_dir(out)
    assert not (tmp_path / "elsewhere.yaml").exists()
    (tmp_path / "elsewhere.yaml").write_text(
        run_config_header(out) + "\n"
    )  # even one that looks like a run's
    with pytest.raises(RunDirError, match="holds config.yaml, which"):
        claim_run_dir(out)
    # the run of an hqm before the header (a checkpoint and a config.yaml without it) is a run
    fake_run(tmp_path / "old", "checkpoints/last.pt")
    (tmp_path / "old" / "config.yaml").write_text("model: {}\n")
    claim_run_dir(tmp_path / "old", resume=str(tmp_path / "old" / "checkpoints" / "last.pt")).release()
    # a file at a checkpoint's name that is no checkpoint is not a run, and a run would replace it:
    # refused, and the refused claim leaves no lock file behind
    user = tmp_path / "u"
    (user / "checkpoints").mkdir(parents=True)
    (user / "checkpoints" / "last.pt").write_text("x")
    assert holds_run(user) == []
    for overwrite in (False, True):
        with pytest.raises(RunDirError, match="holds checkpoints/last.pt, which hqm did not write"):
            claim_run_dir(user, overwrite=overwrite)
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == ["checkpoints", "checkpoints/last.pt"]
    fake_run(user, "metrics.jsonl", "checkpoints/best.pt")  # refused as a run: no lock file left either
    (user / "checkpoints" / "last.pt").unlink()
    with pytest.raises(RunDirError, match="already holds a training run"):
        claim_run_dir(user)
    assert not (user / LOCK_NAME).exists()
    # a dangling link as train.output_dir, or above it: one line, not mkdir's FileExistsError
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(RunDirError, match="symbolic link to .*nowhere, which does not exist"):
        claim_run_dir(tmp_path / "dangling")
    with pytest.raises(
        RunDirError, match="cannot create train.output_dir=.*dangling/sub: .*dangling is not a folder"
    ):
        claim_run_dir(tmp_path / "dangling" / "sub")
    # dangling links at any run file's name: the run would create its files at their targets
    for name in ("metrics.jsonl", "checkpoints", LOCK_NAME):
        folder = tmp_path / f"links-{name.strip('.')}"
        folder.mkdir()
        (folder / name).symlink_to(tmp_path / f"outside-{name}")
        with pytest.raises(RunDirError, match=f"symbolic links to missing targets \\({name} -> "):
            claim_run_dir(folder)
        assert not (tmp_path / f"outside-{name}").exists()
    # a run's config.yaml copied (and edited, as its header says) into another folder: the user's now
    mine = tmp_path / "mine"
    fake_run(tmp_path / "run", "config.yaml")
    mine.mkdir()
    (mine / "config.yaml").write_text((tmp_path / "run" / "config.yaml").read_text())
    with pytest.raises(RunDirError, match="holds config.yaml, which"):
        claim_run_dir(mine)


def test_hqm_train_keeps_the_users_config_in_its_output_dir(tiny_root, tmp_path, capsys):
    exp = tmp_path / "exp"
    exp.mkdir()
    text = "# my experiment\n_base_: qpic_r18_synthetic\n"
    (exp / "config.yaml").write_text(text)
    argv = _train(tiny_root, exp)
    argv[1] = str(exp / "config.yaml")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds config.yaml, which hqm did not write" in err and "Traceback" not in err
    assert (exp / "config.yaml").read_text() == text and sorted(p.name for p in exp.iterdir()) == [
        "config.yaml"
    ]
    argv = _train(tiny_root, exp / "run")  # what the message suggests
    argv[1] = str(exp / "config.yaml")
    assert main(argv) == 0
    assert (exp / "run" / "config.yaml").read_text().splitlines()[0] == run_config_header(exp / "run")
    assert (exp / "config.yaml").read_text() == text


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
    assert (out / "config.yaml").read_text().endswith("\nconfig.yaml")  # not rewritten
    # a mistyped data.root is an error naming the missing file; nothing is generated there
    typo = tmp_path / "synthtic"
    assert main(_train(typo, tmp_path / "fresh" / "run")) == 2
    assert "annotations/meta.json not found" in capsys.readouterr().err and not typo.exists()


def test_a_run_whose_set_up_fails_leaves_its_folder_as_it_found_it(tiny_root, tmp_path, capsys):
    """The refusal comes after the folder was claimed (lock, log.txt, checkpoints/): what the attempt
    created goes, what was there stays; a refused resume keeps the run's config.yaml."""
    typo = tmp_path / "synthtic"
    assert main(_train(typo, tmp_path / "new" / "run")) == 2  # folders it created: gone
    assert "meta.json not found" in capsys.readouterr().err and not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.md").write_text("mine")
    assert main(_train(typo, mine)) == 2  # a user's folder: only their file is left
    assert sorted(p.name for p in mine.iterdir()) == ["notes.md"]
    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    assert main(_train(data, tmp_path / "run")) == 0  # a real run, then a resume its data fails
    run = tmp_path / "run"

    def files():  # the lock file records its latest owner; log.txt is appended to
        return {
            p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in ("log.txt", LOCK_NAME)
        }

    before = files()
    (data / "annotations" / "meta.json").unlink()
    argv = _train(data, run, "train.max_steps=2")
    argv[1] = str(run / "config.yaml")
    assert main([*argv, "--resume", str(run)]) == 2
    assert files() == before and (run / "config.yaml").read_bytes() == before[run / "config.yaml"]
    assert "meta.json not found" in (run / "log.txt").read_text().splitlines()[-1]  # says why


@pytest.mark.slow
def test_demo_reruns_into_a_fresh_folder_and_generates_only_when_asked(tmp_path, monkeypatch, capsys):
    """hqm demo on a fresh machine writes the benchmark; run twice, it keeps the first run."""
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path / "runs" / "demo", "checkpoints/last.pt", "metrics.jsonl")
    (tmp_path / "runs" / "demo-2").mkdir()
    (tmp_path / "runs" / "demo-2" / "log.txt").write_text("mine")  # not hqm's: skipped, and said why
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
    assert (
        "runs/demo holds an earlier demo run; runs/demo-2 holds files hqm did not write; this one goes "
        "to runs/demo-3 (--overwrite replaces the earlier one)" in captured.err
    )
    assert (tmp_path / "runs" / "demo" / "metrics.jsonl").read_text().endswith("\nmetrics.jsonl")
    assert (tmp_path / "runs" / "demo-2" / "log.txt").read_text() == "mine"
    assert (tmp_path / "runs" / "demo-3" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "data" / "synthetic" / "annotations" / "meta.json").is_file()


def test_resume_of_a_run_folder_into_another_output_dir_is_refused(tiny_root, tmp_path, capsys, monkeypatch):
    """The printed resume command (``hqm train run/config.yaml --resume run``, relative paths) run
    from another folder resumed into a new ``<cwd>/run`` and left the run named untouched, silently."""
    from hqm.engine.checkpoint import resolve_resume
    from hqm.engine.resume_policy import ResumeError

    fake_run(tmp_path / "a", "checkpoints/last.pt")
    for named in (tmp_path / "a", tmp_path / "a" / "checkpoints"):
        with pytest.raises(ResumeError, match=r"names a run folder, .*add train.output_dir=.*a; to start"):
            resolve_resume(str(named), tmp_path / "b")
    # a run folder that is itself named checkpoints resumes as any other
    (tmp_path / "c" / "checkpoints").mkdir(parents=True)  # (empty: looked into, not refused)
    with pytest.raises(FileNotFoundError, match="checkpoints: no checkpoints/last.pt, last.pt or step_"):
        resolve_resume(str(tmp_path / "c" / "checkpoints"), tmp_path / "c" / "checkpoints")
    assert not (tmp_path / "b").exists()
    monkeypatch.chdir(tmp_path)
    assert main([*_train(tiny_root, "b"), "--resume", "a"]) == 2
    err = capsys.readouterr().err
    assert "--resume a names a run folder" in err and "Traceback" not in err and not (tmp_path / "b").exists()


def test_commands_a_refusal_suggests_are_quoted_for_the_shell(tmp_path):
    """A folder name with a space: the suggested override / --resume value pastes into a shell."""
    out = tmp_path / "my runs" / "exp"
    out.mkdir(parents=True)
    (out / "config.yaml").write_text("# mine\n")
    with pytest.raises(RunDirError) as e:
        claim_run_dir(out)
    assert f"(e.g. 'train.output_dir={out / 'run'}')" in str(e.value)
    run = tmp_path / "my runs" / "run"
    fake_run(run, "checkpoints/last.pt")
    with pytest.raises(RunDirError) as e:
        claim_run_dir(run)
    assert f"--resume '{run}', start over" in str(e.value)


def test_a_run_folder_in_the_data_set_is_refused(tiny_root, capsys):
    """train.output_dir=data.root (or its image / annotation folders) wrote a run among the data."""
    before = sorted(p.relative_to(tiny_root) for p in tiny_root.rglob("*"))
    for out, needle in (
        (tiny_root, "is data.root"),
        (tiny_root / "images" / "train2015" / "run", "is inside the data set's folder"),
        (tiny_root / "annotations", "is the data set's folder"),
        (tiny_root / "images", "is the data set's folder"),  # beside train2015/ and test2015/
    ):
        assert main(_train(tiny_root, out)) == 2
        err = capsys.readouterr().err
        assert needle in err and "choose a folder outside it" in err and "Traceback" not in err
    assert sorted(p.relative_to(tiny_root) for p in tiny_root.rglob("*")) == before
