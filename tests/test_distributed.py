"""DDP on the CPU (gloo): 2 ranks x batch 2 train exactly like 1 process x batch 4, every rank holds
the same parameters, ``torchrun -m hqm train`` works with AJL mining, and a 2-rank evaluation
(gather + de-duplication by file name) equals the single-process one."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.engine.checkpoint import load_checkpoint
from hqm.engine.trainer import Trainer
from test_engine_train import exact_cfg, final_weights, max_abs_diff


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, root: str, out: str, extra: list[str]) -> None:
    """One DDP rank (env:// rendezvous on localhost): train, then dump this rank's parameters."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    torch.set_num_threads(1)  # two ranks share the two cores
    trainer = Trainer(exact_cfg(root, Path(out), *extra))
    trainer.fit()  # destroys the process group at the end
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")


def test_two_gloo_ranks_equal_one_process(tiny_root, tmp_path):
    steps = ["train.max_steps=3"]
    Trainer(exact_cfg(tiny_root, tmp_path / "single", "train.batch_size=4", *steps)).fit()
    out = tmp_path / "ddp"
    # forked ranks inherit the imported torch / torchvision instead of importing them again (~6 s each)
    mp.start_processes(
        _rank_worker,
        args=(2, free_port(), str(tiny_root), str(out), ["train.batch_size=2", *steps]),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0), "ranks diverged"
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 3
    diff = max_abs_diff(final_weights(tmp_path / "single"), r0)
    print(f"DDP: max |2 ranks x batch 2 - 1 process x batch 4| = {diff:.3g}")
    assert diff < 1e-5


def torchrun(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "hqm",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_torchrun_cli_with_ajl_mining_and_distributed_eval(tiny_root, tmp_path, capsys):
    """Two torchrun launches of two ranks each: 34 s of the default run on a 2-core AVX2 machine
    (six interpreters importing torch); test_two_gloo_ranks_equal_one_process keeps DDP training and
    test_eval_io's two-rank gather keeps distributed evaluation in the default run."""
    from hqm.cli import main

    out = tmp_path / "ajl"
    common = TINY_OVERRIDES + TINY_DATA_64 + [f"data.root={tiny_root}", "eval.batch_size=3"]
    # AJL alternates GBS / AMM: the idle miner's parameters get no gradient unless zero-touched
    torchrun(
        [
            "train",
            "qpic_r18_synthetic",
            *common,
            f"train.output_dir={out}",
            "train.max_steps=3",
            "train.batch_size=2",
            "train.log_every=1",
            "mining.strategy=ajl",
            "--json",
        ]
    )
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["kind"] == "train"]
    assert [e["mining"] for e in train] == ["gbs", "amm", "gbs"]  # lock-step schedule
    assert "gbs/loss_verb_ce" in train[0] and "amm/loss_verb_ce" in train[1]

    # evaluation: 8 test images over 2 ranks x batch 3 (padded by repetition) == one process
    weights = out / "checkpoints" / "last.pt"
    ddp_file, single_file = tmp_path / "ddp.json", tmp_path / "single.json"
    proc = torchrun(
        [
            "eval",
            str(out / "config.yaml"),
            f"weights={weights}",
            "--json",
            "--save-predictions",
            str(ddp_file),
        ]
    )
    # only rank 0 prints: exactly one JSON line (both ranks printing interleaved them before)
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1, proc.stdout
    ddp_metrics = json.loads(json_lines[0])
    argv = [
        "eval",
        str(out / "config.yaml"),
        f"weights={weights}",
        "--json",
        "--save-predictions",
        str(single_file),
    ]
    assert main(argv) == 0
    single = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ddp_metrics == single
    # the saved file holds every test image once, gathered from both ranks, in annotation order
    ddp_saved, single_saved = json.loads(ddp_file.read_text()), json.loads(single_file.read_text())
    assert len(single_saved) == 8
    assert [r["file_name"] for r in ddp_saved] == [r["file_name"] for r in single_saved]
    # every image runs unpadded with images of its own size (eval.batching=same_size; here 8 sizes), so
    # the ranks' batches differ from the single process's but its inputs do not; torchrun's processes
    # run 1 thread each, this one more: kernels round differently (7e-8 on scores here), nothing more
    for a, b in zip(ddp_saved, single_saved, strict=True):
        boxes = [[p["bbox"] for p in r["predictions"]] for r in (a, b)]
        scores = [[h["score"] for h in r["hoi_prediction"]] for r in (a, b)]
        assert np.allclose(*boxes, rtol=0, atol=1e-4) and np.allclose(*scores, rtol=0, atol=1e-6)
    torch.set_grad_enabled(True)
