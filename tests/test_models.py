"""Detector output contract, matcher, criterion, post-processing and the two mining seams."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, make_target
from hqm.detectors import build_criterion as build_detector_criterion
from hqm.detectors import build_model
from hqm.models import QueryGroup, build_matcher
from hqm.models.attention import SMALL_KEYS, AttentionHook, MultiheadAttention, RecordAttention
from hqm.models.postprocess import PostProcessHOI
from hqm.models.transformer import DecoderLayer
from hqm.structures import DatasetMeta


@pytest.fixture
def model(detector_cfg):
    torch.manual_seed(0)
    return build_model(detector_cfg, NUM_OBJ, NUM_VERB).eval()


def test_output_contract(model, batch, detector_cfg):
    images, masks, _ = batch
    out = model(images, masks)
    nq = model.num_queries  # HOTR: the interaction queries (model.hotr.num_hoi_queries)
    assert out["pred_obj_logits"].shape == (2, nq, NUM_OBJ + 1)
    assert out["pred_verb_logits"].shape == (2, nq, NUM_VERB)
    for k in ("pred_sub_boxes", "pred_obj_boxes"):
        assert out[k].shape == (2, nq, 4)
        assert (out[k] >= 0).all() and (out[k] <= 1).all()
    assert len(out["aux_outputs"]) == detector_cfg.model.dec_layers - 1
    assert {"pred_obj_logits", "pred_verb_logits", "pred_sub_boxes", "pred_obj_boxes"} <= set(
        out["aux_outputs"][0]
    )


def test_qpic_parameter_names(tiny_cfg):
    names = set(build_model(tiny_cfg, NUM_OBJ, NUM_VERB).state_dict())
    for key in (
        "query_embed.weight",
        "input_proj.weight",
        "obj_class_embed.weight",
        "verb_class_embed.weight",
        "sub_bbox_embed.layers.2.weight",
        "obj_bbox_embed.layers.0.bias",
        "backbone.0.body.conv1.weight",
        "transformer.decoder.norm.weight",
        "transformer.encoder.layers.0.self_attn.in_proj_weight",
        "transformer.decoder.layers.1.multihead_attn.out_proj.weight",
    ):
        assert key in names, key


def test_padding_does_not_change_predictions(model):
    torch.manual_seed(1)
    img = torch.randn(1, 3, 64, 96)
    out_a = model(img, torch.zeros(1, 64, 96, dtype=torch.bool))
    padded = torch.zeros(1, 3, 96, 128)
    padded[:, :, :64, :96] = img
    mask = torch.ones(1, 96, 128, dtype=torch.bool)
    mask[:, :64, :96] = False
    out_b = model(padded, mask)
    # C4 features see the zero padding through convolutions at the border, so only approximately equal;
    # the position encoding and the attention masks are exact
    assert torch.allclose(out_a["pred_obj_logits"], out_b["pred_obj_logits"], atol=0.5)


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    q, k = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 4:] = True
    fused = attn(q, k, k, kpm)
    explicit = attn(q, k, k, kpm, hook=AttentionHook())
    assert torch.allclose(fused, explicit, atol=1e-5)


@pytest.mark.parametrize("keys, fused_expected", [(7, False), (SMALL_KEYS, False), (SMALL_KEYS + 1, True)])
def test_cpu_bf16_attention_over_few_keys_takes_the_explicit_path(monkeypatch, keys, fused_expected):
    """The fused CPU kernel is slower than the explicit path in bf16 over few keys (measured in the
    module docstring); both compute the same function."""
    import hqm.models.attention as attention

    calls = []
    sdpa = attention.F.scaled_dot_product_attention
    monkeypatch.setattr(
        attention.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4).eval()
    q, k = torch.randn(2, 5, 32), torch.randn(2, keys, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = attn(q, k, k)
    assert bool(calls) == fused_expected
    calls.clear()
    full = attn(q, k, k)
    assert calls  # fp32 keeps the fused kernel
    assert torch.allclose(low.float(), full, atol=0.05)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_folded_frozen_bn_equals_module_forward(name):
    """The backbone folds each frozen BN into its convolution: same outputs and same weight
    gradients as running torchvision's modules one after the other (random BN statistics)."""
    from hqm.models.backbone import Backbone, FrozenBatchNorm2d

    torch.manual_seed(0)
    backbone = Backbone(name, "frozen", "layer2", False, "layer4")
    for m in backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 64, 96)
    ref = backbone.body(x)["0"]
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    grads_ref = torch.autograd.grad(ref.square().mean(), trainable)
    got, _ = backbone(x, torch.zeros(2, 64, 96, dtype=torch.bool))
    grads = torch.autograd.grad(got.square().mean(), trainable)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert not backbone.body.conv1.weight.requires_grad and len(grads) > 0
    for g, r in zip(grads, grads_ref):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-4 * r.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stem_max_pool_in_channels_last_gives_the_same_values_in_nchw(dtype):
    """Without a gradient the CPU stem max-pool runs in channels_last and gives
    the NCHW result back (faster): equal values (ties, negatives, odd sizes, padding) and the NCHW layout."""
    from hqm.models.backbone import max_pool

    pool = torch.nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    torch.manual_seed(0)
    x = torch.randint(-3, 3, (2, 8, 33, 47)).to(dtype)  # many ties
    with torch.no_grad():
        got = max_pool(pool, x)
    assert (
        torch.equal(got, pool(x))
        and got.is_contiguous()
        and not x.is_contiguous(memory_format=torch.channels_last)
    )
    xg = torch.randn(2, 8, 16, 16, dtype=dtype, requires_grad=True)  # a trainable stem: plain path
    max_pool(pool, xg).sum().backward()
    assert xg.grad is not None and torch.equal(max_pool(pool, xg.detach()), pool(xg.detach()))


def test_backbone_width_64_is_torchvision_resnet():
    """The default width builds torchvision's own network: every parameter name and shape as in
    ``torchvision.models.resnet18`` / ``resnet50`` (released checkpoints load unchanged)."""
    import torchvision

    from hqm.models.backbone import resnet

    for name in ("resnet18", "resnet50"):
        got = {k: v.shape for k, v in resnet(name, 64, torch.nn.BatchNorm2d, False).state_dict().items()}
        ref = {k: v.shape for k, v in getattr(torchvision.models, name)().state_dict().items()}
        assert got == ref


@pytest.mark.parametrize(
    ("name", "width", "dilation", "out", "channels", "stride"),
    [
        ("resnet18", 32, False, "layer3", 128, 16),
        ("resnet18", 16, False, "layer2", 32, 8),
        ("resnet50", 32, True, "layer4", 1024, 16),
    ],
)
def test_backbone_width_scales_every_stage(name, width, dilation, out, channels, stride):
    """``model.backbone_width`` = w: stem and layer1 with w channels, doubled per stage (x4 at the
    Bottleneck outputs), the same layer names, He fan-out initialisation, the feature stride kept."""
    from hqm.models.backbone import Backbone

    torch.manual_seed(0)
    backbone = Backbone(name, "batch", "conv1", dilation, out, width)
    assert backbone.num_channels == channels
    assert backbone.body.conv1.weight.shape == (width, 3, 7, 7)
    assert backbone.body.layer1[0].conv1.weight.shape[0] == width
    w = backbone.body.layer1[0].conv1.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() - (2 / fan_out) ** 0.5) < 0.1 * (2 / fan_out) ** 0.5
    feat, mask = backbone(torch.randn(2, 3, 64, 96), torch.zeros(2, 64, 96, dtype=torch.bool))
    assert (
        feat.shape == (2, channels, 64 // stride, 96 // stride)
        and mask.shape == feat.shape[:1] + feat.shape[2:]
    )


def test_backbone_width_is_validated_and_reaches_the_detector():
    from conftest import TINY_OVERRIDES
    from hqm.config import ConfigError, load_config

    # below 8 channels torch's CPU channels_last backward of the 1x1 stride-2 downsample crashes
    for bad in (0, 4, 7, 513):
        with pytest.raises(ConfigError, match="model.backbone_width"):
            load_config(None, [*TINY_OVERRIDES, f"model.backbone_width={bad}"])
    cfg = load_config(None, [*TINY_OVERRIDES, "model.backbone_width=16"])
    model = build_model(cfg, NUM_OBJ, NUM_VERB)
    assert model.input_proj.in_channels == 64  # layer3 of a width-16 ResNet-18
    assert model.backbone[0].body.conv1.weight.shape[0] == 16


def test_model_too_large_for_memory_is_one_config_error(monkeypatch):
    """The CPU allocator's failure while building the model becomes one line naming the sizes."""
    from conftest import TINY_OVERRIDES
    from hqm import detectors
    from hqm.config import ConfigError, load_config

    def fail(*args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    failing = dataclasses.replace(detectors.get_detector("qpic"), build_model=fail)
    monkeypatch.setattr(detectors, "get_detector", lambda name: failing)
    cfg = load_config(None, [*TINY_OVERRIDES, "model.backbone_width=512"])
    with pytest.raises(ConfigError, match="do not fit in memory.*model.backbone_width=512"):
        build_model(cfg, NUM_OBJ, NUM_VERB)


def test_seam_extra_query_group_and_attention_hook(model, batch):
    """Extra groups are decoded apart from the learnable queries; the hook returns and masks attention."""
    images, masks, _ = batch
    enc = model.encode(images, masks)
    learn = model.decode(enc, model.learnable_queries(enc))
    extra = QueryGroup(
        torch.randn(2, 3, model.hidden_dim), torch.tensor([[False, False, True], [False, True, True]])
    )
    group = model.decode(enc, extra)
    assert group["pred_obj_logits"].shape == (2, 3, NUM_OBJ + 1)
    assert group["pred_verb_logits"].shape == (2, 3, NUM_VERB)
    # the learnable queries are unaffected by the presence of a group
    again = model.decode(enc, model.learnable_queries(enc))
    assert torch.equal(learn["pred_obj_logits"], again["pred_obj_logits"])

    rec = RecordAttention()
    model.decode(enc, model.learnable_queries(enc), hook=rec)
    hw = enc.memory.shape[1]
    # hook layers are numbered across all of the detector's decoders; mining may mask a prefix
    n_layers = sum(isinstance(m, DecoderLayer) for m in model.modules())
    if hasattr(model, "detr"):  # HOTR: the instance decoder is not a query group's and is not hooked
        n_layers -= len(model.detr.transformer.decoder.layers)
    assert sorted(rec.scores) == list(range(n_layers))
    assert set(model.mining_layers) <= set(rec.scores) and 0 in model.mining_layers
    assert rec.scores[0].shape == (2, 4, model.num_queries, hw)
    # padded keys are at -inf in the recorded scores
    assert torch.isinf(rec.scores[0][1][..., enc.mask[1]]).all()

    class MaskAll(AttentionHook):
        def pre_softmax(self, layer, logits):
            masked = logits.clone()
            masked[..., 1:] = float("-inf")  # every query may only look at the first key
            return masked

    class Probe(AttentionHook):
        def __init__(self):
            self.probs = []

        def post_softmax(self, layer, probs):
            self.probs.append(probs)
            return probs

    from hqm.models.attention import HookChain

    probe = Probe()
    masked = model.decode(enc, model.learnable_queries(enc), hook=HookChain([MaskAll(), probe]))
    assert torch.allclose(probe.probs[0][..., 0], torch.ones(()))
    assert not torch.allclose(masked["pred_verb_logits"], learn["pred_verb_logits"])


def test_matcher_batch_equals_single(model, batch, tiny_cfg):
    images, masks, targets = batch
    out = model(images, masks)
    matcher = build_matcher(tiny_cfg.loss)
    both = matcher(out, targets)
    for i in range(2):
        single = matcher({k: v[i : i + 1] for k, v in out.items() if k != "aux_outputs"}, [targets[i]])
        assert torch.equal(both[i][0], single[0][0]) and torch.equal(both[i][1], single[0][1])
        assert len(both[i][0]) == len(targets[i]["obj_labels"])


def test_matcher_empty_targets(model, batch, tiny_cfg):
    images, masks, _ = batch
    out = model(images, masks)
    empty = make_target(0)
    idx = build_matcher(tiny_cfg.loss)(out, [empty, make_target(2)])
    assert len(idx[0][0]) == 0 and len(idx[1][0]) == 2


def test_matcher_missing_object_ignores_object_box(tiny_cfg):
    """With the object missing, moving the predicted object box must not change the cost."""
    matcher = build_matcher(tiny_cfg.loss)
    t = make_target(1, has_obj=[False])
    out = {
        "pred_obj_logits": torch.zeros(1, 2, NUM_OBJ + 1),
        "pred_verb_logits": torch.zeros(1, 2, NUM_VERB),
        "pred_sub_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.4, 0.4, 0.3, 0.3]]]),
        "pred_obj_boxes": torch.tensor([[[0.1, 0.1, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1]]]),
    }
    c1 = matcher.cost_matrices(out, [t])[0]
    out["pred_obj_boxes"] = torch.rand(1, 2, 4) * 0.5 + 0.2
    c2 = matcher.cost_matrices(out, [t])[0]
    assert torch.allclose(c1, c2)


def test_criterion_empty_gt(model, batch, detector_cfg):
    images, masks, _ = batch
    crit = build_detector_criterion(detector_cfg, NUM_OBJ)
    out = model(images, masks)
    loss, logs = crit(out, [make_target(0), make_target(0)])
    for k, v in logs.items():
        assert torch.isfinite(v), k
        if "bbox" in k or "giou" in k:
            assert v.item() == 0.0, k
    assert logs.get("loss_obj_ce", logs.get("inst/loss_obj_ce")).item() > 0
    loss.backward()


def test_criterion_decreases_with_training(detector_cfg, batch):
    torch.manual_seed(0)
    images, masks, targets = batch
    model = build_model(detector_cfg, NUM_OBJ, NUM_VERB).train()
    crit = build_detector_criterion(detector_cfg, NUM_OBJ)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    first = None
    for _ in range(30):  # loss ratio after 30 steps: qpic 0.41, cdn 0.44, hotr 0.65
        loss, _ = crit(model(images, masks), targets)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_focal_loss_no_nan_on_saturated_logits():
    from hqm.models.criterion import focal_verb_loss

    logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
    loss = focal_verb_loss(logits, torch.tensor([[0.0, 1.0, 1.0]]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_postprocess_scores_validity_and_boxes():
    meta = DatasetMeta("t", ["person", "ball"], ["kick", "hold"], np.array([[0, 1], [1, 1]], dtype=bool))
    post = PostProcessHOI(meta, max_dets=10)
    obj_logits = torch.tensor([[[-10.0, 5.0, -10.0], [5.0, -10.0, -10.0]]])  # q0 -> ball, q1 -> person
    out = {
        "pred_obj_logits": obj_logits,
        "pred_verb_logits": torch.zeros(1, 2, 2),
        "pred_sub_boxes": torch.tensor([[[0.5, 0.5, 0.5, 0.5]] * 2]),
        "pred_obj_boxes": torch.tensor([[[0.25, 0.25, 0.5, 0.5]] * 2]),
    }
    (pred,) = post(out, torch.tensor([[100, 200]]), ["a.jpg"])
    # kick is invalid with person: 3 valid candidates of 4
    assert len(pred) == 3
    assert not ((pred.verb_labels == 0) & (pred.obj_labels == 0)).any()
    assert np.all(np.diff(pred.scores) <= 0)
    np.testing.assert_allclose(pred.sub_boxes[0], [50, 25, 150, 75], atol=1e-4)
    np.testing.assert_allclose(pred.obj_boxes[0], [0, 0, 100, 50], atol=1e-4)
    assert abs(pred.scores[0] - 0.5 * torch.softmax(obj_logits[0, 0], -1)[1].item()) < 1e-6
