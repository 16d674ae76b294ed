"""Kill-and-resume: ``hqm train`` killed with SIGKILL after a step checkpoint and resumed with
``--resume`` ends with exactly the weights of an uninterrupted run (deterministic CPU mode), with
dropout, trainable BatchNorm, AJL mining (GBS draws random shifts), batches cut from pools of 3
(``train.size_grouping``) and an lr drop crossed on the way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.engine.checkpoint import load_checkpoint


def run_args(root, out) -> list[str]:
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("model.dropout")] + [
        "model.dropout=0.1",
        *TINY_DATA_64,
        f"data.root={root}",
        "eval.batch_size=8",
        "train.epochs=2",
        "train.lr_schedule=step",  # the demo config's cosine has no drop to cross
        "train.warmup_steps=0",
        "train.amp=off",
        "train.lr_drop=1",
        "train.batch_size=4",
        "train.deterministic=true",
        "train.checkpoint_every_steps=2",
        "train.keep_last=2",
        "train.log_every=4",
        "mining.strategy=ajl",
        "train.size_grouping=3",  # a kill inside a pool of 3 batches resumes inside it
        f"train.output_dir={out}",
    ]
    return ["train", "qpic_r18_synthetic", *overrides]


def test_sigkill_then_resume_gives_the_uninterrupted_weights(tiny_root, tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hqm", *run_args(tiny_root, killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = killed / "checkpoints" / "last.pt"
    try:
        for _ in range(12000):  # bounded poll (at most ~2 minutes), not a timing assumption
            if last.is_file() or proc.poll() is not None:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    k = load_checkpoint(last)["step"]
    assert 2 <= k < 8, k
    assert main([*run_args(tiny_root, killed), "--resume", str(last)]) == 0

    full = tmp_path / "full"
    assert main(run_args(tiny_root, full)) == 0
    a = load_checkpoint(killed / "checkpoints" / "last.pt")
    b = load_checkpoint(full / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8 and a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    diff = max(
        (a["model"][n].double() - b["model"][n].double()).abs().max().item()
        for n in a["model"]
        if a["model"][n].numel()
    )
    print(f"resume: killed at step {k}, max |resumed - uninterrupted| = {diff:.3g}")
    assert all(torch.equal(a["model"][n], b["model"][n]) for n in a["model"])
    assert a["scheduler"] == b["scheduler"]
    lrs = [[g["lr"] for g in c["optimizer"]["param_groups"]] for c in (a, b)]
    assert lrs[0] == lrs[1]
    # step-stamped copies: the two newest are kept
    assert sorted(p.name for p in (killed / "checkpoints").glob("step_*.pt")) == [
        "step_0000006.pt",
        "step_0000008.pt",
    ]
    torch.set_grad_enabled(True)
