"""CDN: the cascade, HQM through the unchanged seams, CDN's losses, checkpoints and presets."""

from __future__ import annotations

import pytest
import torch

from conftest import DETECTOR_OVERRIDES, NUM_OBJ, NUM_VERB, make_target, mining_steps, tiny_detector_cfg
from hqm.config import ConfigError, load_config
from hqm.detectors import DETECTORS, build_model
from hqm.engine.trainer import freeze_except
from hqm.mining.amm import AttentionMasking
from hqm.models import QueryGroup, build_criterion, build_matcher
from hqm.models.attention import RecordAttention
from hqm.models.class_reweighting import ClassReweighting, class_weights
from hqm.models.criterion import focal_verb_loss
from hqm.zoo import (
    LAYOUTS,
    convert_state_dict,
    detect_format,
    load_into_model,
    load_weights,
    weight_mismatches,
)
from hqm.zoo.classes import dataset_object_names
from test_mining_train import RUNS
from test_zoo import DETR_OVERRIDES, _save, detr_state_dict


def _cdn(extra=(), seed=0):
    torch.manual_seed(seed)
    cfg = tiny_detector_cfg("cdn", list(extra))
    return cfg, build_model(cfg, NUM_OBJ, NUM_VERB)


def test_registry_tests_and_checkpoint_tables_cover_every_detector():
    assert set(DETECTORS) == set(LAYOUTS) == set(DETECTOR_OVERRIDES)
    with pytest.raises(ConfigError, match="qpic, cdn, hotr"):
        load_config(None, ["model.detector=detr"])


def test_interaction_queries_are_the_pair_decoders_last_embeddings(batch):
    images, masks, _ = batch
    _, model = _cdn()
    model.eval()
    enc = model.encode(images, masks)
    out = model.decode(enc, model.learnable_queries(enc))
    t = model.transformer
    pair = t.decoder(model.query_embed.weight[None].expand(2, -1, -1), enc.memory, enc.pos, enc.mask)
    inter = t.interaction_decoder(pair[-1], enc.memory, enc.pos, enc.mask)
    torch.testing.assert_close(out["pred_verb_logits"], model.verb_class_embed(inter[-1]))
    torch.testing.assert_close(out["pred_obj_logits"], model.obj_class_embed(pair[-1]))
    torch.testing.assert_close(out["pred_sub_boxes"], model.sub_bbox_embed(pair[-1]).sigmoid())
    torch.testing.assert_close(out["aux_outputs"][0]["pred_verb_logits"], model.verb_class_embed(inter[0]))
    assert len(out["aux_outputs"]) == 1  # min(2 pair, 2 interaction) - 1
    # the interaction decoder only changes verbs
    with torch.no_grad():
        for p in t.interaction_decoder.parameters():
            p.add_(0.1)
    again = model.decode(enc, model.learnable_queries(enc))
    assert torch.equal(again["pred_sub_boxes"], out["pred_sub_boxes"])
    assert not torch.allclose(again["pred_verb_logits"], out["pred_verb_logits"])


def test_unequal_decoder_depths_pair_layers_from_the_end(batch):
    images, masks, _ = batch
    _, model = _cdn(["model.dec_layers=3", "model.cdn.interaction_layers=2"])
    out = model.eval()(images, masks)
    assert len(out["aux_outputs"]) == 1
    rec = RecordAttention()
    enc = model.encode(images, masks)
    model.decode(enc, model.learnable_queries(enc), hook=rec)
    assert sorted(rec.scores) == [0, 1, 2, 3, 4] and list(model.mining_layers) == [0, 1, 2]


def test_amm_masks_only_the_pair_decoder(batch, monkeypatch):
    images, masks, targets = batch
    _, model = _cdn(["mining.strategy=amm", "mining.amm.k=6"])
    changed: dict[int, bool] = {}
    original = AttentionMasking.pre_softmax

    def spy(self, layer, logits):
        new = original(self, layer, logits)
        changed[layer] = changed.get(layer, False) or not torch.equal(new, logits)
        return new

    monkeypatch.setattr(AttentionMasking, "pre_softmax", spy)
    out = model.train()(images, masks, targets, mining=("amm",))
    assert changed == {0: True, 1: True, 2: False, 3: False}
    assert out["groups"]["amm"].outputs["pred_verb_logits"].shape == (2, 8, NUM_VERB)


def test_gbs_queries_run_through_both_decoders(batch):
    images, masks, targets = batch
    cfg, model = _cdn(["mining.strategy=cjl"])  # CJL's self reference records the GBS queries' own pass
    model.train()
    seen = []
    decode = model.decode

    def spy(enc, queries, hook=None, final_norm=True):
        out = decode(enc, queries, hook, final_norm)
        if isinstance(hook, RecordAttention):
            seen.append(sorted(hook.scores))
        return out

    model.decode = spy
    out = model(images, masks, targets, mining=("cjl",))
    assert seen == [[0, 1, 2, 3]]  # pair decoder layers 0-1, then the interaction decoder's 2-3
    hard = out["groups"]["cjl"].outputs
    assert hard["pred_verb_logits"].shape == (2, 3, NUM_VERB)
    crit = build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss))
    loss, logs = crit(out, targets, 1.0, {"cjl": 1.0})
    loss.backward()
    assert torch.isfinite(loss) and "cjl/loss_verb_ce_0" in logs
    assert model.miners["cjl"].query_embed_sp[0].weight.grad.abs().sum() > 0


def test_cdn_verb_focal_alpha_weighs_positives_and_negatives():
    """L(a) = a * L_pos + (1 - a) * L_neg; QPIC's loss (no alpha) is L_pos + L_neg, so CDN's alpha 0.5
    with coefficient 2 equals QPIC's coefficient 1."""
    torch.manual_seed(0)
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) > 0.6).float()
    pos, neg = focal_verb_loss(logits, targets, alpha=1.0), focal_verb_loss(logits, targets, alpha=0.0)
    torch.testing.assert_close(pos + neg, focal_verb_loss(logits, targets))
    torch.testing.assert_close(focal_verb_loss(logits, targets, alpha=0.25), 0.25 * pos + 0.75 * neg)
    torch.testing.assert_close(
        2 * focal_verb_loss(logits, targets, alpha=0.5), focal_verb_loss(logits, targets)
    )


def test_object_box_normaliser_switch(tiny_cfg):
    """Released code: object-box terms over pairs with an object (+1e-4); spec: over all pairs.
    On a V-COCO-like batch with one object-less pair of five: 4/5 = 0.80x."""
    targets = [make_target(5, has_obj=[True, True, False, True, True], seed=3)]
    out = {
        "pred_obj_logits": torch.randn(1, 8, NUM_OBJ + 1),
        "pred_verb_logits": torch.randn(1, 8, NUM_VERB),
        "pred_sub_boxes": torch.rand(1, 8, 4) * 0.3 + 0.3,
        "pred_obj_boxes": torch.rand(1, 8, 4) * 0.3 + 0.3,
    }
    logs = {}
    for norm in ("pairs", "pairs_with_object"):
        tiny_cfg.loss.obj_box_norm = norm
        crit = build_criterion(tiny_cfg, NUM_OBJ, build_matcher(tiny_cfg.loss))
        logs[norm] = crit(out, targets)[1]
    for term in ("loss_obj_bbox", "loss_obj_giou"):
        ratio = logs["pairs"][term] / logs["pairs_with_object"][term]
        assert abs(ratio.item() - (4 + 1e-4) / 5) < 1e-6
    assert torch.equal(logs["pairs"]["loss_sub_bbox"], logs["pairs_with_object"]["loss_sub_bbox"])


def test_class_weights_by_hand_and_the_dynamic_blend():
    # counts (fg 1, 4, 0; bg 15), p = 0.5: raw (5/1)^.5, (5/4)^.5, 0 -> / their positive mean; bg (5/15)^.5
    w = class_weights(torch.tensor([1.0, 4.0, 0.0, 15.0]), 0.5)
    raw = torch.tensor([5**0.5, 1.25**0.5])
    expected = torch.cat([raw / raw.mean(), torch.tensor([0.0, (1 / 3) ** 0.5])])
    torch.testing.assert_close(w, expected.float())
    rw = ClassReweighting([1, 4, 0], [2, 2], p_obj=0.5, p_verb=0.5, queue_size=3)
    cls_t = torch.tensor([[0, 1, 3, 3]])  # two matched queries, two no-object
    verb_t = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    obj_w, verb_w = rw(cls_t, verb_t)
    dyn = class_weights(torch.tensor([1.0, 1.0, 0.0, 2.0]), 0.5)
    torch.testing.assert_close(obj_w, 0.9 * rw.obj_init + 0.1 * dyn)  # a = min(0.999^1, 0.9)
    assert verb_w.shape == (2,)
    for _ in range(5):  # the queue keeps the last 3 calls
        rw(cls_t, verb_t)
    assert len(rw.queues["obj"]) == 3 and torch.equal(
        rw.sums["obj"], 3 * torch.tensor([1.0, 1, 0, 2]).double()
    )
    static = ClassReweighting([1, 4, 0], [2, 2], p_obj=0.5, static=True)
    assert torch.equal(static(cls_t, verb_t)[0], static.obj_init) and not static.queues["obj"]


def test_reweighted_criterion_trains(batch):
    images, masks, targets = batch
    cfg, model = _cdn(["loss.reweight.obj=true", "loss.reweight.verb=true"])
    counts = (torch.arange(1, NUM_OBJ + 1), torch.arange(1, NUM_VERB + 1))
    crit = build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss), counts)
    loss, _ = crit(model.train()(images, masks, targets), targets)
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="class counts"):
        build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss))


def test_fine_tuning_freezes_all_but_decoders_and_heads():
    cfg = load_config(
        "cdn_s_r50_hico_ft", ["model.backbone=resnet18", "model.hidden_dim=32", "model.nheads=4"]
    )
    cfg.model.dim_feedforward, cfg.model.enc_layers = 64, 1
    model = build_model(cfg, NUM_OBJ, NUM_VERB)
    freeze_except(model, cfg.train.trainable)
    heads = ("obj_class_embed.", "verb_class_embed.", "sub_bbox_embed.", "obj_bbox_embed.")
    decoders = ("transformer.decoder.", "transformer.interaction_decoder.")
    for name, p in model.named_parameters():  # released freeze_mode 1: decoders and heads only
        assert p.requires_grad == name.startswith(heads + decoders), name
    assert (cfg.train.lr, cfg.train.lr_backbone, cfg.train.epochs) == (1e-5, 1e-6, 10)
    assert cfg.loss.reweight.obj and cfg.loss.reweight.verb
    with pytest.raises(ValueError, match="names no parameter"):
        freeze_except(model, ["transformer.hopd_decoder."])


@pytest.mark.parametrize(
    "name, backbone, layers, queries",
    [
        ("cdn_s_r50_hico", "resnet50", (3, 3), 64),
        ("cdn_s_r50_vcoco", "resnet50", (3, 3), 100),
        ("cdn_b_r50_hico", "resnet50", (6, 6), 64),
        ("cdn_b_r50_vcoco_hqm", "resnet50", (6, 6), 100),
        ("cdn_l_r101_hico", "resnet101", (6, 6), 64),
        ("cdn_l_r101_vcoco", "resnet101", (6, 6), 100),
    ],
)
def test_presets_and_released_weights_fit_exactly(name, backbone, layers, queries):
    """Released CDN-S / B / L weights, generated with the published names and shapes (on the meta
    device: no memory), are detected as CDN and fit the preset's model with nothing missing or left."""
    cfg = load_config(name)
    assert cfg.model.detector == "cdn" and cfg.model.backbone == backbone
    assert (cfg.model.dec_layers, cfg.model.cdn.interaction_layers, cfg.model.num_queries) == (
        *layers,
        queries,
    )
    assert (cfg.loss.verb_loss_coef, cfg.loss.verb_focal_alpha, cfg.eval.nms) == (2.0, 0.5, True)
    assert cfg.mining.strategy == ("ajl" if name.endswith("_hqm") else "none")
    n_obj, n_verb = (80, 117) if "hico" in name else (81, 29)
    with torch.device("meta"):
        model = build_model(load_config(name, ["mining.strategy=none"]), n_obj, n_verb)
    state = cdn_released_state_dict(backbone, 256, 6, *layers, 2048, queries, n_obj, n_verb, "meta")
    assert detect_format(state, "cdn") == "cdn"
    converted, report = convert_state_dict(state, "cdn")
    assert report.ignored == [] and report.reshaped == []
    assert weight_mismatches(model, converted) == {"missing": [], "unexpected": [], "misshaped": []}


def cdn_released_state_dict(
    backbone: str = "resnet18",
    d: int = 32,
    enc: int = 1,
    pair: int = 2,
    inter: int = 2,
    ff: int = 64,
    queries: int = 8,
    n_obj: int = NUM_OBJ,
    n_verb: int = NUM_VERB,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """A YueLiao/CDN ``CDNHOI`` state dict written from its published structure: DETR's trunk (the
    DETR helper of test_zoo, whose decoder is the pair decoder ``transformer.decoder``), the
    interaction decoder ``transformer.interaction_decoder`` (layers + final norm), QPIC's heads."""
    g = torch.Generator().manual_seed(1)

    def rand(*shape) -> torch.Tensor:
        return torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape, generator=g)

    sd = detr_state_dict(backbone, d, enc, pair, ff, queries, device=device)
    for k in [k for k in sd if k.startswith(("class_embed", "bbox_embed"))]:
        del sd[k]
    for k in [k for k in sd if k.startswith("transformer.decoder.layers.0.")]:
        for i in range(inter):
            new = k.replace("transformer.decoder.layers.0.", f"transformer.interaction_decoder.layers.{i}.")
            sd[new] = rand(*sd[k].shape)
    sd["transformer.interaction_decoder.norm.weight"] = rand(d)
    sd["transformer.interaction_decoder.norm.bias"] = rand(d)
    sd["obj_class_embed.weight"] = rand(n_obj + 1, d)
    sd["obj_class_embed.bias"] = rand(n_obj + 1)
    sd["verb_class_embed.weight"] = rand(n_verb, d)
    sd["verb_class_embed.bias"] = rand(n_verb)
    for head in ("sub_bbox_embed", "obj_bbox_embed"):
        for i, (a, b) in enumerate([(d, d), (d, d), (4, d)]):
            sd[f"{head}.layers.{i}.weight"] = rand(a, b)
            sd[f"{head}.layers.{i}.bias"] = rand(a)
    return sd


def test_released_cdn_weights_load_with_a_complete_report():
    cfg = tiny_detector_cfg(
        "cdn", ["model.backbone_norm=frozen", "model.backbone_out=layer4", "model.backbone_width=64"]
    )
    model = build_model(cfg, NUM_OBJ, NUM_VERB)
    state = cdn_released_state_dict()
    report = load_weights(model, _save(state), detector="cdn")
    assert sorted(report.loaded) == sorted(state) and report.ignored == [] and report.fresh == []
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    # a CDN checkpoint is refused by QPIC with the reason
    with pytest.raises(ValueError, match="model.detector=cdn"):
        load_weights(build_model(load_config(None, DETR_OVERRIDES), NUM_OBJ, NUM_VERB), _save(state))


@pytest.mark.parametrize("init", ["paper", "released"])
def test_detr_to_cdn_initialisations(init):
    cfg = load_config(None, DETR_OVERRIDES + DETECTOR_OVERRIDES["cdn"])
    detr = detr_state_dict()
    names = dataset_object_names("hico_det")
    converted, _ = convert_state_dict(detr, "cdn", object_names=names, init=init)
    model = build_model(cfg, 80, 5)
    from hqm.zoo.rename import load_partial

    report = load_partial(model, converted)
    inter = [e for e in report.fresh if e.startswith("transformer.interaction_decoder.")]
    if init == "paper":  # DETR's decoder layer i initialises both decoders' layer i
        assert inter == []
        own = model.state_dict()
        for k in ("layers.1.multihead_attn.in_proj_weight", "norm.weight"):
            assert torch.equal(own[f"transformer.interaction_decoder.{k}"], detr[f"transformer.decoder.{k}"])
    else:  # the published converter: the interaction decoder stays random
        assert len(inter) == len(
            [k for k in model.state_dict() if k.startswith("transformer.interaction_decoder.")]
        )
    assert sorted(e for e in report.fresh if not e.startswith("transformer.interaction")) == [
        "verb_class_embed.bias",
        "verb_class_embed.weight",
    ]
    # the default is the paper's
    default = load_into_model(build_model(cfg, 80, 5), _save(detr), "cdn", names)
    assert not any(e.startswith("transformer.interaction_decoder.") for e in default.fresh)


def test_query_group_reference_is_refused_by_cdn(batch):
    images, masks, _ = batch
    _, model = _cdn()
    enc = model.encode(images, masks)
    with pytest.raises(ValueError, match="reference"):
        model.decode(enc, QueryGroup(torch.zeros(2, 3, 32), reference=torch.rand(2, 3, 4)))


@pytest.mark.parametrize("run", [r for r in RUNS if "query_type" not in " ".join(RUNS[r])])
def test_every_mining_variant_trains_on_cdn(run, batch):
    """Each strategy and ablation switch of the mining package: a training forward on CDN, finite
    losses for its groups, gradients into the pair and interaction decoders."""
    strategy = run.split("-")[0]
    cfg, model = _cdn([f"mining.strategy={strategy}", "mining.amm.k=6", *RUNS[run]])
    crit = build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss))
    for out, logs in mining_steps(cfg, model, crit, batch):
        for group in out.get("groups", {}):
            assert f"{group}/loss_verb_ce" in logs
        assert all(p.grad is not None for p in model.miners.parameters())  # idle ones touched
    grads = [p.grad for p in model.transformer.interaction_decoder.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_convert_cli_for_cdn_names_the_initialisation(tmp_path, capsys):
    from hqm.cli import main
    from hqm.zoo import safe_torch_load

    src = _save(detr_state_dict(), "detr-r18.pth")
    for init, fresh_inter in (("paper", False), ("released", True)):
        out = tmp_path / f"{init}.pt"
        args = ["convert", "detr-to-hoi", src, str(out), "--detector", "cdn", "--init", init]
        assert main(args) == 0
        payload = safe_torch_load(out)
        assert payload["converted"]["detector"] == "cdn"
        assert ("interaction decoder random" in payload["converted"]["init"]) == fresh_inter
        has_inter = any(k.startswith("transformer.interaction_decoder.") for k in payload["model"])
        assert has_inter != fresh_inter
    capsys.readouterr()


def test_cdn_through_the_api_predict_attention_and_export(tmp_path):
    """HOIDetector, attention maps (the interaction decoder's last layer) and export work unchanged."""
    import numpy as np

    from hqm.api import HOIDetector
    from hqm.config import config_to_dict
    from hqm.engine.checkpoint import save_checkpoint
    from hqm.structures import DatasetMeta
    from hqm.zoo import export_checkpoint

    cfg, model = _cdn(["data.test_scale=96", "data.max_size=128", "eval.nms=true"])
    meta = DatasetMeta(
        "toy",
        [f"o{i}" for i in range(NUM_OBJ)],
        [f"v{i}" for i in range(NUM_VERB)],
        np.ones((NUM_VERB, NUM_OBJ), bool),
    )
    ckpt = tmp_path / "cdn.pt"
    save_checkpoint(
        ckpt, {"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}
    )
    image = torch.rand(3, 80, 100)
    for source in (ckpt, export_checkpoint(ckpt, tmp_path / "export")):
        det = HOIDetector.from_checkpoint(source, device="cpu")
        assert type(det.model).__name__ == "CDN" and det.postprocessor.nms
        preds, maps = det.predict(image, top_k=3, return_attention=True)
        assert len(preds[0].scores) == 3 and maps[0].shape[0] == 3


@pytest.mark.parametrize("key", ["model.cdn.interaction_layers", "model.hotr.interaction_layers"])
def test_an_interaction_decoder_without_layers_is_refused_by_the_config(key):
    """``model.cdn.interaction_layers=0`` passed the config and crashed in the first forward pass
    (``torch.stack`` of no layers' outputs); both interaction decoders need a layer."""
    with pytest.raises(ConfigError, match=rf"{key}=0 is out of range: it must be >= 1"):
        tiny_detector_cfg(key.split(".")[1], [f"{key}=0"])
