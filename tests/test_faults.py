"""The fault-injection suite: each fault a long training run meets is injected and the promised
behaviour asserted (the README's "Faults" table lists these tests).

Fast, in-process versions run by default (CI): SIGTERM / SIGINT raised from inside a training hook at
a known step, a NaN injected into the criterion, a full disk simulated in the checkpoint writer (and a
real one: the kernel's file-size limit), truncated / corrupt / malicious checkpoint files written by
the test, a killed write's leftovers, a torchrun restart simulated through its environment. The
``slow`` ones use real processes: SIGTERM from outside, SIGKILL in the middle of a checkpoint write,
and a torchrun worker that crashes and is restarted by the elastic agent."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hqm.output
from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.engine.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from hqm.engine.trainer import Trainer
from hqm.errors import OutputError
from hqm.models.group_criterion import GroupCriterion
from test_distributed import free_port


def run_overrides(root, out, *extra: str) -> list[str]:
    return [
        *TINY_OVERRIDES,
        *TINY_DATA_64,
        f"data.root={root}",
        f"train.output_dir={out}",
        "train.batch_size=2",
        "train.max_steps=3",
        "train.checkpoint_every_steps=1",
        "train.log_every=1",
        "train.deterministic=true",
        *extra,
    ]


def hqm_train(root, out, *extra: str) -> list[str]:
    return ["train", "qpic_r18_synthetic", *run_overrides(root, out, *extra)]


def last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


def step_of(path: Path) -> int:
    return load_checkpoint(path)["step"]


# -- pre-emption: SIGTERM / SIGINT ---------------------------------------------------------------


def raise_signal_after_step(monkeypatch, step: int, signum: int) -> None:
    """Deliver ``signum`` to this process from inside ``train_step`` of optimiser step ``step``."""
    original = Trainer.train_step

    def train_step(self, window, active):
        result = original(self, window, active)
        if self.step + 1 == step:
            signal.raise_signal(signum)
        return result

    monkeypatch.setattr(Trainer, "train_step", train_step)


def test_sigterm_saves_at_the_step_boundary_and_resumes(tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    raise_signal_after_step(monkeypatch, 2, signal.SIGTERM)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(hqm_train(tiny_root, out, "train.checkpoint_every_steps=0")) == 143
    line = last_line(capsys)
    assert line.startswith("hqm train: stopped by SIGTERM after step 2")
    assert f"Resume with: hqm train {out / 'config.yaml'} --resume {out}" in line
    assert step_of(out / "checkpoints" / "last.pt") == 2  # saved at the boundary, nothing lost
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    monkeypatch.undo()
    assert main(["train", str(out / "config.yaml"), "--resume", str(out)]) == 0  # the printed command
    assert step_of(out / "checkpoints" / "last.pt") == 3
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "eval"] == [3]
    torch.set_grad_enabled(True)


def test_sigint_during_evaluation_evaluates_again_on_resume(tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    from hqm.evaluation.hico_det import HICODetEvaluator

    original = HICODetEvaluator.process
    calls = []

    def process(self, preds):
        calls.append(1)
        if len(calls) == 1:
            signal.raise_signal(signal.SIGINT)
        return original(self, preds)

    monkeypatch.setattr(HICODetEvaluator, "process", process)
    args = hqm_train(
        tiny_root,
        out,
        "train.max_steps=0",
        "train.epochs=1",
        "train.batch_size=8",
        "eval.every=1",
        "eval.batch_size=4",
    )
    assert main(args) == 130
    line = last_line(capsys)
    assert "stopped by SIGINT during the evaluation after epoch 1 (it runs again on resume)" in line
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and ckpt["eval_due"] and not (out / "results.csv").exists()
    monkeypatch.undo()
    assert main([*args, "--resume", "auto"]) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,")  # the interrupted evaluation, once
    # resuming the finished run says so and shows its last evaluation (it evaluated again without
    # a word and appended the same row to results.csv)
    assert main([*args, "--resume", "auto"]) == 0
    log = (out / "log.txt").read_text()
    assert "nothing left to train: the checkpoint is at epoch 1 of 1" in log and "its last evaluation" in log
    assert (out / "results.csv").read_text().splitlines() == rows
    torch.set_grad_enabled(True)


# -- numerical faults ----------------------------------------------------------------------------


def nan_loss_at(monkeypatch, steps: set[int]) -> None:
    """The criterion returns a NaN loss at the given (1-based) optimiser steps."""
    original = GroupCriterion.forward
    calls = []

    def forward(self, *args, **kwargs):
        loss, terms = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) in steps:
            loss = loss * float("nan")
            terms = {**terms, "loss_verb_ce": terms["loss_verb_ce"] * float("nan")}
        return loss, terms

    monkeypatch.setattr(GroupCriterion, "forward", forward)


def test_nan_loss_is_skipped_and_logged(tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    nan_loss_at(monkeypatch, {2})
    assert main(hqm_train(tiny_root, out, "train.max_steps=2")) == 0
    err = capsys.readouterr().err
    assert "step 2: the loss is not finite (loss_verb_ce=nan): step skipped (1 in a row" in err
    # the skipped step changed nothing: the weights after step 2 are those after step 1
    a = load_checkpoint(out / "checkpoints" / "last.pt")
    # strict JSON (NaN is not JSON): the non-finite loss is written as null
    lines = (out / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(x, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl")) for x in lines]
    assert [e["step"] for e in events if e["kind"] == "nonfinite"] == [2]
    assert [e["loss"] for e in events if e["kind"] == "nonfinite"] == [None]
    assert a["step"] == 2 and all(
        torch.isfinite(v).all() for v in a["model"].values() if v.is_floating_point()
    )
    assert a["optimizer"]["state"][0]["step"].item() == 1  # one AdamW update, not two
    torch.set_grad_enabled(True)


@pytest.mark.parametrize(
    ("extra", "nan_steps", "stop_at", "good", "why"),
    [
        (["train.on_nonfinite=stop"], {2}, 2, 1, "train.on_nonfinite=stop"),
        # the skipped step 2 is checkpointed (its weights are step 1's), step 3 stops the run
        (["train.max_nonfinite_skips=2"], {2, 3}, 3, 2, "2 consecutive steps were not finite"),
    ],
)
def test_nonfinite_stop_leaves_the_last_good_checkpoint(
    tiny_root, tmp_path, capsys, monkeypatch, extra, nan_steps, stop_at, good, why
):
    out = tmp_path / "run"
    nan_loss_at(monkeypatch, nan_steps)
    assert main(hqm_train(tiny_root, out, *extra)) == 1
    line = last_line(capsys)
    assert f"hqm train: error: step {stop_at}: the loss is not finite" in line and why in line
    assert f"The last good checkpoint is {out / 'checkpoints' / 'last.pt'} (step {good})" in line
    assert f"resume with: hqm train {out / 'config.yaml'} --resume {out}" in line
    last = load_checkpoint(out / "checkpoints" / "last.pt")  # intact: nothing written after the fault
    assert last["step"] == good and not (out / "results.csv").exists()
    torch.set_grad_enabled(True)


def test_nonfinite_gradient_is_caught_and_fp16_overflow_is_the_scalers(tiny_root, tmp_path, monkeypatch):
    """A NaN gradient with a finite loss is skipped; in fp16 an inf gradient is left to the GradScaler
    (which skips the step and lowers its scale) and not counted as a fault."""
    from hqm.config import load_config

    for amp in ("off", "fp16"):
        cfg = load_config("qpic_r18_synthetic", run_overrides(tiny_root, tmp_path / amp, f"train.amp={amp}"))
        trainer = Trainer(cfg)
        param = next(p for p in trainer.model.parameters() if p.requires_grad)
        hook = param.register_hook(lambda g: g * float("inf"))
        window = [next(iter(trainer.train_loader))]
        before = param.detach().clone()
        scale = trainer.scaler.get_scale() if amp == "fp16" else None
        _, _, applied = trainer.train_step(window, ())
        hook.remove()
        assert torch.equal(param.detach(), before)  # no update either way
        if amp == "off":
            assert trainer.nonfinite.total == 1 and not applied
        else:  # handed to the scaler, which skipped the update and halved its scale
            assert trainer.nonfinite.total == 0 and applied and trainer.scaler.get_scale() == scale / 2
        trainer.run_lock.release()


# -- full disk / failed writes -------------------------------------------------------------------


class FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes (write raises ENOSPC)."""

    room = 4096

    def write(self, b):
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_full_disk_during_a_checkpoint_write(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1, "w": torch.zeros(10)})
    monkeypatch.setattr(hqm.output, "open_new", lambda p, mode="wb": FullDisk(p, "w"))
    with pytest.raises(OutputError, match="no space left on the device; the previous last.pt is intact"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(100_000)})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # the partial file is removed


def test_file_size_limit_of_the_kernel_during_a_checkpoint_write(tmp_path):
    """A real refusal from the kernel (RLIMIT_FSIZE -> EFBIG) inside torch's own zip writer."""
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"step": 1})
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(OutputError, match="file too large.*the previous last.pt is intact"):
            save_checkpoint(path, {"step": 2, "w": torch.zeros(1_000_000)})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert load_checkpoint(path)["step"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_full_disk_during_training_stops_with_the_resume_command(tiny_root, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_open_new = hqm.output.open_new
    writes = []

    def disk_fills_on_the_second_checkpoint(p, mode="wb"):
        if Path(p).name.startswith(".last.pt.tmp"):
            writes.append(p)
            if len(writes) >= 2:
                return FullDisk(p, "w")
        return real_open_new(p, mode)

    monkeypatch.setattr(hqm.output, "open_new", disk_fills_on_the_second_checkpoint)
    assert main(hqm_train(tiny_root, out)) == 1
    line = last_line(capsys)
    assert (
        f"cannot write the checkpoint {out / 'checkpoints' / 'last.pt'}: no space left on the device" in line
    )
    assert "(step 1); resume with: hqm train" in line
    assert step_of(out / "checkpoints" / "last.pt") == 1
    assert not list((out / "checkpoints").glob(".*tmp*"))
    torch.set_grad_enabled(True)


# -- corrupt, killed and malicious checkpoints ---------------------------------------------------


def test_resume_auto_skips_a_corrupt_checkpoint_and_removes_stale_temporaries(tiny_root, tmp_path, capsys):
    from hqm.config import load_config

    out = tmp_path / "run"
    cfg = load_config("qpic_r18_synthetic", run_overrides(tiny_root, out, "train.keep_last=3"))
    trainer = Trainer(cfg)
    for step in (1, 2, 3):  # the checkpoints of a run's first steps (the training itself is not needed)
        trainer.step = step
        trainer.save("last.pt")
    trainer.run_lock.release()
    folder = out / "checkpoints"
    # last.pt and its hard-linked step copy damaged on the disk, and a write killed mid-way
    data = (folder / "last.pt").read_bytes()
    (folder / "last.pt").unlink()
    (folder / "step_0000003.pt").unlink()
    (folder / "last.pt").write_bytes(data[: len(data) // 3])
    (folder / "step_0000003.pt").write_bytes(b"")
    (folder / ".last.pt.tmp12345").write_bytes(data[:100])
    path, ckpt = resolve_resume("auto", out)
    assert path == str(folder / "step_0000002.pt") and ckpt["step"] == 2
    err = capsys.readouterr().err
    assert f"skipping {folder / 'last.pt'}: " in err and "truncated or damaged" in err
    assert f"skipping {folder / 'step_0000003.pt'}: " in err and "empty (0 bytes)" in err
    trainer = Trainer(cfg, resume="auto")
    assert trainer.step == 2 and not (folder / ".last.pt.tmp12345").exists()
    assert (folder / "step_0000001.pt").is_file() and (folder / "last.pt").is_file()  # nothing else touched
    trainer.run_lock.release()
    # a checkpoint named explicitly is not replaced by another: its problem is the error
    assert main(["train", str(out / "config.yaml"), "--resume", str(folder / "last.pt")]) == 1
    assert "truncated or damaged" in last_line(capsys)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3, "payload": _Evil(str(marker))}, evil)
    for argv in (["train", "qpic_r18_synthetic", "--resume", str(evil)], ["eval", str(evil)]):
        assert main(argv) == 1
        line = last_line(capsys)
        assert f"refusing to load {evil}" in line and "system" in line
    assert not marker.exists()


# -- torchrun elastic restarts -------------------------------------------------------------------


def test_elastic_restart_resumes_its_own_run_and_only_its_own(tiny_root, tmp_path, monkeypatch):
    from hqm.config import load_config
    from hqm.engine.rundir import RunDirError

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    out = tmp_path / "run"
    cfg = load_config("qpic_r18_synthetic", run_overrides(tiny_root, out, "train.max_steps=5"))
    first = Trainer(cfg)  # attempt 0 claims the folder for this launch
    first.save("last.pt")
    first.run_lock.release()  # ... and dies
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    restarted = Trainer(cfg)  # no --resume given: the restart resumes by itself
    assert restarted.saved_step == 0 and (out / "checkpoints" / "last.pt").is_file()
    restarted.run_lock.release()
    # a restart of another launch, or a first attempt, into a folder holding a run is refused
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
    with pytest.raises(RunDirError, match="already holds a training run"):
        Trainer(cfg)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    with pytest.raises(RunDirError, match="already holds a training run"):
        Trainer(cfg)


# -- real processes (slow) -----------------------------------------------------------------------

CHILD = Path(__file__).with_name("fault_child.py")


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HQM_TEST_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(CHILD.parent), env.get("PYTHONPATH", "")])
    return env


def run_child(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHILD), *args], env=child_env(**env), capture_output=True, text=True, timeout=900
    )


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_sigterm_from_outside_then_resume_equals_an_uninterrupted_run(tiny_root, tmp_path):
    """A real SIGTERM sent by another process once the run reports step 2; the resumed run ends
    bit-identical to an uninterrupted one (dropout, AJL mining, one thread each)."""
    extra = [
        "train.max_steps=6",
        "train.checkpoint_every_steps=0",
        "model.dropout=0.1",
        "mining.strategy=ajl",
    ]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), *hqm_train(tiny_root, out, *extra)],
        env=child_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stderr:  # the run's own log: no sleeping, no timing assumption
        lines.append(line)
        if " step 2/6 " in line:
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=900) == 143, "".join(lines)
    assert "hqm train: stopped by SIGTERM after step" in lines[-1]
    k = step_of(out / "checkpoints" / "last.pt")
    assert 2 <= k < 6
    resumed = run_child(["train", str(out / "config.yaml"), "--resume", str(out)])
    assert resumed.returncode == 0, resumed.stderr
    full = tmp_path / "full"
    assert run_child(hqm_train(tiny_root, full, *extra)).returncode == 0
    assert same_weights(out / "checkpoints" / "last.pt", full / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_sigkill_in_the_middle_of_a_checkpoint_write(tiny_root, tmp_path):
    """The process dies (SIGKILL) with the third checkpoint half written: the previous checkpoint is
    intact, the next start removes the leftover and --resume auto ends where an uninterrupted run
    does."""
    out = tmp_path / "killed"
    extra = ["train.max_steps=4", "model.dropout=0.1"]
    killed = run_child(hqm_train(tiny_root, out, *extra), HQM_FAULT="sigkill_in_write:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    folder = out / "checkpoints"
    leftovers = list(folder.glob(".last.pt.tmp*"))
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size
    assert step_of(folder / "last.pt") == 2
    resumed = run_child(hqm_train(tiny_root, out, *extra, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr
    assert "removed temporary checkpoint files of a write that never finished" in resumed.stderr
    assert not list(folder.glob(".*tmp*")) and step_of(folder / "last.pt") == 4
    full = tmp_path / "full"
    assert run_child(hqm_train(tiny_root, full, *extra)).returncode == 0
    assert same_weights(folder / "last.pt", full / "checkpoints" / "last.pt")


@pytest.mark.slow
def test_torchrun_restart_resumes_from_the_run_directory(tiny_root, tmp_path):
    """Two gloo ranks under torchrun --max-restarts 1; rank 1 crashes once at step 3. The elastic agent
    restarts both, which resume from the step-2 checkpoint by themselves and finish."""
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--master-addr",  # static rendezvous: c10d's keep-alive times out on a loaded 2-core machine
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        str(CHILD),
        *hqm_train(tiny_root, out, "train.max_steps=4", "train.batch_size=1"),
    ]
    done = subprocess.run(
        cmd, env=child_env(HQM_FAULT="crash_once:1:3"), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stderr.count("torchrun restart 1 of this launch: resuming from") == 1  # rank 0 says it
    assert step_of(out / "checkpoints" / "last.pt") == 4
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "eval"] == [4]
