"""HOTR: the shared instance set, HO pointers, triplet matching, losses, post-processing, HQM through
the unchanged seams, configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, make_target, tiny_detector_cfg
from hqm.config import ConfigError
from hqm.detectors import build_criterion, build_matcher, build_model
from hqm.models.hotr_losses import pointer_targets
from hqm.models.postprocess import PostProcessHOTR
from hqm.structures import DatasetMeta
from test_mining_train import RUNS


def _hotr(extra=(), seed=0):
    torch.manual_seed(seed)
    cfg = tiny_detector_cfg("hotr", list(extra))
    return cfg, build_model(cfg, NUM_OBJ, NUM_VERB)


def test_pointers_are_cosine_similarities_over_tau(batch):
    images, masks, _ = batch
    cfg, model = _hotr(["model.hotr.tau=0.2"])
    out = model.eval()(images, masks)
    ni, nh = cfg.model.num_queries, cfg.model.hotr.num_hoi_queries
    assert out["pred_hidx"].shape == out["pred_oidx"].shape == (2, nh, ni)
    assert out["pred_actions"].shape == (2, nh, NUM_VERB + 1)
    assert out["pred_logits"].shape == (2, ni, NUM_OBJ + 1) and out["pred_boxes"].shape == (2, ni, 4)
    assert out["pred_hidx"].abs().max() <= 1 / 0.2 + 1e-5  # |cos| <= 1
    o = out["pred_oidx"].argmax(-1)
    assert torch.equal(out["pred_obj_boxes"], out["pred_boxes"][torch.arange(2)[:, None], o])
    assert len(out["inst_aux_outputs"]) == cfg.model.dec_layers - 1


def test_instance_set_is_computed_once_per_forward_for_every_group(batch):
    """Learnable, GBS and AMM groups point into the same instances: one instance-decoder call."""
    images, masks, targets = batch
    _, model = _hotr(["mining.strategy=pjl", "mining.amm.k=6"])
    calls = []
    model.detr.transformer.decoder.register_forward_hook(lambda *a: calls.append(1))
    out = model.train()(images, masks, targets, mining=("gbs", "amm"))
    assert len(calls) == 1 and set(out["groups"]) == {"gbs", "amm"}
    for g in out["groups"].values():
        assert torch.equal(g.outputs["pred_logits"], out["pred_logits"])


def test_pointer_matcher_batch_equals_single_and_handles_empty_targets(batch):
    images, masks, targets = batch
    cfg, model = _hotr()
    out = model.eval()(images, masks)
    matcher = build_matcher(cfg)
    both = matcher(out, targets)
    for i in range(2):
        single_out = {k: v[i : i + 1] for k, v in out.items() if torch.is_tensor(v)}
        single = matcher(single_out, [targets[i]])
        assert torch.equal(both[i][0], single[0][0]) and torch.equal(both[i][1], single[0][1])
        assert len(both[i][0]) == len(targets[i]["obj_labels"])
    idx = matcher(out, [make_target(0), make_target(2)])
    assert len(idx[0][0]) == 0 and len(idx[1][0]) == 2
    crit = build_criterion(cfg, NUM_OBJ)
    loss, logs = crit(out, [make_target(0), make_target(0)])
    assert torch.isfinite(loss) and logs["loss_hidx"] == 0 and logs["inst/loss_sub_bbox"] == 0


def test_pointer_targets_follow_the_instance_assignment_and_objectless_roles_point_at_the_human():
    t = make_target(2, has_obj=[True, False])  # instances: 2 humans, 1 object
    q = torch.tensor([5, 1, 3])
    k = torch.tensor([2, 0, 1])  # GT instance 2 <- query 5, 0 <- 1, 1 <- 3
    (p,) = pointer_targets([t], [(q, k)])
    assert p["sub_ptr"].tolist() == [1, 3]
    assert p["obj_ptr"].tolist() == [5, 3]  # the object-less role points at its human's query
    (p,) = pointer_targets([t], [(torch.tensor([1]), torch.tensor([0]))])
    assert p["sub_ptr"].tolist() == [1, -1] and p["obj_ptr"].tolist() == [-1, -1]


def test_pointer_cost_prefers_the_query_pointing_at_the_right_instances():
    cfg, _ = _hotr()
    matcher = build_matcher(cfg)
    t = dict(make_target(1), sub_ptr=torch.tensor([2]), obj_ptr=torch.tensor([0]))
    hidx = torch.zeros(1, 3, 4)
    oidx = torch.zeros(1, 3, 4)
    hidx[0, 1, 2] = oidx[0, 1, 0] = 10.0  # query 1 points at instance 2 (human) and 0 (object)
    out = {"pred_hidx": hidx, "pred_oidx": oidx, "pred_verb_logits": torch.zeros(1, 3, NUM_VERB)}
    assert matcher(out, [t])[0][0].tolist() == [1]


def test_gbs_queries_are_supervised_with_the_matched_instances_pointers(batch):
    images, masks, targets = batch
    cfg, model = _hotr(["mining.strategy=gbs"])
    crit = build_criterion(cfg, NUM_OBJ)
    out = model.train()(images, masks, targets, mining=("gbs",))
    g = out["groups"]["gbs"]
    assert g.outputs["pred_hidx"].shape[1] == max(len(t["obj_labels"]) for t in targets)
    loss, logs = crit(out, targets, 1.0, {"gbs": 1.0})
    for k in ("gbs/loss_hidx", "gbs/loss_oidx", "gbs/loss_act", "inst/loss_obj_ce"):
        assert torch.isfinite(logs[k]) and logs[k] > 0, k
    loss.backward()
    assert model.miners["gbs"].query_embed_sp[0].weight.grad.abs().sum() > 0


def test_amm_masks_only_the_interaction_decoder(batch, masking_reference):
    images, masks, targets = batch
    _, model = _hotr(["mining.strategy=amm", "mining.amm.k=6"])
    model.train()(images, masks, targets, mining=("amm",))
    ref = masking_reference["reference"]
    assert sorted(ref) == list(model.mining_layers) == [0, 1]
    assert ref[0].shape[2] == model.num_queries


@pytest.mark.parametrize("run", [r for r in RUNS if "query_type" not in " ".join(RUNS[r])])
def test_every_mining_variant_trains_on_hotr(run, batch):
    images, masks, targets = batch
    strategy = run.split("-")[0]
    extra = [x for x in RUNS[run] if "obj_box_norm" not in x]
    cfg, model = _hotr([f"mining.strategy={strategy}", "mining.amm.k=6", *extra])
    crit = build_criterion(cfg, NUM_OBJ)
    from hqm.mining.schedule import build_schedule

    schedule = build_schedule(cfg.mining)
    for step in range(2):
        active = schedule.active(step)
        model.zero_grad(set_to_none=True)
        out = model.train()(images, masks, targets, mining=active)
        idle = model.miner_parameters(exclude=active)
        loss, logs = crit(out, targets, cfg.mining.alpha, schedule.weights(active), idle_params=idle)
        loss.backward()
        assert torch.isfinite(loss)
        for group in out.get("groups", {}):
            assert f"{group}/loss_act" in logs
    grads = [p.grad for p in model.interaction_transformer.decoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def _meta(no_object: bool) -> DatasetMeta:
    objs = [f"o{i}" for i in range(NUM_OBJ)]
    return DatasetMeta(
        "toy",
        objs,
        [f"v{i}" for i in range(NUM_VERB)],
        np.ones((NUM_VERB, NUM_OBJ), bool),
        no_object_class=NUM_OBJ - 1 if no_object else None,
    )


def test_postprocess_takes_pair_boxes_and_classes_from_the_pointed_instances():
    big = 20.0
    logits = torch.full((1, 3, NUM_OBJ + 1), -big)
    logits[0, 0, 0] = logits[0, 1, 2] = logits[0, 2, 0] = big  # person, class 2, person
    boxes = torch.tensor([[[0.2, 0.2, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2], [0.5, 0.5, 0.4, 0.4]]])
    hidx = torch.full((1, 2, 3), -big)
    oidx = torch.full((1, 2, 3), -big)
    hidx[0, 0, 0] = oidx[0, 0, 1] = big  # query 0: human 0 -> object 1
    hidx[0, 1, 2] = oidx[0, 1, 2] = big  # query 1: human 2 -> itself (no object on V-COCO)
    actions = torch.full((1, 2, NUM_VERB + 1), -big)
    actions[0, 0, 3] = actions[0, 1, 1] = big
    out = {"pred_logits": logits, "pred_boxes": boxes, "pred_hidx": hidx, "pred_oidx": oidx}
    out["pred_actions"] = actions
    size = torch.tensor([[100, 200]])
    pp = PostProcessHOTR(_meta(no_object=True), max_dets=2)
    (p,) = pp(out, size, ["a.jpg"])
    assert p.verb_labels.tolist() == [3, 1] and np.allclose(p.scores, 1.0, atol=1e-4)
    np.testing.assert_allclose(p.sub_boxes[0], [20, 10, 60, 30], atol=1e-3)
    np.testing.assert_allclose(p.obj_boxes[0], [100, 50, 140, 70], atol=1e-3)
    assert p.obj_labels.tolist() == [2, NUM_OBJ - 1] and (p.obj_boxes[1] == 0).all()
    (p,) = PostProcessHOTR(_meta(no_object=False), max_dets=2)(out, size, ["a.jpg"])
    assert p.obj_labels.tolist() == [2, 0]  # HICO-DET: a person object, not "no object"


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.hotr.tau=0", "model.hotr.tau"),
        ("model.hotr.num_hoi_queries=0", "model.hotr.num_hoi_queries"),
        ("model.hotr.interaction_layers=0", "model.hotr.interaction_layers"),
        ("model.hotr.act_focal_alpha=1.5", "model.hotr.act_focal_alpha"),
        ("model.hotr.temperature=0.1", "model.hotr.temperature"),
    ],
)
def test_bad_hotr_config_values_give_one_clear_line(override, key):
    with pytest.raises(ConfigError) as e:
        tiny_detector_cfg("hotr", [override])
    assert key in str(e.value) and "\n" not in str(e.value)
