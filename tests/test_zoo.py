"""Checkpoint conversion (DETR -> QPIC), released layouts (QPIC, HQM) and safe loading."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import TINY_OVERRIDES
from hqm.config import load_config
from hqm.data.vocab import coco_objects
from hqm.detectors import build_model
from hqm.zoo import (
    UnsafeCheckpointError,
    convert_state_dict,
    detect_format,
    load_into_model,
    load_pretrained,
    load_weights,
    safe_torch_load,
)
from hqm.zoo.classes import dataset_object_names

# DETR's own layout, written from its published structure (not from our model): torchvision ResNet
# under backbone.0.body with frozen-BN buffers (no num_batches_tracked), post-norm transformer with
# nn.MultiheadAttention names, 92-way classifier (COCO ids + no-object 91), 3-layer box MLP.
_DROP = ("model.backbone_norm", "model.backbone_out", "model.backbone_width")  # standard-width ResNet
DETR_OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith(_DROP)]
DETR_OVERRIDES += ["model.backbone_norm=frozen", "model.backbone_out=layer4"]


def detr_state_dict(
    backbone: str = "resnet18",
    d: int = 32,
    enc: int = 1,
    dec: int = 2,
    ff: int = 64,
    queries: int = 100,
    with_backbone: bool = True,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """``device="meta"``: shapes only (full-size layouts without memory)."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape, generator=None) -> torch.Tensor:
        if device == "meta":
            return torch.empty(shape, device="meta")
        return torch.randn(shape, generator=generator)

    if with_backbone:
        net = getattr(torchvision.models, backbone)(weights=None)
        for k, v in net.state_dict().items():
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
                sd[f"backbone.0.body.{k}"] = rand(*v.shape, generator=g)
        c5 = 512 if backbone in ("resnet18", "resnet34") else 2048
        sd["input_proj.weight"] = rand(d, c5, 1, 1, generator=g)
        sd["input_proj.bias"] = rand(d, generator=g)

    def attn(prefix: str) -> None:
        sd[f"{prefix}.in_proj_weight"] = rand(3 * d, d, generator=g)
        sd[f"{prefix}.in_proj_bias"] = rand(3 * d, generator=g)
        sd[f"{prefix}.out_proj.weight"] = rand(d, d, generator=g)
        sd[f"{prefix}.out_proj.bias"] = rand(d, generator=g)

    def ffn_norms(prefix: str, norms: int) -> None:
        sd[f"{prefix}.linear1.weight"] = rand(ff, d, generator=g)
        sd[f"{prefix}.linear1.bias"] = rand(ff, generator=g)
        sd[f"{prefix}.linear2.weight"] = rand(d, ff, generator=g)
        sd[f"{prefix}.linear2.bias"] = rand(d, generator=g)
        for n in range(1, norms + 1):
            sd[f"{prefix}.norm{n}.weight"] = rand(d, generator=g)
            sd[f"{prefix}.norm{n}.bias"] = rand(d, generator=g)

    for i in range(enc):
        attn(f"transformer.encoder.layers.{i}.self_attn")
        ffn_norms(f"transformer.encoder.layers.{i}", 2)
    for i in range(dec):
        attn(f"transformer.decoder.layers.{i}.self_attn")
        attn(f"transformer.decoder.layers.{i}.multihead_attn")
        ffn_norms(f"transformer.decoder.layers.{i}", 3)
    sd["transformer.decoder.norm.weight"] = rand(d, generator=g)
    sd["transformer.decoder.norm.bias"] = rand(d, generator=g)
    sd["query_embed.weight"] = rand(queries, d, generator=g)
    sd["class_embed.weight"] = rand(92, d, generator=g)
    sd["class_embed.bias"] = rand(92, generator=g)
    for i, (a, b) in enumerate([(d, d), (d, d), (4, d)]):
        sd[f"bbox_embed.layers.{i}.weight"] = rand(a, b, generator=g)
        sd[f"bbox_embed.layers.{i}.bias"] = rand(a, generator=g)
    return sd


def test_detr_conversion_loads_into_the_detector():
    cfg = load_config(None, DETR_OVERRIDES)
    model = build_model(cfg, 80, 5)
    detr = detr_state_dict()
    assert detect_format(detr) == "detr"
    converted, conv = convert_state_dict(detr, "qpic", object_names=dataset_object_names("hico_det"))
    own = model.state_dict()
    # every converted key exists in the detector with the same shape, except the 100 DETR queries
    for k, v in converted.items():
        assert k in own, k
        if k != "query_embed.weight":
            assert v.shape == own[k].shape, k
    # with the first num_queries rows and the (fresh) verb head, the state dict loads strictly
    full = dict(converted, **{"query_embed.weight": converted["query_embed.weight"][:8]})
    full.update({k: v for k, v in own.items() if k.startswith("verb_class_embed")})
    model.load_state_dict(full, strict=True)

    report = load_into_model(build_model(cfg, 80, 5), _save(detr), "qpic", dataset_object_names("hico_det"))
    assert report.ignored == []
    assert sorted(report.fresh) == ["verb_class_embed.bias", "verb_class_embed.weight"]
    assert any(e.startswith("query_embed.weight") for e in report.reshaped)
    assert any(e.startswith("obj_class_embed.weight <- class_embed.weight") for e in report.reshaped)
    assert "sub_bbox_embed.layers.2.weight <- bbox_embed.layers.2.weight" in report.loaded
    assert "summary" not in report.summary() and "fresh (2):" in report.summary()


def _save(obj, name: str = "ckpt.pt", args: bool = True) -> str:
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), name)
    payload = {"model": obj}
    if args:
        payload["args"] = argparse.Namespace(lr=1e-4, hidden_dim=32, dataset_file="hico")
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "dataset,rows,fresh", [("hico_det", 81, []), ("vcoco", 82, [80]), ("hoia", 12, [2, 3, 4])]
)
def test_class_rows_with_true_r50_head_shapes(dataset, rows, fresh):
    detr = {
        k: v
        for k, v in detr_state_dict(d=256, with_backbone=False, enc=0, dec=0).items()
        if k.startswith(("class_embed", "bbox_embed", "query_embed"))
    }
    assert detr["class_embed.weight"].shape == (92, 256)
    names = dataset_object_names(dataset)
    out, report = convert_state_dict(detr, "qpic", object_names=names)
    w, b = out["obj_class_embed.weight"], out["obj_class_embed.bias"]
    assert w.shape == (rows, 256) and b.shape == (rows,)
    assert torch.equal(w[-1], detr["class_embed.weight"][91])  # no-object row last
    _, ids = coco_objects()
    coco_of = dict(zip(coco_objects()[0], ids))
    alias = {
        "cellphone": "cell_phone",
        "bike": "bicycle",
        "motorbike": "motorcycle",
        "ball": "sports_ball",
        "computer": "laptop",
        "document": "book",
    }
    for i, name in enumerate(names):
        cid = coco_of.get(alias.get(name, name))
        if i in fresh:
            assert cid is None and any(f"{i} ({name})" in e for e in report.fresh)
        else:
            assert torch.equal(w[i], detr["class_embed.weight"][cid]), name
    assert torch.equal(out["sub_bbox_embed.layers.0.weight"], detr["bbox_embed.layers.0.weight"])
    assert torch.equal(out["obj_bbox_embed.layers.2.bias"], detr["bbox_embed.layers.2.bias"])


def _outputs(model, seed: int = 0):
    torch.manual_seed(seed)
    images, masks = torch.randn(2, 3, 64, 80), torch.zeros(2, 64, 80, dtype=torch.bool)
    masks[1, :, 60:] = True
    model.eval()
    return model(images, masks)


@pytest.mark.parametrize("layout", ["qpic", "hqm"])
def test_released_layout_loads_with_identical_outputs(tiny_cfg, layout):
    torch.manual_seed(1)
    source = build_model(tiny_cfg, 6, 5)
    state = source.state_dict()
    if layout == "hqm":  # MuchHair/HQM: heads inside the decoder, F_p as query_embed_sp (12 -> D -> D)
        heads = ("obj_class_embed", "verb_class_embed", "sub_bbox_embed", "obj_bbox_embed")
        state = {(f"transformer.decoder.{k}" if k.startswith(heads) else k): v for k, v in state.items()}
        state["query_embed_sp.layers.0.weight"] = torch.randn(32, 12)
        state["query_embed_sp.layers.0.bias"] = torch.randn(32)
        state["query_embed_sp.layers.1.weight"] = torch.randn(32, 32)
        state["query_embed_sp.layers.1.bias"] = torch.randn(32)
    path = _save(state)
    assert detect_format(safe_torch_load(path)["model"]) == layout
    torch.manual_seed(2)
    # fine-tuning HQM weights with GBS: F_p (query_embed_sp) lands in our GBS miner
    cfg = load_config(None, TINY_OVERRIDES + ["mining.strategy=gbs"]) if layout == "hqm" else tiny_cfg
    target = build_model(cfg, 6, 5)
    report = load_weights(target, path)
    assert report.fresh == [] and report.ignored == []
    if layout == "hqm":
        fp = target.miners["gbs"].query_embed_sp
        assert torch.equal(fp[0].weight, state["query_embed_sp.layers.0.weight"])
        assert torch.equal(fp[2].bias, state["query_embed_sp.layers.1.bias"])
    ref, out = _outputs(source), _outputs(target)
    for key in ("pred_obj_logits", "pred_verb_logits", "pred_sub_boxes", "pred_obj_boxes"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=0)


def test_released_weights_give_one_answer_per_image(tmp_path, tiny_cfg):
    """Released QPIC weights loaded through the API: a 2-image batch of different sizes gives each
    image exactly its single-image outputs (no padding against the other image)."""
    import numpy as np

    from hqm import HOIDetector
    from hqm.config import save_config

    torch.manual_seed(3)
    path = _save(build_model(tiny_cfg, 80, 117).state_dict())  # {"model", "args"}: QPIC's layout
    config = tmp_path / "tiny.yaml"
    save_config(tiny_cfg, config)
    det = HOIDetector.from_checkpoint(path, device="cpu", config=config, size=64, max_size=96)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in ((48, 80), (72, 56)))
    pair = det.predict([a, b], batch_size=2)
    for image, batched in zip((a, b), pair):
        (alone,) = det.predict(image)
        assert len(alone) > 0
        for f in ("verb_labels", "obj_labels", "scores", "sub_boxes", "obj_boxes"):
            np.testing.assert_array_equal(getattr(alone, f), getattr(batched, f), err_msg=f)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path, tiny_cfg):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError) as e:
        safe_torch_load(path)
    msg = str(e.value)
    assert str(path) in msg and "system" in msg
    with pytest.raises(UnsafeCheckpointError):
        load_weights(build_model(tiny_cfg, 6, 5), str(path))
    assert not marker.exists()


def test_namespace_checkpoint_is_accepted(tmp_path):
    path = tmp_path / "ns.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4, epochs=150)}, path)
    ckpt = safe_torch_load(path)
    assert isinstance(ckpt["args"], argparse.Namespace) and ckpt["args"].epochs == 150


def _meta(names: list[str], name: str = "custom", no_object_class: int | None = None):
    """A vocabulary of ``names`` with 5 verbs, every (verb, object) pair valid."""
    from hqm.structures import DatasetMeta

    valid = torch.ones(5, len(names)).bool().numpy()
    return DatasetMeta(name, names, [f"v{i}" for i in range(5)], valid, no_object_class)


def vcoco_meta():
    """V-COCO's 80 object classes (+ no-object) with 5 verbs, every pair valid."""
    return _meta(dataset_object_names("vcoco"), "vcoco", 80)


def test_convert_cli_and_pretrained(tmp_path, capsys):
    from hqm.cli import main

    detr = detr_state_dict()
    detr["some.unknown.key"] = torch.zeros(3)
    src = _save(detr, "detr-r18.pth")
    out = tmp_path / "init.pt"
    assert main(["convert", "detr-to-hoi", src, str(out), "--dataset", "vcoco"]) == 0
    text = capsys.readouterr().out
    assert "some.unknown.key: no rule" in text and "fresh rows 80 (none)" in text and "loaded (" in text
    cfg = load_config(None, DETR_OVERRIDES)
    meta = vcoco_meta()
    model = build_model(cfg, 81, 5)
    for path in (str(out), src):  # converted file, or the raw DETR file converted on the fly
        report = load_pretrained(model, path, cfg, meta)
        assert sorted(k for k in report.fresh if ":" not in k) == [
            "verb_class_embed.bias",
            "verb_class_embed.weight",
        ]
        assert torch.equal(model.obj_class_embed.weight[0], detr["class_embed.weight"][1])  # person


def test_pretrained_weights_of_another_backbone_width_are_refused():
    """DETR weights (standard width) into a narrower backbone: the backbone would stay random, so
    ``model.pretrained`` refuses in one line naming model.backbone_width."""
    from hqm.zoo.safe_load import CheckpointError

    src = _save(detr_state_dict(), "detr-r18-w64.pth")
    cfg = load_config(None, [*DETR_OVERRIDES, "model.backbone_width=16"])
    meta = vcoco_meta()
    with pytest.raises(CheckpointError, match=r"backbone tensors of other shapes.*model.backbone_width") as e:
        load_pretrained(build_model(cfg, 81, 5), src, cfg, meta)
    assert "does not fit the model's (16," in str(e.value)  # the example names both shapes


@pytest.mark.parametrize(
    ("file_kw", "overrides", "match"),
    [  # R34 weights into R18, R18 weights into R34, a transformer of another width / depth, ...
        ({"backbone": "resnet34"}, [], r"has more blocks than this model's \(backbone\.0\.body\.layer1\.2\."),
        ({}, ["model.backbone=resnet34"], r"has fewer blocks .*the model's backbone\.0\.body\.layer1\.2\."),
        ({"d": 16, "ff": 32}, [], r"outside the backbone of other shapes .*\(16, 512.*model\.hidden_dim"),
        ({"ff": 48}, [], r"outside the backbone .*linear1\.weight: shape \(48, 32\).*model\.dim_feedforward"),
        ({}, ["model.backbone_out=layer3"], r"1 tensor outside .*input_proj.*model\.backbone_out: layer4"),
        (
            {},
            ["model.dec_layers=3"],
            r"2 layers in transformer\.decoder\.layers, fewer .*model\.dec_layers=2$",
        ),
        (
            {"enc": 2},
            ["model.enc_layers=3"],
            r"2 layers in transformer\.encoder\.layers, .*model\.enc_layers=2$",
        ),
        (
            {},
            ["model.detector=cdn", "model.cdn.interaction_layers=3"],
            r"in transformer\.interaction_decoder\.layers, .*model\.cdn\.interaction_layers=2$",
        ),
        (
            {},
            ["model.detector=hotr", "model.hotr.interaction_layers=3"],
            r"in interaction_transformer\.decoder\.layers, .*model\.hotr\.interaction_layers=2$",
        ),
        # a whole encoder / decoder stack missing while the other loads: a truncated file (the
        # example of a session's user test: it used to train with that stack random)
        (
            {"dec": 0},
            [],
            r"no layers for transformer\.decoder\.layers but has transformer\.encoder\.layers.*weights file$",
        ),
        (
            {"enc": 0},
            [],
            r"no layers for transformer\.encoder\.layers .*weights file, or set model\.enc_layers=0 if",
        ),
        (
            {"enc": 0},
            ["model.detector=hotr", "model.hotr.interaction_layers=2"],
            r"no layers for detr\.transformer\.encoder\.layers",
        ),
        (
            {},
            ["model.num_queries=200"],
            r"fewer query rows .*\(query_embed\.weight: \(100, 32\) -> first 100",
        ),
    ],
)
def test_pretrained_weights_of_another_architecture_are_refused(file_kw, overrides, match):
    """``model.pretrained`` refuses weights that would leave part of the model random behind the
    user's back (QPIC's own load_state_dict refuses them too), also with object classes COCO lacks
    (the fresh classifier rows used to take the model's width and crash the conversion)."""
    from hqm.zoo.safe_load import CheckpointError

    src = _save(detr_state_dict(**file_kw), "detr.pth", args=False)
    cfg = load_config(None, [*DETR_OVERRIDES, *overrides])
    meta = _meta(["person", "umbrella", "phone_that_coco_lacks"])
    with pytest.raises(CheckpointError, match=r"model\.pretrained=.*detr\.pth: .*" + match):
        load_pretrained(build_model(cfg, 3, 5), src, cfg, meta)


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.query_type=gaussian", "model.box_refine=true", "model.two_stage=true"],
        ["model.group_detr=2"],
        ["model.detector=cdn", "model.cdn.interaction_layers=2"],  # both decoders from DETR's layers
        # HOTR's DETR queries sit under detr.: resized to num_queries like QPIC's
        ["model.detector=hotr", "model.hotr.interaction_layers=2"],
    ],
)
def test_detr_weights_initialise_every_detector_and_query_option(overrides):
    """The refusals of ``model.pretrained`` leave the supported DETR initialisations alone: every
    DETR tensor fits (100 queries are cut to the model's num_queries), none is refused."""
    cfg = load_config(None, [*DETR_OVERRIDES, *overrides])
    report = load_pretrained(build_model(cfg, 81, 5), _save(detr_state_dict(), "d.pth"), cfg, vcoco_meta())
    assert report.misfit == [] and report.unknown == []
    assert any("query_embed.weight: (100, 32) -> first" in e for e in report.reshaped)


def test_pretrained_weights_without_transformer_layers_start_the_transformer_fresh():
    """A file with no transformer layer at all (a backbone with DETR's heads) is an initialisation
    of the backbone, not a truncated detector: loaded, the encoder and decoder listed fresh."""
    cfg = load_config(None, DETR_OVERRIDES)
    src = _save(detr_state_dict(enc=0, dec=0), "backbone.pth")
    report = load_pretrained(build_model(cfg, 81, 5), src, cfg, vcoco_meta())
    assert any(k.startswith("backbone.0.body.layer4.") for k in report.loaded)
    assert any(k.startswith("transformer.encoder.layers.0.") for k in report.fresh)
    assert any(k.startswith("transformer.decoder.layers.0.") for k in report.fresh)


def test_pretrained_weights_of_another_vocabulary_start_their_classifier_fresh(tmp_path, caplog):
    """Weights for HICO-DET's 80 objects fine-tuned on a 3-object data set: the classifier rows
    cannot be reused (one WARNING), everything else loads."""
    from hqm.cli import main

    out = tmp_path / "hico-init.pt"
    assert main(["convert", "detr-to-hoi", _save(detr_state_dict(), "detr.pth"), str(out)]) == 0
    cfg = load_config(None, DETR_OVERRIDES)
    model = build_model(cfg, 3, 5)
    with caplog.at_level("WARNING", logger="hqm.zoo"):
        report = load_pretrained(model, str(out), cfg, _meta(["person", "umbrella", "cup"]))
    assert report.misfit == ["obj_class_embed.weight", "obj_class_embed.bias"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "2 classifier tensors of another vocabulary start fresh" in warned[0]
    assert "obj_class_embed.weight: shape (81, 32) does not fit the model's (4, 32)" in warned[0]
    assert any(k.startswith("transformer.decoder") for k in report.loaded)


def test_pretrained_weights_with_more_layers_give_their_first_layers(caplog):
    """DETR's decoder into a shallower one (as CDN-S starts from DETR's first 3 of 6 decoder
    layers): the first layers load, the others are listed as ignored; nothing refused or warned."""
    cfg = load_config(None, [*DETR_OVERRIDES, "model.dec_layers=1"])
    with caplog.at_level("WARNING", logger="hqm.zoo"):
        report = load_pretrained(
            build_model(cfg, 81, 5), _save(detr_state_dict(), "d.pth"), cfg, vcoco_meta()
        )
    assert "transformer.decoder.layers.0.linear1.weight" in report.loaded
    assert "transformer.decoder.layers.1.linear1.weight" in report.unknown
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_load_partial_lists_misfitting_keys_by_name():
    """``LoadReport.misfit``: the bare model keys whose tensors had another shape (reported under
    ``ignored`` with both shapes); unknown keys are ignored but are not misfits."""
    from torch import nn

    from hqm.zoo.rename import LoadReport, load_partial

    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    state = {"0.weight": torch.zeros(5, 3), "0.bias": torch.zeros(4), "9.weight": torch.zeros(1)}
    report = load_partial(model, state)
    assert report.misfit == ["0.weight"] and report.loaded == ["0.bias"]
    assert "0.weight: shape (5, 3) does not fit the model's (4, 3)" in report.ignored
    assert "9.weight: not in the model" in report.ignored
    assert LoadReport().extend(report).misfit == ["0.weight"]
    assert "misfit" not in report.to_dict()  # a subset of ignored, not a fifth list in written reports


def test_convert_never_replaces_a_users_file_unasked(tmp_path, capsys):
    """An existing OUT (a user's file), OUT == IN and a folder as OUT are refused in one line with the
    file untouched; --overwrite replaces an earlier output."""
    from hqm.cli import main

    src = _save(detr_state_dict(), "detr-r18.pth")
    notes = tmp_path / "notes.pt"
    notes.write_text("my precious notes")
    for out in (str(notes), src, str(tmp_path)):
        before = Path(out).read_bytes() if Path(out).is_file() else None
        assert main(["convert", "detr-to-hoi", src, out]) == 2
        err = capsys.readouterr().err
        assert out in err and len(err.strip().splitlines()) == 1
        if before is not None:
            assert Path(out).read_bytes() == before
    out = tmp_path / "init.pt"
    assert main(["convert", "detr-to-hoi", src, str(out)]) == 0
    assert main(["convert", "detr-to-hoi", src, str(out)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(["convert", "detr-to-hoi", src, str(out), "--overwrite"]) == 0
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary file left


def test_weights_that_do_not_fit_are_refused_whole(tiny_cfg, tmp_path):
    """A 2-layer checkpoint into a 3-layer model (18 weights would stay random), into a 1-layer
    model (weights left over) and into a model with other query rows: refused with every key
    listed, and the model keeps its own weights."""
    from hqm.zoo import WeightsMismatchError

    torch.manual_seed(0)
    path = tmp_path / "two_layers.pt"
    torch.save({"model": build_model(tiny_cfg, 6, 5).state_dict()}, path)
    cases = [
        ("model.dec_layers=3", "18 missing from the file \\(transformer.decoder.layers.2."),
        ("model.dec_layers=1", "not in the model \\(transformer.decoder.layers.1."),
        (
            "model.num_queries=4",
            "1 with another shape \\(query_embed.weight: \\(8, 32\\) in the file vs \\(4, 32\\)",
        ),
    ]
    for override, listing in cases:
        model = build_model(load_config(None, TINY_OVERRIDES + [override]), 6, 5)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(WeightsMismatchError, match=listing) as e:
            load_weights(model, path)
        assert str(path) in str(e.value) and "nothing was loaded" in str(e.value)
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # a DETR detector file is an initialisation (no verb head), not weights to evaluate
    detr = _save(detr_state_dict(with_backbone=False))
    with pytest.raises(WeightsMismatchError, match="missing from the file.*changed when converting the detr"):
        load_weights(
            build_model(load_config(None, DETR_OVERRIDES), 80, 5), detr, dataset_object_names("hico_det")
        )


def test_mining_parameters_may_be_present_or_absent(tiny_cfg, tmp_path):
    gbs_cfg = load_config(None, TINY_OVERRIDES + ["mining.strategy=gbs"])
    torch.manual_seed(0)
    with_miner = build_model(gbs_cfg, 6, 5)
    path = tmp_path / "gbs.pt"
    torch.save({"model": with_miner.state_dict()}, path)
    plain = build_model(tiny_cfg, 6, 5)
    report = load_weights(plain, path)
    assert report.ignored and all(e.startswith("miners.gbs.") for e in report.ignored)
    assert torch.equal(plain.query_embed.weight, with_miner.query_embed.weight)
    plain_path = tmp_path / "plain.pt"
    torch.save({"model": plain.state_dict()}, plain_path)
    assert load_weights(build_model(gbs_cfg, 6, 5), plain_path).ignored == []


def test_own_checkpoints_with_spatial_queries_are_recognised():
    # a demo checkpoint (gaussian queries, no mining) must not be read as a released QPIC file,
    # whose table has no rule for spatial_queries.* (hqm eval refused the demo's own weights)
    cfg = load_config(None, TINY_OVERRIDES + ["model.query_type=gaussian", "model.box_refine=true"])
    state = build_model(cfg, 6, 5).state_dict()
    assert detect_format(state) == "ours"
    assert detect_format(build_model(load_config(None, TINY_OVERRIDES), 6, 5).state_dict()) == "qpic"


@pytest.mark.parametrize(
    ("detector", "stack", "fresh_init"),
    [
        ("hotr", "interaction_transformer.decoder.layers.", "fresh"),
        ("cdn", "transformer.interaction_decoder.", "released"),
    ],
)
def test_a_checkpoint_without_its_interaction_decoder_is_refused_as_pretrained(
    detector, stack, fresh_init, tmp_path
):
    """A trained HOTR / CDN checkpoint (its config names the detector) must hold the interaction
    decoder: without it (a truncated / filtered file) ``model.pretrained`` refuses instead of training
    it from random (a CDN file without one reads as QPIC layout: refused all the same). DETR weights
    and ``hqm convert`` files of an init that leaves it random still load."""
    from conftest import DETECTOR_OVERRIDES
    from hqm.cli import main
    from hqm.config import config_to_dict
    from hqm.zoo.safe_load import CheckpointError

    cfg = load_config(None, DETR_OVERRIDES + DETECTOR_OVERRIDES[detector])
    meta = _meta(dataset_object_names("hico_det"), "hico_det")
    trained = build_model(cfg, 80, 5).state_dict()
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"
    torch.save({"model": trained, "config": config_to_dict(cfg)}, whole)
    torch.save(
        {
            "model": {k: v for k, v in trained.items() if not k.startswith(stack)},
            "config": config_to_dict(cfg),
        },
        cut,
    )
    assert not load_pretrained(build_model(cfg, 80, 5), str(whole), cfg, meta).fresh
    with pytest.raises(CheckpointError, match=r"no layers for .*interaction.* checkpoint of this detector"):
        load_pretrained(build_model(cfg, 80, 5), str(cut), cfg, meta)
    converted = tmp_path / "init.pt"
    detr = _save(detr_state_dict(queries=8), "detr-r18.pth")
    assert (
        main(["convert", "detr-to-hoi", detr, str(converted), "--detector", detector, "--init", fresh_init])
        == 0
    )
    report = load_pretrained(build_model(cfg, 80, 5), str(converted), cfg, meta)
    assert any(e.startswith(stack) for e in report.fresh)
    load_pretrained(build_model(cfg, 80, 5), detr, cfg, meta)  # (the default init copies DETR's decoder)


def test_convert_says_what_hoi_weights_are_and_how_to_use_them(tiny_root, tmp_path, capsys):
    """``hqm convert detr-to-hoi`` of a trained CDN checkpoint said "set model.detector=cdn" (convert has
    no such option) and with ``--detector cdn`` "expected a DETR checkpoint ..., found cdn weights"; a
    HOTR checkpoint got "unrecognised checkpoint layout". Now one line (exit 2) says what the file is and
    how to use it as it is; model.pretrained= keeps its model.detector advice."""
    from conftest import tiny_checkpoint
    from hqm.cli import main
    from hqm.zoo.safe_load import CheckpointError

    out = tmp_path / "out.pt"

    def refused(src, *needles, options=()):
        assert main(["convert", "detr-to-hoi", *options, str(src), str(out)]) == 2
        err = capsys.readouterr().err
        line = err.strip().splitlines()[-1]
        assert "Traceback" not in err and line.startswith(f"hqm convert: error: {src} "), line
        assert "not DETR weights" in line and "set model.detector" not in line, line
        for needle in needles:
            assert needle in line, (needle, line)

    for det in ("qpic", "cdn", "hotr"):
        ckpt = tiny_checkpoint(tiny_root, tmp_path / f"{det}.pt", det)
        pretrained = f"model.pretrained={ckpt}" + ("" if det == "qpic" else f" with model.detector={det}")
        for options in ((), ("--detector", "cdn"), ("--detector", "hotr")):
            refused(
                ckpt,
                f"is already a trained {det} checkpoint",
                f"hqm eval {ckpt},",
                pretrained,
                options=options,
            )
    # weights without a config (released-style): the config goes with them
    bare = tmp_path / "bare.pth"
    torch.save({"model": safe_torch_load(tmp_path / "cdn.pt")["model"]}, bare)
    refused(bare, "already holds trained cdn weights (CDN layout, no hqm config)", f"CONFIG weights={bare}")
    # an earlier conversion
    init = tmp_path / "init.pt"
    assert main(["convert", "detr-to-hoi", _save(detr_state_dict()), str(init), "--detector", "cdn"]) == 0
    capsys.readouterr()
    refused(init, "initialisation written by hqm convert (DETR -> cdn)", f"model.pretrained={init} with")
    assert not out.exists()
    # the loaders' advice is unchanged: there model.detector is the option to set
    with pytest.raises(CheckpointError, match="these look like cdn weights: set model.detector=cdn"):
        detect_format(safe_torch_load(bare)["model"], "qpic", bare)
