"""Spatial queries (model.query_type conditional / gaussian): reference points, the conditional
spatial query, Gaussian co-attention, relative boxes; mining and evaluation through them."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, TINY_OVERRIDES
from hqm.box_ops import relative_boxes
from hqm.config import ConfigError, load_config
from hqm.detectors import build_model
from hqm.models.position_encoding import PositionEmbeddingSine
from hqm.models.spatial_queries import SpatialQueries, key_positions, sine_embed


def test_sine_embed_at_a_point_equals_the_feature_map_encoding():
    # PositionEmbeddingSine puts pixel (i, j) of an H x W map at ((j + 1) / W, (i + 1) / H)
    h, w = 5, 7
    pos = PositionEmbeddingSine(16)(torch.zeros(1, h, w, dtype=torch.bool))[0]  # (32, H, W)
    for i, j in ((0, 0), (2, 3), (4, 6)):
        point = torch.tensor([(j + 1) / w, (i + 1) / h])
        assert torch.allclose(sine_embed(point, 16), pos[:, i, j], atol=1e-5)


def test_key_positions_are_normalised_by_the_unpadded_extent():
    mask = torch.zeros(2, 3, 4, dtype=torch.bool)
    mask[1, :, 2:] = True  # image 1: 2 valid columns, 3 rows
    mask[1, 2:, :] = True  # and 2 valid rows
    keys = key_positions(mask.flatten(1), (3, 4)).view(2, 3, 4, 2)
    assert torch.allclose(keys[0, 0, :, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    assert torch.allclose(keys[1, 0, :2, 0], torch.tensor([0.25, 0.75]))
    assert torch.allclose(keys[1, :2, 0, 1], torch.tensor([0.25, 0.75]))


def test_relative_boxes_centre_on_the_reference():
    ref = torch.tensor([[0.2, 0.7], [0.9, 0.1]])
    boxes = relative_boxes(torch.zeros(2, 4), ref)
    assert torch.allclose(boxes[:, :2], ref) and torch.allclose(boxes[:, 2:], torch.full((2, 2), 0.5))
    moved = relative_boxes(torch.tensor([[1.0, -1.0, 0.0, 0.0]]), ref[:1])
    assert moved[0, 0] > 0.2 and moved[0, 1] < 0.7  # a positive logit delta moves right, a negative up


def test_gaussian_heads_look_at_the_subject_and_the_object_points():
    sq = SpatialQueries(hidden_dim=16, nheads=4, gaussian=True)
    mask = torch.zeros(1, 8 * 8, dtype=torch.bool)
    keys = key_positions(mask, (8, 8))
    ref = torch.tensor([[[0.1, 0.1, 0.8, 0.6]]])  # subject top-left, object right
    bias = sq.gaussian_bias(torch.zeros(1, 1, 16), ref, keys)
    assert bias.shape == (1, 4, 1, 64)
    peak = bias[0, :, 0].argmax(-1)  # token index = row * 8 + col
    assert peak.tolist() == [0, 0, 4 * 8 + 6, 4 * 8 + 6]
    assert torch.allclose(bias.max(-1).values, torch.zeros(1, 4, 1), atol=0.2)  # log G ~ 0 at the centre


@pytest.mark.parametrize("query_type", ["conditional", "gaussian"])
def test_models_keep_the_output_contract_and_the_qpic_names(batch, query_type):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_OVERRIDES + [f"model.query_type={query_type}"])
    model = build_model(cfg, NUM_OBJ, NUM_VERB).eval()
    images, masks, _ = batch
    out = model(images, masks)
    assert out["pred_sub_boxes"].shape == (2, cfg.model.num_queries, 4)
    assert len(out["aux_outputs"]) == cfg.model.dec_layers - 1
    names = set(model.state_dict())
    assert {"query_embed.weight", "sub_bbox_embed.layers.2.weight"} <= names
    extra = {n for n in names if n.startswith("spatial_queries.")}
    assert any("ref_point_head" in n for n in extra)
    assert any("spread_head" in n for n in extra) == (query_type == "gaussian")
    plain = build_model(load_config(None, TINY_OVERRIDES), NUM_OBJ, NUM_VERB)
    assert names - extra == set(plain.state_dict())  # nothing else changes: released weights still load


def test_box_refine_moves_each_layer_to_the_previous_layers_centres(batch):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_OVERRIDES + ["model.query_type=gaussian", "model.box_refine=true"])
    model = build_model(cfg, NUM_OBJ, NUM_VERB).eval()
    plain = build_model(load_config(None, TINY_OVERRIDES + ["model.query_type=gaussian"]), NUM_OBJ, NUM_VERB)
    assert set(model.state_dict()) == set(plain.state_dict())  # no parameters of its own
    images, masks, _ = batch
    seen = []
    refine = model.refine_centres
    model.refine_centres = lambda content, ref: seen.append(refine(content, ref)) or seen[-1]
    out = model(images, masks)
    layers = out["aux_outputs"] + [{k: v for k, v in out.items() if k != "aux_outputs"}]
    assert len(seen) == cfg.model.dec_layers - 1
    for prev, points in zip(layers[:-1], seen):
        # layer l's reference points are the centres layer l-1 predicted
        assert torch.allclose(points[..., :2], prev["pred_sub_boxes"][..., :2], atol=1e-6)
        assert torch.allclose(points[..., 2:], prev["pred_obj_boxes"][..., :2], atol=1e-6)
    # and a zero delta of layer l would put its boxes there: predictions are relative to them
    delta = torch.zeros(1)
    assert torch.allclose(relative_boxes(delta.expand(4), seen[-1][0, 0, :2])[:2], seen[-1][0, 0, :2])


def test_box_refine_stops_the_gradient_through_the_reference_points():
    sq = SpatialQueries(hidden_dim=16, nheads=4, gaussian=True)
    reference = torch.rand(2, 3, 4)
    content = torch.randn(2, 3, 16, requires_grad=True)
    prior = sq.cross_prior(
        reference, torch.zeros(2, 6, dtype=torch.bool), (2, 3), lambda c, r: (r + c[..., :4]).sigmoid()
    )
    pos0, _ = prior(0, content)
    pos1, bias1 = prior(1, content)
    points = prior.references()
    assert points.shape == (2, 2, 3, 4) and torch.equal(points[0], reference)
    assert not points[1].requires_grad  # the centres feed the next layer as constants
    assert not torch.allclose(pos0, pos1) and bias1.shape == (2, 4, 3, 6)
    assert torch.equal(
        sq.cross_prior(reference, torch.zeros(2, 6, dtype=torch.bool), (2, 3)).references(), reference
    )


def test_box_refine_needs_reference_points():
    with pytest.raises(ConfigError, match="model.box_refine=true needs reference points"):
        load_config(None, TINY_OVERRIDES + ["model.box_refine=true"])  # one line on the command line
    cfg = load_config(None, TINY_OVERRIDES)
    cfg.model.box_refine = True  # past the config check: the model keeps its own guard
    with pytest.raises(ValueError, match="model.box_refine needs reference points"):
        build_model(cfg, NUM_OBJ, NUM_VERB)


@pytest.mark.parametrize(
    "override, need",
    [
        ("model.box_refine=true", "model.box_refine=false"),
        ("model.query_type=gaussian", "model.query_type=embed"),
    ],
)
def test_spatial_options_are_refused_for_other_detectors(override, need):
    # written as the user would write them (booleans lower-case), naming the detector and the fix
    with pytest.raises(ConfigError, match=rf"{override} is a QPIC option; model.detector=cdn needs {need}$"):
        load_config("cdn_s_r18_synthetic", [override])
