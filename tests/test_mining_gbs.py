"""GBS: shifted-box samplers, the 12-d pair vector, hard-query padding and the fixed assignment."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, TINY_OVERRIDES, make_target
from hqm.config import load_config
from hqm.detectors import build_model
from hqm.mining.gbs import GBSMiner, box_iou_cxcywh, pair_vector, sample_official, sample_per_box
from hqm.models import build_criterion, build_matcher


def random_boxes(n: int, seed: int = 0) -> torch.Tensor:
    """Normalised cxcywh boxes: ordinary, tiny, image-filling and corner-touching ones."""
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(n, 2, generator=g) * 0.9 + 0.05
    cxcy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
    boxes = torch.cat([cxcy, wh], 1)
    special = torch.tensor(
        [
            [0.5, 0.5, 1.0, 1.0],  # the whole image
            [0.5, 0.5, 1.0, 0.02],  # a full-width sliver
            [0.3, 0.7, 1e-3, 2e-3],  # tiny
            [5e-4, 5e-4, 1e-3, 1e-3],  # tiny, in the corner
            [0.9, 0.1, 0.2, 0.2],  # touching the top-right corner
            [0.5, 0.5, 0.98, 0.6],
        ]
    )
    return torch.cat([boxes, special])


@pytest.mark.parametrize("window", [(0.4, 0.6), (0.3, 0.5), (0.6, 0.7)])
def test_per_box_every_shift_inside_window(window):
    torch.manual_seed(0)
    boxes = random_boxes(4000)
    shifted, outside = sample_per_box(boxes, window)
    iou = box_iou_cxcywh(boxes, shifted)
    assert not outside.any()
    assert (iou >= window[0] - 1e-6).all() and (iou <= window[1] + 1e-6).all()
    xyxy = torch.cat([shifted[:, :2] - shifted[:, 2:] / 2, shifted[:, :2] + shifted[:, 2:] / 2], 1)
    assert (xyxy >= -1e-6).all() and (xyxy <= 1 + 1e-6).all()  # clipped to the image


def test_per_box_keeps_best_candidate_and_counts_failures():
    boxes = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.2, 0.2]])  # a degenerate box never fits
    shifted, outside = sample_per_box(boxes, (0.4, 0.6), num_candidates=8, max_rounds=2)
    assert outside.tolist() == [True, False]
    assert torch.isfinite(shifted).all()


def _fake_randint(draws: torch.Tensor):
    def randint(low, high, size, device=None, **kw):
        assert (low, high) == (-10, 10) and tuple(size) == tuple(draws.shape)
        return draws.clone().to(device)

    return randint


def test_official_accepts_first_draw_with_70_percent_in_open_window(monkeypatch):
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1]]).repeat(10, 1)
    eligible = torch.ones(10, dtype=torch.bool)
    draws = torch.zeros(40, 10, 3, dtype=torch.int64)
    draws[0, :6, 1] = 7  # j = 7: dx = 0.28 w -> IoU 0.72 / 1.28 = 0.5625; 6 / 10 in window: rejected
    draws[1, :7, 1] = -7  # 7 / 10: accepted
    # draw 1 leaves boxes 7-9 unshifted by the grid (IoU 1, outside the window): they keep the GT
    draws[2, :, 1] = 7  # would be accepted too, but draw 1 comes first
    monkeypatch.setattr(torch, "randint", _fake_randint(draws))
    out, took = sample_official(boxes, eligible, (0.4, 0.6))
    assert took.tolist() == [True] * 7 + [False] * 3
    torch.testing.assert_close(out[:7, 0], torch.full((7,), 0.5 - 0.028))
    torch.testing.assert_close(out[7:], boxes[7:])  # rejected boxes keep their GT coordinates


def test_official_ignores_ineligible_boxes_in_the_vote(monkeypatch):
    boxes = torch.tensor([[0.5, 0.5, 0.1, 0.1]]).repeat(4, 1)
    eligible = torch.tensor([True, True, True, False])  # e.g. the pair without an object
    draws = torch.zeros(40, 4, 3, dtype=torch.int64)
    draws[0, :, 1] = 7  # every box in the window, but the ineligible one must not move
    monkeypatch.setattr(torch, "randint", _fake_randint(draws))
    out, took = sample_official(boxes, eligible, (0.4, 0.6))
    assert took.tolist() == [True, True, True, False]
    torch.testing.assert_close(out[3], boxes[3])


def test_official_no_shift_after_40_failed_draws():
    torch.manual_seed(0)
    boxes = random_boxes(50)
    # the integer grid cannot produce an IoU in (0.95, 0.99) (r = 0.96 already gives 0.92)
    out, took = sample_official(boxes, torch.ones(len(boxes), dtype=torch.bool), (0.95, 0.99))
    assert not took.any()
    torch.testing.assert_close(out, boxes)


def test_official_accepted_draws_satisfy_the_rule():
    """Per-device batches of 1-6 boxes (2 images): when a draw is taken, >= 70% of the eligible
    boxes moved, each into the open window, and the others kept their GT."""
    torch.manual_seed(1)
    taken = 0
    for seed in range(100):
        n = 1 + seed % 6
        boxes = random_boxes(n, seed)[:n]
        eligible = torch.ones(n, dtype=torch.bool)
        out, took = sample_official(boxes, eligible, (0.4, 0.6))
        iou = box_iou_cxcywh(boxes, out)
        taken += bool(took.any())
        assert not took.any() or took.float().mean() >= 0.7
        assert ((iou[took] > 0.4) & (iou[took] < 0.6)).all()
        torch.testing.assert_close(out[~took], boxes[~took])
    assert taken > 80


def test_pair_vector_by_hand():
    sub = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    obj = torch.tensor([[0.3, 0.7, 0.1, 0.2]])
    expected = torch.tensor([[0.5, 0.4, 0.2, 0.6, 0.3, 0.7, 0.1, 0.2, 0.2, -0.3, 0.12, 0.02]])
    torch.testing.assert_close(pair_vector(sub, obj), expected)


def test_official_pairs_without_object_are_not_shifted():
    torch.manual_seed(0)
    miner = GBSMiner(16, sampler="official")
    t = make_target(6, has_obj=[True, True, True, True, True, False])
    sub, obj = miner.shifted_pairs(t["sub_boxes"], t["obj_boxes"], t["has_obj"])
    torch.testing.assert_close(sub[5], t["sub_boxes"][5])
    torch.testing.assert_close(obj[5], t["obj_boxes"][5])


@pytest.mark.parametrize("sampler", ["official", "per_box"])
def test_pixel_inside_clip_keeps_shifted_boxes_one_pixel_inside(sampler):
    """Released code: shifted boxes are clipped at (W - 1, H - 1) pixels; ours at the image edge."""
    torch.manual_seed(0)
    t = make_target(6)  # size (h, w) = (96, 128)
    t["sub_boxes"][:, 0], t["sub_boxes"][:, 2] = 0.9, 0.15  # ends 1.5 px inside: many shifts cross
    upper = torch.tensor([127 / 128, 95 / 96])
    edge = GBSMiner(16, sampler=sampler)
    inside = GBSMiner(16, sampler=sampler, clip="pixel_inside")
    torch.testing.assert_close(inside.clip_limits([t], [6], torch.device("cpu")), upper.expand(6, 2))
    crossed = False
    for seed in range(5):
        torch.manual_seed(seed)
        sub_edge, _ = edge.shifted_pairs(t["sub_boxes"], t["obj_boxes"], t["has_obj"])
        torch.manual_seed(seed)
        sub_in, _ = inside.shifted_pairs(t["sub_boxes"], t["obj_boxes"], t["has_obj"], upper.expand(6, 2))
        x2_edge = sub_edge[:, 0] + sub_edge[:, 2] / 2
        x2_in = sub_in[:, 0] + sub_in[:, 2] / 2
        assert (x2_in <= upper[0] + 1e-6).all()
        crossed |= bool((x2_edge > upper[0] + 1e-6).any())
    assert crossed  # the two clips differ on these boxes


def test_per_box_missing_object_stays_empty_and_queries_are_padded():
    torch.manual_seed(0)
    miner = GBSMiner(16)
    targets = [make_target(3, has_obj=[True, False, True]), make_target(0, seed=3), make_target(1, seed=4)]
    _, obj = miner.shifted_pairs(targets[0]["sub_boxes"], targets[0]["obj_boxes"], targets[0]["has_obj"])
    assert (obj[1] == 0).all()
    group, indices = miner.build_queries(targets)
    query_pos, query_mask = group.pos, group.mask
    assert query_pos.shape == (3, 3, 16)
    assert query_mask.tolist() == [[False] * 3, [True] * 3, [False, True, True]]
    assert (query_pos[query_mask] == 0).all()
    assert [q.tolist() for q, _ in indices] == [[0, 1, 2], [], [0]]


def _tiny(extra, seed=0):
    torch.manual_seed(seed)
    cfg = load_config(None, TINY_OVERRIDES + extra)
    model = build_model(cfg, NUM_OBJ, NUM_VERB).train()
    return cfg, model, build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss))


def test_images_without_pairs_contribute_nothing_and_never_nan(batch):
    images, masks, _ = batch
    cfg, model, crit = _tiny(["mining.strategy=gbs"])
    for targets in ([make_target(2), make_target(0, seed=5)], [make_target(0), make_target(0, seed=5)]):
        out = model(images, masks, targets, mining=("gbs",))
        hard = out["groups"]["gbs"].outputs
        assert all(torch.isfinite(v).all() for k, v in hard.items() if k.startswith("pred_"))
        loss, logs = crit(out, targets, 1.0, {"gbs": 1.0})
        assert torch.isfinite(loss)
        loss.backward()
    assert logs["gbs/loss_sub_bbox"] == 0 and logs["gbs/loss_obj_ce"] == 0


def test_hard_losses_use_the_fixed_assignment(batch):
    """Permuting the GT rows permutes the hard queries and their supervision (shift=none: no noise)."""
    images, masks, targets = batch
    _, model, crit = _tiny(["mining.strategy=gbs", "mining.gbs.shift=none"])
    perm = torch.tensor([2, 0, 1])
    permuted = [
        {
            k: (v[perm] if torch.is_tensor(v) and v.dim() and len(v) == 3 else v)
            for k, v in targets[0].items()
        },
        targets[1],
    ]
    out_a = model(images, masks, targets, mining=("gbs",))
    out_b = model(images, masks, permuted, mining=("gbs",))
    ga, gb = out_a["groups"]["gbs"], out_b["groups"]["gbs"]
    assert [q.tolist() for q, _ in ga.assignment.indices] == [[0, 1, 2], [0, 1]]
    torch.testing.assert_close(gb.outputs["pred_sub_boxes"][0], ga.outputs["pred_sub_boxes"][0][perm])
    la = crit(out_a, targets, 1.0, {"gbs": 1.0})[1]
    lb = crit(out_b, permuted, 1.0, {"gbs": 1.0})[1]
    for key in la:
        if key.startswith("gbs/"):
            torch.testing.assert_close(la[key], lb[key])


def test_gradients_reach_fp_on_gbs_steps_and_are_zero_on_amm_steps(batch):
    images, masks, targets = batch
    _, model, crit = _tiny(["mining.strategy=ajl", "mining.amm.k=5"])
    fp = list(model.miners["gbs"].parameters())
    for active, nonzero in ((("gbs",), True), (("amm",), False)):
        model.zero_grad(set_to_none=True)
        out = model(images, masks, targets, mining=active)
        idle = model.miner_parameters(exclude=active)  # the criterion touches idle miners with a zero
        crit(out, targets, 1.0, {active[0]: 1.0}, idle_params=idle)[0].backward()
        assert all(p.grad is not None for p in fp)  # present every step (static DDP graph)
        assert any(p.grad.abs().sum() > 0 for p in fp) == nonzero


def test_gaussian_shift_adds_learnable_noise():
    torch.manual_seed(0)
    miner = GBSMiner(16, shift="gaussian")
    targets = [make_target(2)]
    a, b = miner.build_queries(targets)[0].pos, miner.build_queries(targets)[0].pos
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert miner.noise_proj.weight.grad is not None


def test_reference_points_are_the_encoded_boxes_centres():
    """Row j of image i: (x_sub, y_sub, x_obj, y_obj) of the boxes GBS encoded for pair j (shift=none:
    the GT); a pair without object takes its subject centre twice; padding rows 0.5."""
    miner = GBSMiner(16, shift="none")
    targets = [make_target(3, has_obj=[True, False, True]), make_target(1, seed=4)]
    group, _ = miner.build_queries(targets)
    t0, t1 = targets
    expected0 = torch.cat([t0["sub_boxes"][:, :2], t0["obj_boxes"][:, :2]], dim=1)
    expected0[1, 2:] = t0["sub_boxes"][1, :2]
    torch.testing.assert_close(group.reference[0], expected0)
    torch.testing.assert_close(group.reference[1, 0, :2], t1["sub_boxes"][0, :2])
    torch.testing.assert_close(group.reference[1, 0, 2:], t1["obj_boxes"][0, :2])
    assert (group.reference[1, 1:] == 0.5).all()


def _decoded_reference(model, images, masks, targets):
    """The QueryGroup.reference the GBS pass hands to ``decode`` (None: none given)."""
    seen = []
    decode = model.decode

    def spy(enc, queries, *args, **kwargs):
        seen.append(queries.reference)
        return decode(enc, queries, *args, **kwargs)

    model.decode = spy
    model(images, masks, targets, mining=("gbs",))
    return seen[-1]  # the learnable pass first, then the GBS pass


@pytest.mark.parametrize(
    "extra, given",
    [
        (["model.query_type=gaussian"], True),
        (["model.query_type=conditional", "mining.gbs.reference_points=learned"], False),
        ([], False),  # plain positional queries (the paper's QPIC): never points
    ],
)
def test_spatial_query_detectors_take_the_shifted_centres_as_reference_points(batch, extra, given):
    images, masks, targets = batch
    _, model, crit = _tiny(["mining.strategy=gbs", "mining.gbs.shift=none", *extra])
    assert model.decodes_reference_points == bool(extra)
    reference = _decoded_reference(model, images, masks, targets)
    if not given:
        assert reference is None
        return
    group, _ = model.miners["gbs"].build_queries(targets)
    torch.testing.assert_close(reference, group.reference)
    out = model(images, masks, targets, mining=("gbs",))
    loss, _ = crit(out, targets, 1.0, {"gbs": 1.0})
    loss.backward()  # the GBS group decodes and trains with given points (ref_point_head zero-touched)
    assert model.spatial_queries.ref_point_head.layers[0].weight.grad is not None
