"""Spatial queries (model.query_type conditional / gaussian): reference points, the conditional
spatial query, Gaussian co-attention, relative boxes; mining and evaluation through them."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, TINY_OVERRIDES
from hqm.box_ops import relative_boxes
from hqm.config import load_config
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
