"""Group DETR (model.group_detr = K): K - 1 extra query groups at training time, each matched
one-to-one on its own; nothing changes at evaluation or for K = 1 (released checkpoints)."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, tiny_detector_cfg
from hqm.config import ConfigError
from hqm.detectors import build_criterion, build_model
from hqm.models.detector import QueryGroup
from hqm.models.group_criterion import HungarianAssignment

GROUPED = ["qpic", "cdn"]


@pytest.mark.parametrize("detector", GROUPED)
def test_extra_groups_are_decoded_at_training_time_only(batch, detector):
    torch.manual_seed(0)
    model = build_model(tiny_detector_cfg(detector, ["model.group_detr=3"]), NUM_OBJ, NUM_VERB)
    images, masks, targets = batch
    nq = model.num_queries
    assert model.group_query_embed.weight.shape == (2 * nq, model.hidden_dim)
    out = model.train()(images, masks, targets)
    group = out["groups"]["group_detr"]
    assert group.assignment == HungarianAssignment(repeat=2)
    assert group.outputs["pred_obj_logits"].shape == (2 * 2, nq, NUM_OBJ + 1)
    assert len(group.outputs["aux_outputs"]) == len(out["aux_outputs"])
    assert "groups" not in model.eval()(images, masks)


@pytest.mark.parametrize("detector", GROUPED)
def test_evaluation_outputs_equal_the_same_weights_without_groups(batch, detector):
    torch.manual_seed(0)
    grouped = build_model(tiny_detector_cfg(detector, ["model.group_detr=4"]), NUM_OBJ, NUM_VERB).eval()
    plain = build_model(tiny_detector_cfg(detector), NUM_OBJ, NUM_VERB).eval()
    state = grouped.state_dict()
    extra = {k for k in state if k.startswith("group_query_embed")}
    assert extra == {"group_query_embed.weight"}  # the only new parameter: K = 1 files load as before
    plain.load_state_dict({k: v for k, v in state.items() if k not in extra})
    images, masks, _ = batch
    a, b = grouped(images, masks), plain(images, masks)
    for key in ("pred_obj_logits", "pred_verb_logits", "pred_sub_boxes", "pred_obj_boxes"):
        assert torch.equal(a[key], b[key])


def test_one_group_adds_no_parameter():
    model = build_model(tiny_detector_cfg("qpic"), NUM_OBJ, NUM_VERB)
    assert model.group_detr == 1 and not hasattr(model, "group_query_embed")
    assert not any(k.startswith("group_query_embed") for k in model.state_dict())


@pytest.mark.parametrize("query_type", ["embed", "gaussian"])
def test_group_loss_is_the_sum_of_each_group_matched_and_decoded_on_its_own(batch, query_type):
    """The stacked decode with repeated targets equals decoding every group alone, matching it with
    the criterion's matcher and supervising all its queries (unmatched ones as "no object")."""
    torch.manual_seed(0)
    extra = ["model.group_detr=3", f"model.query_type={query_type}"]
    cfg = tiny_detector_cfg("qpic", extra + (["model.box_refine=true"] if query_type != "embed" else []))
    model = build_model(cfg, NUM_OBJ, NUM_VERB).train()
    criterion = build_criterion(cfg, NUM_OBJ)
    images, masks, targets = batch
    out = model(images, masks, targets)
    total, logs = criterion(out, targets)

    enc = model.encode(images, masks)
    nq, b = model.num_queries, images.shape[0]
    expected = 0.0
    per_term: dict[str, float] = {}
    for g in range(model.group_detr):
        weight = model.query_embed.weight if g == 0 else model.group_query_embed.weight[(g - 1) * nq : g * nq]
        alone = model.decode(enc, QueryGroup(weight[None].expand(b, -1, -1)))
        g_total, g_logs = criterion(alone, targets)
        expected = expected + g_total
        if g > 0:
            for k, v in g_logs.items():
                per_term[k] = per_term.get(k, 0.0) + float(v.detach())
    assert torch.allclose(total, expected, rtol=1e-4, atol=1e-5)
    for k, v in per_term.items():
        assert logs[f"group_detr/{k}"].item() == pytest.approx(v, rel=1e-4, abs=1e-6)


def test_group_queries_are_trained(batch):
    torch.manual_seed(0)
    cfg = tiny_detector_cfg("cdn", ["model.group_detr=2"])
    model = build_model(cfg, NUM_OBJ, NUM_VERB).train()
    images, masks, targets = batch
    loss, _ = build_criterion(cfg, NUM_OBJ)(model(images, masks, targets), targets)
    loss.backward()
    assert model.group_query_embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "extra, match",
    [
        (["model.group_detr=0"], r"model.group_detr=0 is out of range: it must be >= 1"),
        (["model.detector=hotr", "model.group_detr=2"], r"model.group_detr=2 \(Group DETR\) is built for"),
        (
            ["model.detector=cdn", "model.group_detr=2", "loss.reweight.obj=true"],
            r"model.group_detr=2 cannot be combined with loss.reweight",
        ),
    ],
)
def test_config_refuses_what_group_detr_does_not_support(extra, match):
    with pytest.raises(ConfigError, match=match):
        tiny_detector_cfg("qpic", extra)
