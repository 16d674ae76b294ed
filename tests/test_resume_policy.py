"""--resume with changed settings: schedule and lengths are applied (and logged), model / data / batch
geometry / seed / mining strategy are refused by name, launch-only settings have no effect."""

from __future__ import annotations

import pytest
import yaml

from hqm.config import load_config
from hqm.engine.resume_policy import check_compatible
from hqm.engine.trainer import Trainer
from test_engine_train import exact_cfg


def test_every_class_of_key():
    old = load_config("qpic_r18_synthetic")
    applied = [
        "train.lr_drop=2",
        "train.epochs=20",
        "train.max_steps=7",
        "eval.max_dets=50",
        "loss.eos_coef=0.2",
    ]
    changes = check_compatible(
        old, load_config("qpic_r18_synthetic", applied + ["data.num_workers=2"]), "x.pt"
    )
    assert [k for k, _, _ in changes["applied"]] == [
        "loss.eos_coef",
        "train.epochs",
        "train.max_steps",
        "train.lr_drop",
        "eval.max_dets",
    ]
    assert changes["no_effect"] == [("data.num_workers", 0, 2)]
    refused = [
        "model.dec_layers=2",
        "data.scales=[96]",
        "data.root=elsewhere",
        "mining.strategy=ajl",
        "train.batch_size=4",
        "train.accumulate=2",
        "train.seed=1",
    ]
    for override in refused:
        with pytest.raises(ValueError, match=f"cannot resume from x.pt: {override.split('=')[0]} "):
            check_compatible(old, load_config("qpic_r18_synthetic", [override]), "x.pt")
    with pytest.raises(ValueError, match="model.dec_layers 3 -> 2, train.seed 42 -> 1 \\(that run's value"):
        check_compatible(
            old, load_config("qpic_r18_synthetic", ["model.dec_layers=2", "train.seed=1"]), "x.pt"
        )


def test_resume_applies_a_new_schedule_and_refuses_a_new_model(tiny_root, tmp_path):
    """Before: a new train.lr_drop on --resume kept the old schedule while config.yaml said the new
    one. Now the lr follows the new lr / lr_drop from the restored step on, and the restored
    optimiser takes the new weight decay."""
    out = tmp_path / "run"
    base = ["train.batch_size=2", "train.lr=2e-4", "train.lr_backbone=2e-4", "train.lr_drop=5"]
    first = Trainer(exact_cfg(tiny_root, out, *base))
    spe = first.steps_per_epoch
    first.epoch, first.step = 3, 3 * spe  # three epochs done
    first.save("last.pt")
    first.run_lock.release()
    with pytest.raises(ValueError, match="model.hidden_dim 32 -> 64"):
        Trainer(exact_cfg(tiny_root, out, *base, "model.hidden_dim=64"), resume="auto")
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["hidden_dim"] == 32  # untouched

    new = base + ["train.lr_drop=2", "train.lr=3e-4", "train.weight_decay=0.05"]
    resumed = Trainer(exact_cfg(tiny_root, out, *new), resume="auto")
    rest, backbone = resumed.optimizer.param_groups
    assert resumed.epoch == 3 and resumed.step == 3 * spe
    resumed.lr_schedule.apply(resumed.optimizer, resumed.base_lrs, resumed.step)  # as train_step does
    assert rest["lr"] == pytest.approx(3e-5) and backbone["lr"] == pytest.approx(2e-5)  # 0.1 x base
    assert rest["weight_decay"] == backbone["weight_decay"] == 0.05
    resumed.lr_schedule.apply(resumed.optimizer, resumed.base_lrs, 4 * spe)  # epoch 4: second drop
    assert rest["lr"] == pytest.approx(3e-6)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["lr_drop"] == 2
    log = (out / "log.txt").read_text()
    assert "applied from now on: train.lr 0.0002 -> 0.0003" in log and "train.lr_drop 5 -> 2" in log
    resumed.run_lock.release()
