"""model.encoder_one2many: a training-only auxiliary pair head on the encoder tokens, each GT pair
matched to k tokens (H-DETR's one-to-many branch), its loss divided by k."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, TINY_OVERRIDES, tiny_detector_cfg
from hqm.config import ConfigError, load_config
from hqm.detectors import build_criterion, build_model
from hqm.models.detector import ENCODER_ONE2MANY, ENCODER_PROPOSALS, MinedGroup
from hqm.models.group_criterion import HungarianAssignment, repeat_pairs

TWO_STAGE = ["model.query_type=gaussian", "model.box_refine=true", "model.two_stage=true"]


def _model(extra=()):
    torch.manual_seed(0)
    cfg = tiny_detector_cfg("qpic", TWO_STAGE + list(extra))
    return cfg, build_model(cfg, NUM_OBJ, NUM_VERB)


def test_each_pair_is_matched_to_k_tokens_and_the_loss_is_divided_by_k(batch):
    cfg, model = _model(["model.encoder_one2many=3"])
    images, masks, targets = batch
    out = model.train()(images, masks, targets)
    group = out["groups"][ENCODER_ONE2MANY]
    assert group.assignment == HungarianAssignment(one_to_many=3)
    hw = model.encode(images, masks).memory.shape[1]
    assert group.outputs["pred_obj_logits"].shape == (2, hw, NUM_OBJ + 1)
    criterion = build_criterion(cfg, NUM_OBJ)
    # the matcher sees every GT pair three times: three distinct tokens per pair
    repeated = [repeat_pairs(t, 3) for t in targets]
    indices = criterion.matcher(group.outputs, repeated)
    for (q, j), t in zip(indices, targets):
        g = len(t["obj_labels"])
        assert len(q) == 3 * g and len(set(q.tolist())) == 3 * g
        assert sorted((j % g).tolist()) == sorted(list(range(g)) * 3)
    # the group's share of the total is its unweighted sum / k
    weights = criterion.weights
    total, logs = criterion(out, targets)
    without = {k: v for k, v in out.items() if k != "groups"}
    without["groups"] = {n: g for n, g in out["groups"].items() if n != ENCODER_ONE2MANY}
    rest, _ = criterion(without, targets)
    group_sum = sum(
        weights[k.split("/")[1]] * v for k, v in logs.items() if k.startswith(f"{ENCODER_ONE2MANY}/")
    )
    torch.testing.assert_close(total, rest + group_sum / 3)


def test_repeat_pairs_tiles_only_the_pair_keys(batch):
    _, _, targets = batch
    t = targets[0]
    r = repeat_pairs(t, 2)
    g = len(t["obj_labels"])
    for key in ("obj_labels", "verb_labels", "sub_boxes", "obj_boxes", "has_obj"):
        assert len(r[key]) == 2 * g and torch.equal(r[key][:g], t[key]) and torch.equal(r[key][g:], t[key])
    for key in set(t) - {"obj_labels", "verb_labels", "sub_boxes", "obj_boxes", "has_obj"}:
        assert r[key] is t[key]


def test_training_only_and_every_parameter_learns(batch):
    cfg, model = _model(["model.encoder_one2many=2"])
    images, masks, targets = batch
    criterion = build_criterion(cfg, NUM_OBJ)
    total, logs = criterion(model.train()(images, masks, targets), targets)
    assert f"{ENCODER_ONE2MANY}/loss_obj_ce" in logs and f"{ENCODER_PROPOSALS}/loss_obj_ce" in logs
    total.backward()
    assert model.encoder_aux.obj_class_embed.weight.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []
    model.eval()
    enc = model.encode(images, masks)
    assert ENCODER_ONE2MANY not in enc.shared  # inference never runs the head
    assert "groups" not in model(images, masks)


def test_inference_is_that_of_the_same_weights_without_the_head(batch):
    """The head only adds training signal: a model without it, given the other weights, predicts the same."""
    _, with_head = _model(["model.encoder_one2many=2"])
    _, plain = _model()
    state = {k: v for k, v in with_head.state_dict().items() if not k.startswith("encoder_aux.")}
    assert set(with_head.state_dict()) - set(state) and all(
        k.startswith("encoder_aux.") for k in set(with_head.state_dict()) - set(state)
    )
    plain.load_state_dict(state)
    images, masks, _ = batch
    a, b = with_head.eval()(images, masks), plain.eval()(images, masks)
    for k in ("pred_obj_logits", "pred_verb_logits", "pred_sub_boxes", "pred_obj_boxes"):
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_off_adds_no_parameter_and_no_group(batch):
    _, model = _model()
    assert model.encoder_aux is None and not any(k.startswith("encoder_aux") for k in model.state_dict())
    images, masks, targets = batch
    assert ENCODER_ONE2MANY not in model.train()(images, masks, targets)["groups"]


def test_works_without_two_stage(batch):
    cfg = tiny_detector_cfg("qpic", ["model.encoder_one2many=2"])  # embed queries, no proposals
    model = build_model(cfg, NUM_OBJ, NUM_VERB)
    images, masks, targets = batch
    out = model.train()(images, masks, targets)
    assert set(out["groups"]) == {ENCODER_ONE2MANY}
    assert isinstance(out["groups"][ENCODER_ONE2MANY], MinedGroup)
    total, _ = build_criterion(cfg, NUM_OBJ)(out, targets)
    assert torch.isfinite(total)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["model.encoder_one2many=1"],
            r"^model.encoder_one2many=1 is out of range: it must be 0 \(off\) or >= 2",
        ),
        (["model.encoder_one2many=-2"], r"^model.encoder_one2many=-2 is out of range"),
        (
            ["model.detector=cdn", "model.encoder_one2many=2"],
            r"model.encoder_one2many=2 is a QPIC option; model.detector=cdn needs model.encoder_one2many=0$",
        ),
        (
            ["model.encoder_one2many=2", "loss.reweight.obj=true"],
            r"^model.encoder_one2many=2 cannot be combined with loss.reweight",
        ),
    ],
)
def test_config_refuses_what_it_does_not_support(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, TINY_OVERRIDES + overrides)
