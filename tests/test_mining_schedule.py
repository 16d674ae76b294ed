"""Joint learning (AJL / PJL / CJL / single), miner construction, and mining never running at eval."""

from __future__ import annotations

import pytest
import torch

from conftest import DETECTORS, NUM_OBJ, NUM_VERB, TINY_OVERRIDES, tiny_detector_cfg
from hqm.config import load_config
from hqm.detectors import build_criterion as build_detector_criterion
from hqm.detectors import build_model
from hqm.mining import build_miners
from hqm.mining.amm import AMMMiner
from hqm.mining.cjl import CJLMiner
from hqm.mining.gbs import GBSMiner
from hqm.mining.schedule import MiningSchedule, build_schedule
from hqm.models import FixedAssignment, build_matcher


def test_ajl_alternates_by_global_step():
    s = MiningSchedule("ajl", 1.0)
    assert [s.active(i) for i in range(5)] == [("gbs",), ("amm",), ("gbs",), ("amm",), ("gbs",)]
    s = MiningSchedule("ajl", 1.0, start="amm")
    assert [s.active(i)[0] for i in range(4)] == ["amm", "gbs", "amm", "gbs"]


def test_ajl_reset_each_epoch_restarts_from_start():
    s = MiningSchedule("ajl", 0.8, start="gbs", reset_each_epoch=True)
    # an epoch of 3 steps starting at global step 3: restarts with GBS although step 3 is odd
    assert [s.active(i, 3)[0] for i in range(3, 6)] == ["gbs", "amm", "gbs"]
    assert [s.active(i, 0)[0] for i in range(3, 6)] == ["amm", "gbs", "amm"]
    assert [MiningSchedule("ajl").active(i, 3)[0] for i in range(3, 6)] == ["amm", "gbs", "amm"]


def test_mining_epochs_stops_every_strategy_at_its_step(tiny_cfg):
    s = MiningSchedule("ajl", stop_step=4)
    assert [s.active(i) for i in range(6)] == [("gbs",), ("amm",), ("gbs",), ("amm",), (), ()]
    assert MiningSchedule("pjl", stop_step=1).active(1) == () and MiningSchedule("gbs").active(10**6) == (
        "gbs",
    )
    tiny_cfg.mining.strategy, tiny_cfg.mining.epochs = "amm", 3
    assert build_schedule(tiny_cfg.mining, steps_per_epoch=5).stop_step == 15
    with pytest.raises(ValueError, match="steps per epoch"):
        build_schedule(tiny_cfg.mining)
    tiny_cfg.mining.epochs = 0
    assert build_schedule(tiny_cfg.mining).stop_step == 0


def test_weights_pjl_half_beta_and_single_strategies():
    assert MiningSchedule("pjl", 0.8).weights(("gbs", "amm")) == {"gbs": 0.4, "amm": 0.4}
    assert MiningSchedule("pjl", 0.8).active(7) == ("gbs", "amm")
    assert MiningSchedule("ajl", 0.8).weights(("amm",)) == {"amm": 0.8}
    assert MiningSchedule("cjl", 1.0).active(3) == ("cjl",)
    assert MiningSchedule("gbs").active(1) == ("gbs",) and MiningSchedule("amm").active(0) == ("amm",)
    assert MiningSchedule("none").active(0) == () and MiningSchedule("none").weights(()) == {}


@pytest.mark.parametrize(
    "strategy,kinds",
    [
        ("none", {}),
        ("gbs", {"gbs": GBSMiner}),
        ("amm", {"amm": AMMMiner}),
        ("ajl", {"gbs": GBSMiner, "amm": AMMMiner}),
        ("pjl", {"gbs": GBSMiner, "amm": AMMMiner}),
        ("cjl", {"cjl": CJLMiner}),
    ],
)
def test_build_miners_matches_the_schedule(tiny_cfg, strategy, kinds):
    tiny_cfg.mining.strategy = strategy
    miners = build_miners(
        tiny_cfg,
        build_model(load_config(None, TINY_OVERRIDES), NUM_OBJ, NUM_VERB),
        lambda: build_matcher(tiny_cfg.loss),
    )
    assert {k: type(v) for k, v in miners.items()} == kinds
    assert set(miners) == set(build_schedule(tiny_cfg.mining).miner_names)


def test_presets_resolve():
    paper = load_config("qpic_r50_hico_hqm")
    official = load_config("qpic_r50_hico_hqm_official")
    assert (paper.mining.strategy, paper.mining.beta) == ("ajl", 1.0)
    assert (paper.train.epochs, paper.train.lr_drop) == (80, 50)
    assert paper.mining.gbs.sampler == "per_box" and not paper.mining.ajl.reset_each_epoch
    assert (official.mining.beta, official.train.lr_drop) == (0.8, 55)
    assert official.mining.gbs.sampler == "official"
    assert (official.mining.gbs.clip, official.loss.obj_box_norm) == ("pixel_inside", "pairs_with_object")
    assert (paper.mining.gbs.clip, paper.loss.obj_box_norm) == ("image", "pairs")
    assert official.mining.ajl.reset_each_epoch and official.train.epochs == 80
    assert official.model.backbone == "resnet50" and official.data.dataset == "hico_det"


def _model(strategy, extra=(), detector="qpic"):
    torch.manual_seed(0)
    cfg = tiny_detector_cfg(detector, [f"mining.strategy={strategy}", "mining.amm.k=6", *extra])
    return build_model(cfg, NUM_OBJ, NUM_VERB), build_detector_criterion(cfg, NUM_OBJ)


@pytest.mark.parametrize(
    "detector, strategy, extra",
    [(d, s, ()) for d in DETECTORS for s in ("pjl", "cjl")]
    + [("qpic", "ajl", ("model.query_type=gaussian",))],
)
def test_evaluation_outputs_identical_with_and_without_miners(batch, detector, strategy, extra):
    images, masks, _ = batch
    plain, _ = _model("none", extra, detector)
    mined, _ = _model(strategy, extra, detector)
    missing, unexpected = mined.load_state_dict(plain.state_dict(), strict=False)
    assert all(k.startswith("miners.") for k in missing) and not unexpected

    def refuse(*_):
        raise AssertionError("a miner ran at evaluation")

    for m in mined.miners.values():
        m.register_forward_pre_hook(refuse)
    plain.eval(), mined.eval()
    with torch.no_grad():
        a, b = plain(images, masks), mined(images, masks)
    assert set(a) == set(b)
    for key in ("pred_obj_logits", "pred_verb_logits", "pred_sub_boxes", "pred_obj_boxes"):
        assert torch.equal(a[key], b[key])
    assert torch.equal(
        plain.inference(images, masks)["pred_verb_logits"], mined.inference(images, masks)["pred_verb_logits"]
    )


@pytest.mark.parametrize("detector", DETECTORS)
def test_pjl_runs_both_groups_independently_with_half_beta(batch, detector):
    images, masks, targets = batch
    model, crit = _model("pjl", detector=detector)
    model.train()
    out = model(images, masks, targets, mining=("gbs", "amm"))
    assert set(out["groups"]) == {"gbs", "amm"}
    s = MiningSchedule("pjl", 1.0)
    total, logs = crit(out, targets, 1.0, s.weights(s.active(0)))
    only, _ = crit({k: v for k, v in out.items() if k != "groups"}, targets, 1.0, {})
    per_group = {
        g: crit({**out, "groups": {g: out["groups"][g]}}, targets, 1.0, {g: 1.0})[0] - only
        for g in ("gbs", "amm")
    }
    torch.testing.assert_close(total, only + 0.5 * (per_group["gbs"] + per_group["amm"]))


def test_cjl_masks_gbs_queries_with_the_matched_learnable_reference(batch, masking_reference):
    images, masks, targets = batch
    model, crit = _model("cjl", ["mining.cjl_reference=learnable"])
    model.train()
    recorded = {}
    real_decode = model.decode

    def decode(enc, queries, hook=None, final_norm=True):
        if "learnable" not in recorded:
            recorded["learnable"] = hook
        return real_decode(enc, queries, hook, final_norm)

    model.decode = decode
    out = model(images, masks, targets, mining=("cjl",))
    group = out["groups"]["cjl"]
    assert isinstance(group.assignment, FixedAssignment)
    ref, learn = masking_reference["reference"], recorded["learnable"].scores
    last = group.learnable_indices[0]  # solved once in forward, handed to the criterion
    for i, (q, t) in enumerate(last):
        for layer in ref:
            torch.testing.assert_close(ref[layer][i, :, t], learn[layer][i, :, q])
    assert torch.isfinite(crit(out, targets, 1.0, {"cjl": 1.0})[0])


def test_cjl_self_reference_runs_an_unmasked_pass_first(batch):
    images, masks, targets = batch
    model, _ = _model("cjl")
    model.train()
    hooks = []
    real_decode = model.decode
    model.decode = lambda enc, queries, hook=None, final_norm=True: (
        hooks.append(type(hook).__name__) or real_decode(enc, queries, hook, final_norm)
    )
    model(images, masks, targets, mining=("cjl",))
    assert hooks == ["NoneType", "RecordAttention", "AttentionMasking"]
