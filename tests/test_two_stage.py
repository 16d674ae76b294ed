"""model.two_stage: encoder pair proposals (one more training group, matched one-to-one over every
token) and query selection (the learnable queries start at the best proposals' centres)."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, TINY_OVERRIDES, tiny_detector_cfg
from hqm.config import ConfigError, load_config
from hqm.detectors import build_criterion, build_model
from hqm.models import build_matcher
from hqm.models.detector import ENCODER_PROPOSALS, QueryGroup
from hqm.models.encoder_proposals import EncoderProposals
from hqm.models.group_criterion import HungarianAssignment

TWO_STAGE = ["model.query_type=gaussian", "model.box_refine=true", "model.two_stage=true"]


def _model(extra=()):
    torch.manual_seed(0)
    cfg = tiny_detector_cfg("qpic", TWO_STAGE + list(extra))
    return cfg, build_model(cfg, NUM_OBJ, NUM_VERB)


def test_proposals_are_a_training_group_over_every_token(batch):
    _, model = _model()
    images, masks, targets = batch
    out = model.train()(images, masks, targets)
    group = out["groups"][ENCODER_PROPOSALS]
    assert group.assignment == HungarianAssignment()
    enc = model.encode(images, masks)
    hw = enc.memory.shape[1]
    assert hw == 6 * 8  # 96 x 128 at stride 16
    assert group.outputs["pred_obj_logits"].shape == (2, hw, NUM_OBJ + 1)
    assert group.outputs["pred_verb_logits"].shape == (2, hw, NUM_VERB)
    assert group.outputs["pred_sub_boxes"].shape == group.outputs["pred_obj_boxes"].shape == (2, hw, 4)
    assert "aux_outputs" not in group.outputs
    assert "groups" not in model.eval()(images, masks)  # evaluation: proposals only select queries


def test_padding_tokens_are_never_matched_and_carry_no_gradient(batch):
    cfg, model = _model()
    images, masks, targets = batch
    enc = model.train().encode(images, masks)
    props = enc.shared[ENCODER_PROPOSALS]
    pad = enc.mask
    assert pad[1].any() and not pad[0].any()
    assert (props["pred_obj_logits"][pad].argmax(-1) == NUM_OBJ).all()  # "no object"
    assert (props["pred_sub_boxes"][pad][:, :2] > 1).all() and (props["pred_obj_boxes"][pad][:, :2] > 1).all()
    matched = build_matcher(cfg.loss)(props, targets)[1][0]
    assert not pad[1, matched].any()
    padded_sum = sum(props[k][pad].float().sum() for k in props)
    grads = torch.autograd.grad(padded_sum, list(model.encoder_proposals.parameters()), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def test_queries_start_at_the_best_valid_proposals_centres(batch):
    _, model = _model()
    images, masks, _ = batch
    model.eval()
    enc = model.encode(images, masks)
    props = enc.shared[ENCODER_PROPOSALS]
    queries = model.learnable_queries(enc)
    nq = model.num_queries
    assert queries.reference.shape == (2, nq, 4) and not queries.reference.requires_grad
    assert torch.equal(queries.pos, model.query_embed.weight[None].expand(2, -1, -1))  # mixed selection
    score = props["pred_obj_logits"].softmax(-1)[..., :-1].max(-1).values
    for i in range(2):
        valid = (~enc.mask[i]).nonzero().flatten()
        best = valid[score[i, valid].argsort(descending=True)[:nq]]
        expected = torch.cat([props["pred_sub_boxes"][i, best, :2], props["pred_obj_boxes"][i, best, :2]], -1)
        assert torch.allclose(queries.reference[i], expected)
    # the decoder's first layer uses exactly these points
    direct = model.decode(enc, QueryGroup(queries.pos, reference=queries.reference))
    assert torch.equal(model(images, masks)["pred_sub_boxes"], direct["pred_sub_boxes"])


def test_the_decoder_loss_does_not_reach_the_proposals_through_the_reference(batch):
    cfg, model = _model()
    images, masks, targets = batch
    model.train()
    criterion = build_criterion(cfg, NUM_OBJ)
    out = model(images, masks, targets)
    del out["groups"]
    total, _ = criterion(out, targets)
    grads = torch.autograd.grad(total, list(model.encoder_proposals.parameters()), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


def test_training_supervises_proposals_backbone_and_decoder(batch):
    cfg, model = _model()
    images, masks, targets = batch
    criterion = build_criterion(cfg, NUM_OBJ)
    total, logs = criterion(model.train()(images, masks, targets), targets)
    assert torch.isfinite(total)
    for k in ("loss_obj_ce", "loss_verb_ce", "loss_sub_bbox", "loss_obj_giou"):
        assert f"{ENCODER_PROPOSALS}/{k}" in logs and torch.isfinite(logs[f"{ENCODER_PROPOSALS}/{k}"])
        assert f"{ENCODER_PROPOSALS}/{k}_0" not in logs  # one layer: no auxiliary outputs
    total.backward()
    for p in (
        model.encoder_proposals.obj_class_embed.weight,
        model.encoder_proposals.sub_bbox_embed.layers[0].weight,
        model.backbone[0].body.conv1.weight,
        model.query_embed.weight,
    ):
        assert p.grad is not None and p.grad.abs().sum() > 0
    # DDP without find_unused_parameters: every parameter takes part (ref_point_head with a zero gradient)
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []


def test_off_adds_no_parameter():
    cfg = tiny_detector_cfg("qpic", ["model.query_type=gaussian"])
    model = build_model(cfg, NUM_OBJ, NUM_VERB)
    assert model.encoder_proposals is None
    assert not any(k.startswith("encoder_proposals") for k in model.state_dict())
    _, two = _model()
    added = set(two.state_dict()) - set(model.state_dict())
    assert added and all(k.startswith("encoder_proposals.") for k in added)
    assert set(model.state_dict()) < set(two.state_dict())


def test_queries_beyond_the_valid_tokens_start_at_the_image_centre():
    torch.manual_seed(0)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1, 4:] = True  # image 1: 4 valid tokens of 6
    props = EncoderProposals(16, NUM_OBJ, NUM_VERB)(torch.randn(2, 6, 16), mask, (2, 3))
    ref = EncoderProposals.select(props, mask, 8)  # more queries than tokens
    assert ref.shape == (2, 8, 4)
    valid = [6, 4]
    for i, n in enumerate(valid):
        centres = torch.cat([props["pred_sub_boxes"][i, :n, :2], props["pred_obj_boxes"][i, :n, :2]], -1)
        first = ref[i, :n]
        assert all((centres == r).all(-1).any() for r in first)  # every valid token, best first
        assert torch.equal(ref[i, n:], torch.full((8 - n, 4), 0.5))


def test_amm_copies_start_at_the_selected_points(batch):
    """AJL / AMM: the hard queries are copies of the learnable ones, reference points included."""
    _, model = _model(["mining.strategy=amm", "mining.amm.k=6", "mining.amm.queries=matched"])
    images, masks, targets = batch
    seen = []
    decode = model.decode
    model.decode = lambda enc, q, *a, **kw: seen.append(q) or decode(enc, q, *a, **kw)
    model.train()(images, masks, targets, mining=("amm",))
    learnable, copies = seen
    assert copies.reference is not None
    for i in range(2):
        n = int((~copies.mask[i]).sum())
        assert n > 0
        rows = copies.reference[i, :n]
        # every copy's reference point is one of the learnable queries' (matched ones, in order)
        assert all((learnable.reference[i] == r).all(-1).any() for r in rows)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.two_stage=true"], r"^model.two_stage=true needs reference points"),
        (
            ["model.box_refine=true", "model.two_stage=true"],  # the demo config with query_type=embed
            r"^model.box_refine=true and model.two_stage=true need reference points: set model.query_type",
        ),
        (
            ["model.detector=cdn", "model.two_stage=true"],
            r"model.two_stage=true is a QPIC option; model.detector=cdn needs model.two_stage=false$",
        ),
    ],
)
def test_config_refuses_what_two_stage_does_not_support(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, TINY_OVERRIDES + overrides)
    cfg = load_config(None, TINY_OVERRIDES)
    cfg.model.two_stage = True  # past the config check: the model keeps its own guard
    with pytest.raises(ValueError, match="model.two_stage selects reference points"):
        build_model(cfg, NUM_OBJ, NUM_VERB)


def test_predict_with_attention_maps_gives_the_plain_predictions(tmp_path):
    """``HOIDetector.predict(return_attention=True)`` encodes and decodes by itself: the queries must
    start at the selected proposals there too."""
    from hqm import HOIDetector
    from hqm.config import config_to_dict
    from hqm.data import build_meta
    from hqm.data.synthetic import generate
    from hqm.engine.checkpoint import save_checkpoint

    root = generate(tmp_path / "synth", preset="tiny")
    cfg = load_config(None, TINY_OVERRIDES + TWO_STAGE + ["data.dataset=synthetic", f"data.root={root}"])
    meta = build_meta(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
    state = {"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}
    save_checkpoint(tmp_path / "last.pt", {**state, "metrics": {}, "epoch": 1, "step": 1})
    detector = HOIDetector.from_checkpoint(tmp_path / "last.pt", device="cpu")
    image = torch.Generator().manual_seed(0)
    array = (torch.rand(90, 120, 3, generator=image) * 255).byte().numpy()
    (plain,) = detector.predict(array, top_k=10)
    (with_maps,), (maps,) = detector.predict(array, top_k=10, return_attention=True)
    assert len(plain) == len(with_maps) == len(maps) == 10
    assert torch.allclose(torch.as_tensor(plain.scores), torch.as_tensor(with_maps.scores))
    # pixels; the maps path computes attention explicitly (float rounding differs by ~1e-5 px)
    torch.testing.assert_close(
        torch.as_tensor(plain.sub_boxes), torch.as_tensor(with_maps.sub_boxes), rtol=1e-5, atol=1e-4
    )
