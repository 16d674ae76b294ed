"""The lr schedule (a pure function of the step) and the learning-curve plot."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from hqm.engine.curves import plot_curves
from hqm.engine.lr_schedule import LRSchedule, build_lr_schedule


def test_step_schedule_is_steplr_per_epoch():
    # DETR / QPIC: StepLR(lr_drop) stepped once per epoch, 10 steps an epoch
    s = LRSchedule("step", steps_per_epoch=10, total_steps=60, lr_drop=2)
    assert [s.factor(k) for k in (0, 19)] == [1.0, 1.0]
    assert s.factor(20) == pytest.approx(0.1) and s.factor(39) == pytest.approx(0.1)
    assert s.factor(40) == pytest.approx(0.01)
    assert LRSchedule("step", 10, 60, lr_drop=0).factor(59) == 1.0  # 0: never


def test_warmup_then_cosine_to_the_floor():
    s = LRSchedule("cosine", steps_per_epoch=10, total_steps=110, warmup_steps=10, min_lr_ratio=0.05)
    assert s.factor(0) == pytest.approx(0.1)  # (step + 1) / warmup
    assert s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(0.05 + 0.95 * 0.5)  # half-way down
    assert s.factor(110) == pytest.approx(0.05)
    assert all(s.factor(k) >= s.factor(k + 1) for k in range(10, 120))


def test_apply_sets_each_group_from_its_base_lr():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.1}])
    s = build_lr_schedule(
        SimpleNamespace(
            epochs=3, max_steps=0, lr_schedule="step", lr_drop=1, warmup_steps=0, min_lr_ratio=0.0
        ),
        steps_per_epoch=4,
    )
    assert s.total_steps == 12
    s.apply(opt, [1.0, 0.1], 5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.01])
    s.apply(opt, [1.0, 0.1], 0)  # a pure function of the step: going back restores the lr
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1.0, 0.1])


def test_plot_curves_from_run_files(tmp_path):
    assert plot_curves(tmp_path) is None  # nothing logged yet
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 9):
            rec = {"kind": "train", "step": step, "epoch": (step - 1) // 4, "loss": 10.0 / step}
            rec.update(loss_obj_ce=1.0, loss_obj_ce_0=2.0, lr=1e-4, mining="")
            f.write(json.dumps(rec) + "\n")
        f.write('{"kind": "train", "step": 9, "ep')  # a line cut by a kill is skipped
    (tmp_path / "results.csv").write_text("epoch,step,mAP_full,mean_max_recall\n1,4,0.1,0.2\n2,8,0.3,0.4\n")
    from hqm.engine.curves import _epoch_losses

    losses = _epoch_losses(tmp_path / "metrics.jsonl")
    assert set(losses) == {"loss", "loss_obj_ce"}  # aux-layer terms (ending in a digit) left out
    assert losses["loss"][0] == (1, pytest.approx((10 + 5 + 10 / 3 + 2.5) / 4))
    out = plot_curves(tmp_path)
    assert out == tmp_path / "curves.png" and out.stat().st_size > 1000
    assert not math.isnan(losses["loss"][1][1])
