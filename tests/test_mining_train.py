"""Two training steps through ``hqm.engine.trainer.Trainer`` for every strategy and variant."""

from __future__ import annotations

import json

import pytest

from conftest import DETECTOR_OVERRIDES, TINY_DATA_64, TINY_OVERRIDES
from hqm.config import load_config
from hqm.engine.trainer import Trainer

SMALL = TINY_DATA_64 + [
    "data.scales=[64,80]",
    "data.max_size=128",
    "train.max_steps=2",
    "train.log_every=1",
    "eval.batch_size=4",
    "mining.amm.k=8",
    "model.train_backbone_from=none",
]  # mining never touches the backbone: keep the steps cheap

RUNS = {
    "none": [],
    "gbs": [],
    "amm": [],
    "ajl": [],
    "pjl": [],
    "cjl": [],
    "ajl-official": [
        "mining.gbs.sampler=official",
        "mining.beta=0.8",
        "mining.ajl.reset_each_epoch=true",
        "mining.gbs.clip=pixel_inside",
        "loss.obj_box_norm=pairs_with_object",
    ],
    "ajl-start-amm": ["mining.ajl.start=amm"],
    "gbs-shift-none": ["mining.gbs.shift=none"],
    "gbs-gaussian": ["mining.gbs.shift=gaussian", "mining.gbs.iou_range=[0.5,0.7]"],
    "amm-bernoulli": ["mining.amm.mask=bernoulli"],
    "amm-per-row": ["mining.amm.mask=exact_count_per_row"],
    "amm-random": ["mining.amm.select=random"],
    "amm-self": ["mining.amm.reference=self"],
    "amm-learnable-target": ["mining.amm.target=learnable"],
    "amm-matched": ["mining.amm.queries=matched"],
    "amm-skip-norm": ["mining.amm.skip_final_norm=true"],
    "cjl-learnable": ["mining.cjl_reference=learnable"],
    "ajl-gaussian": ["model.query_type=gaussian", "model.box_refine=true"],
    "cjl-conditional": ["model.query_type=conditional"],
}


#: every other registered detector runs every strategy through the trainer (its ablation variants:
#: test_cdn.py, one forward / backward each)
DETECTOR_RUNS = [
    (det, run)
    for det in DETECTOR_OVERRIDES
    if det != "qpic"
    for run in ("none", "gbs", "amm", "ajl", "pjl", "cjl")
]


@pytest.mark.parametrize("detector, run", [("qpic", run) for run in RUNS] + DETECTOR_RUNS)
def test_two_training_steps(detector, run, tiny_root, tmp_path):
    strategy = run.split("-")[0]
    cfg = load_config(
        None,
        TINY_OVERRIDES
        + DETECTOR_OVERRIDES[detector]
        + SMALL
        + RUNS[run]
        + [f"data.root={tiny_root}", f"mining.strategy={strategy}", f"train.output_dir={tmp_path}"],
    )
    trainer = Trainer(cfg)
    trainer.train_one_epoch()  # the step loop; evaluation for the other detectors, QPIC's elsewhere
    if detector != "qpic" and run in ("none", "ajl"):
        metrics = trainer.evaluate_and_record()
        assert "mAP_full" in metrics
    trainer.writer.close()
    assert trainer.step == 2
    logs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logs if r["kind"] == "train"]
    assert len(train) == 2
    mined = [r.get("mining") for r in train]
    expected = {"none": ["", ""], "ajl": ["gbs", "amm"], "pjl": ["gbs,amm"] * 2}.get(strategy, [strategy] * 2)
    if run == "ajl-start-amm":
        expected = ["amm", "gbs"]
    assert mined == expected
    for record, active in zip(train, expected):
        for group in filter(None, active.split(",")):
            if run != "amm-learnable-target":
                assert any(k.startswith(f"{group}/loss_") for k in record), record


def test_mining_epochs_stops_the_hard_queries_after_n_epochs(tiny_root, tmp_path):
    """``mining.epochs=1``: AJL alternates through the first epoch, no miner runs from the second."""
    cfg = load_config(
        None,
        TINY_OVERRIDES
        + SMALL
        + [
            f"data.root={tiny_root}",
            "mining.strategy=ajl",
            "mining.epochs=1",
            "train.epochs=2",
            "train.max_steps=0",
            "eval.every=0",
            f"train.output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(cfg)
    spe = trainer.steps_per_epoch
    assert spe >= 2 and trainer.schedule.stop_step == spe
    trainer.fit()
    trainer.writer.close()
    train = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    mined = [r["mining"] for r in train if r["kind"] == "train"]
    assert mined == [("gbs", "amm")[i % 2] for i in range(spe)] + [""] * spe
    # the first step without mining, counted from 1 as in metrics.jsonl; no hard-query loss after it
    assert [r["step"] for r in train if r["kind"] == "train" and not r["mining"]][0] == spe + 1
    assert f"mining.epochs=1: no hard queries from step {spe + 1} on" in (tmp_path / "log.txt").read_text()
    after = [r for r in train if r["kind"] == "train" and r["step"] > spe]
    assert after and not any(k.startswith(("gbs/", "amm/")) for r in after for k in r)


def test_no_stop_line_without_mining_epochs(tiny_root, tmp_path):
    cfg = load_config(
        None,
        TINY_OVERRIDES
        + SMALL
        + [f"data.root={tiny_root}", "mining.strategy=gbs", f"train.output_dir={tmp_path}"],
    )
    trainer = Trainer(cfg)
    trainer.train_one_epoch()
    trainer.writer.close()
    assert "no hard queries" not in (tmp_path / "log.txt").read_text()
