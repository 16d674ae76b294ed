"""The Python API: HOIDetector loading, every input kind of predict, attention maps, export, evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_OVERRIDES
from hqm.config import config_to_dict, load_config
from hqm.detectors import build_model
from hqm.engine.checkpoint import save_checkpoint
from hqm.structures import HOIPredictions


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny (untrained) QPIC checkpoint on the tiny synthetic benchmark + a few test images."""
    from hqm.data import build_meta
    from hqm.data.synthetic import generate

    tmp = tmp_path_factory.mktemp("api")
    root = generate(tmp / "synth", preset="tiny")
    cfg = load_config(
        None,
        TINY_OVERRIDES
        + [
            "data.dataset=synthetic",
            f"data.root={root}",
            "data.test_scale=96",
            "data.max_size=128",
            "eval.batch_size=4",
        ],
    )
    meta = build_meta(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
    ckpt = tmp / "last.pt"
    save_checkpoint(
        ckpt,
        {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "meta": meta.to_dict(),
            "metrics": {"mAP_full": 1.5},
            "epoch": 1,
            "step": 3,
        },
    )
    rng = np.random.default_rng(0)
    images = []
    for i, (h, w) in enumerate([(80, 110), (96, 64), (70, 70)]):
        path = tmp / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        images.append(path)
    return {"ckpt": ckpt, "images": images, "meta": meta, "root": root, "tmp": tmp}


@pytest.fixture(scope="module")
def detector(trained):
    from hqm import HOIDetector

    return HOIDetector.from_checkpoint(trained["ckpt"], device="cpu", batch_size=2)


def _check(pred: HOIPredictions, size: tuple[int, int], meta) -> None:
    assert isinstance(pred, HOIPredictions) and pred.image_size == size
    rec = json.loads(pred.to_json())
    assert rec["height"] == size[0] and rec["width"] == size[1]
    for hoi in rec["hois"]:
        assert hoi["verb_name"] in meta.verb_names and hoi["object_name"] in meta.object_names
        assert hoi["subject_box"][2] <= size[1] + 1e-3 and hoi["subject_box"][3] <= size[0] + 1e-3


def test_predict_every_input_kind(detector, trained):
    meta, paths = trained["meta"], trained["images"]
    single = detector.predict(paths[0], top_k=5)
    assert len(single) == 1 and len(single[0]) == 5 and single[0].file_name == str(paths[0])
    _check(single[0], (80, 110), meta)
    many = detector.predict(paths, threshold=0.0, top_k=3)
    assert [p.image_size for p in many] == [(80, 110), (96, 64), (70, 70)]
    (ref,) = detector.predict(paths[1], top_k=3)
    pil = Image.open(paths[1]).convert("RGB")
    arr = np.array(pil)
    for inp in (pil, arr):
        (p,) = detector.predict(inp, top_k=3)
        _check(p, (96, 64), meta)
        np.testing.assert_allclose(p.scores, ref.scores, rtol=1e-4, atol=1e-5)
    batch = torch.stack([torch.from_numpy(arr).permute(2, 0, 1).float() / 255] * 2)  # (B, 3, H, W)
    out = detector.predict(batch, top_k=3)
    assert len(out) == 2 and out[0].image_size == (96, 64)
    # float-tensor resizing differs from PIL's uint8 resizing by rounding only
    np.testing.assert_allclose(out[0].scores, ref.scores, atol=2e-3)
    np.testing.assert_array_equal(out[0].scores, out[1].scores)
    hi = detector.predict(paths, threshold=float(many[0].scores[0]) + 1e-6)
    assert len(hi[0]) == 0


def _same(a: HOIPredictions, b: HOIPredictions) -> None:
    for f in ("verb_labels", "obj_labels", "scores", "sub_boxes", "obj_boxes"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


def test_one_image_one_answer(detector, trained):
    """A list gives every image exactly the triplets it gets alone, whatever the batch size: only
    images of one input size share a forward pass, unpadded. Padding the batch to its largest image
    (``eval.batching=padded``, the released code's batching) changes the smaller images' scores."""
    import copy

    from hqm import HOIDetector

    paths = trained["images"]  # three different input sizes
    alone = [detector.predict(p)[0] for p in paths]
    for bs in (2, 3):
        preds = detector.predict(paths, batch_size=bs)
        assert [p.file_name for p in preds] == [str(p) for p in paths]
        for a, b in zip(alone, preds):
            _same(a, b)
    cfg = copy.deepcopy(detector.cfg)
    cfg.eval.batching = "padded"
    padded = HOIDetector(detector.model, cfg, detector.meta, device="cpu").predict(paths, batch_size=3)
    # inputs 93 x 128, 128 x 85 and 96 x 96 are all padded to 128 x 128: every image's scores move
    for a, b in zip(alone, padded):
        assert np.abs(np.sort(a.scores) - np.sort(b.scores)).max() > 1e-4


def test_same_size_images_batch_without_padding(detector, trained):
    """Two images of one size run as one batch of two, even with another size between them: equal to
    one at a time up to the rounding of batched kernels."""
    rng = np.random.default_rng(1)
    pics = [Image.fromarray(rng.integers(0, 255, (80, 110, 3), dtype=np.uint8)) for _ in range(2)]
    other = trained["images"][1]  # another size, between them: it runs alone, results stay in order
    first, middle, last = detector.predict([pics[0], other, pics[1]], batch_size=2)
    _same(middle, detector.predict(other)[0])
    together = [first, last]
    for pic, p in zip(pics, together):
        (one,) = detector.predict(pic)
        assert (one.verb_labels == p.verb_labels).all() and (one.obj_labels == p.obj_labels).all()
        np.testing.assert_allclose(one.scores, p.scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(one.sub_boxes, p.sub_boxes, rtol=0, atol=1e-3)


def test_input_size_is_configurable(detector, trained):
    images, masks, sizes, orig = detector.preprocess([(trained["images"][0], "a")], size=64)
    assert tuple(sizes[0].tolist()) == (64, 88) and tuple(orig[0].tolist()) == (80, 110)
    assert images.shape[-2:] == (64, 88) and not masks.any()  # one image: no padding


def test_attention_maps_stay_at_feature_resolution(detector, trained):
    """Maps cover the image's feature cells (stride 16 here), not its pixels: a 3-megapixel input
    gets maps as small as a thumbnail's (at the original size, 100 maps would take 1.2 GB)."""
    paths = trained["images"][:2]
    preds, maps = detector.predict(paths, top_k=4, return_attention=True)
    _, _, sizes, _ = detector.preprocess([(p, "") for p in paths])
    for p, m, (h, w) in zip(preds, maps, sizes.tolist()):
        assert m.shape == (len(p), -(-h // 16), -(-w // 16)) and m.dtype == np.float32
        assert np.allclose(m.reshape(len(p), -1).max(1), 1.0) and m.min() >= 0
    (p,), (m,) = detector.predict(np.zeros((1500, 2000, 3), np.uint8), top_k=100, return_attention=True)
    assert p.image_size == (1500, 2000) and m.shape == (len(p), 6, 8)  # input 96 x 128


def test_grey_arrays_exif_photos_and_ambiguous_inputs(detector, tmp_path):
    from test_images import oriented_photo

    grey = np.random.default_rng(1).integers(0, 255, (70, 90), dtype=np.uint8)
    (p,) = detector.predict(grey, top_k=3)
    assert p.image_size == (70, 90)  # H x W grey, not an image 3 pixels wide
    (ref,) = detector.predict(np.stack([grey] * 3, -1), top_k=3)
    np.testing.assert_array_equal(p.scores, ref.scores)
    photo = tmp_path / "portrait.jpg"
    oriented_photo(photo)  # stored 100 x 40, EXIF orientation 6
    (p,) = detector.predict(photo, top_k=3)
    assert p.image_size == (100, 40)  # (h, w) of the upright photo
    from PIL import Image

    from hqm.api import _original_size

    with Image.open(photo) as opened:  # an opened PIL image is grouped by its upright size too
        assert _original_size(opened) == _original_size(photo) == (100, 40)
    for bad in (np.zeros((3, 70, 90), np.uint8), torch.randn(1, 3, 40, 50), np.zeros((40, 50, 3), np.int32)):
        with pytest.raises(ValueError, match=str(tuple(bad.shape[-3:]))):
            detector.predict(bad)


def test_prediction_options_and_inputs_are_checked_as_the_cli_checks_them(detector, trained):
    """top_k=-1 silently returned all but the last triplet (a slice), threshold=1.5 / nan and size=0
    passed in silence, size=-5 blamed the image, predict(5) was a TypeError from deep inside."""
    from hqm import HOIDetector
    from hqm.api import PredictOptionError

    image = np.zeros((40, 50, 3), np.uint8)
    bad = [
        {"top_k": -1}, {"top_k": 0}, {"top_k": 2.5}, {"top_k": True},
        {"threshold": -0.1}, {"threshold": 1.5}, {"threshold": float("nan")}, {"threshold": "0.3"},
        {"threshold": None}, {"size": 0}, {"size": -5}, {"size": 64.5}, {"batch_size": 0},
    ]  # fmt: skip
    for options in bad:
        ((key, value),) = options.items()
        with pytest.raises(PredictOptionError, match=f"^{key}={value!r}: must be"):
            detector.predict(image, **options)
    with pytest.raises(PredictOptionError, match="top_k=0"):
        next(detector.iter_predict([image], top_k=0))
    for nothing in (5, None):
        with pytest.raises(PredictOptionError, match="give a path, a PIL image, an array, a tensor"):
            detector.predict(nothing)
    for listed in ([image, 5], [None]):  # an AttributeError from deep inside
        with pytest.raises(PredictOptionError, match=r"item \d of the input list is a (int|NoneType)"):
            detector.predict(listed)
    import hqm

    assert hqm.PredictOptionError is PredictOptionError
    with pytest.raises(PredictOptionError, match="size=0"):
        HOIDetector.from_checkpoint(trained["ckpt"], size=0)
    assert len(detector.predict(image, threshold=1, top_k=1)[0]) <= 1  # the bounds themselves pass


def test_export_roundtrip(detector, trained, tmp_path):
    from hqm import HOIDetector
    from hqm.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(trained["ckpt"]), str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    before = (out / "model.safetensors").read_bytes()
    assert (
        main(["export", str(trained["ckpt"]), str(out)]) == 2
    )  # an earlier export is never replaced unasked
    assert (out / "model.safetensors").read_bytes() == before
    assert main(["export", str(trained["ckpt"]), str(out), "--overwrite"]) == 0
    import yaml

    info = yaml.safe_load((out / "config.yaml").read_text())
    assert info["hqm_export"]["metrics"]["mAP_full"] == 1.5 and info["hqm_export"]["detector"] == "qpic"
    assert info["meta"]["object_names"] == trained["meta"].object_names
    assert info["config"]["model"]["hidden_dim"] == 32
    again = HOIDetector.from_checkpoint(out, device="cpu")
    a, b = detector.predict(trained["images"][0], top_k=5), again.predict(trained["images"][0], top_k=5)
    np.testing.assert_array_equal(a[0].scores, b[0].scores)
    # the export's own files given one by one: model.safetensors was "released weights? name a
    # config", and its config.yaml "unknown config key 'hqm_export'"
    by_file = HOIDetector.from_checkpoint(out / "model.safetensors", device="cpu")
    np.testing.assert_array_equal(by_file.predict(trained["images"][0], top_k=5)[0].scores, a[0].scores)
    from hqm.config import load_config

    assert load_config(out / "config.yaml").model.hidden_dim == 32
    # a hand-edited export's config with a typo: the error names the export, not only the key
    info["config"]["train"]["lrr"] = 1.0
    (out / "config.yaml").write_text(yaml.safe_dump(info))
    from hqm.config import ConfigError

    with pytest.raises(ConfigError, match=r"exported: its config: unknown config key 'train\.lrr'"):
        HOIDetector.from_checkpoint(out, device="cpu")


def test_evaluate_needs_no_training_images(detector, trained, tmp_path):
    """The engine's evaluator on a dataset root; the training split is read from its annotation file
    only (the rare split), so a root without training images gives the same metrics."""
    import shutil

    metrics = detector.evaluate(trained["root"], batch_size=4)
    assert {"mAP_full", "mAP_rare", "mAP_nonrare", "mean_max_recall"} <= set(metrics)
    bare = tmp_path / "bare"
    shutil.copytree(trained["root"] / "annotations", bare / "annotations")
    shutil.copytree(trained["root"] / "images" / "test2015", bare / "images" / "test2015")
    assert detector.evaluate(bare, batch_size=1) == pytest.approx(metrics, rel=0, abs=0, nan_ok=True)


def test_evaluate_never_generates_and_checks_the_classes(detector, trained, tmp_path):
    """The synthetic-trained detector pointed at a HICO-DET root: an error naming the missing file,
    not 2,400 generated images scored as if they were HICO-DET."""
    from hqm.data import DatasetError

    hico = tmp_path / "hico_20160224_det"
    with pytest.raises(DatasetError, match="annotations/meta.json not found"):
        detector.evaluate(hico)
    assert not hico.exists()
    with pytest.raises(DatasetError, match="no hico_det dataset.*annotations/trainval_hico.json not found"):
        detector.evaluate(hico, dataset="hico_det")
    assert not hico.exists()
    # a HICO-DET root (the packaged 80-object vocabulary): other classes, refused
    (hico / "annotations").mkdir(parents=True)
    for name in ("trainval_hico.json", "test_hico.json"):
        (hico / "annotations" / name).write_text("[]")
    with pytest.raises(ValueError, match="object classes differ \\(11 vs 80"):
        detector.evaluate(hico, dataset="hico_det")


def test_eval_and_predict_build_the_model_from_the_checkpoint(trained, tmp_path, capsys):
    """``hqm eval`` with ``model.dec_layers=3`` on a 2-layer checkpoint used to leave 18 weights random,
    warn after the metrics and exit 0: now it refuses before evaluating. A config file given with
    the weights does not rebuild the model: what it would change is said."""
    import yaml

    from hqm import HOIDetector
    from hqm.cli import main
    from hqm.zoo import WeightsMismatchError

    ckpt = trained["ckpt"]
    assert main(["eval", str(ckpt), "model.dec_layers=3", "--json"]) == 2
    captured = capsys.readouterr()
    assert "18 missing from the file (transformer.decoder.layers.2." in captured.err
    # the action first: the override that does not fit the weights
    assert (
        "error: drop the override model.dec_layers 2 -> 3 (the checkpoint's value -> yours)" in captured.err
    )
    assert (
        "model.dec_layers 2 -> 3" in captured.err and captured.out == "" and "Traceback" not in captured.err
    )
    with pytest.raises(WeightsMismatchError, match="^drop the override model.dec_layers 2 -> 3.*18 missing"):
        HOIDetector.from_checkpoint(ckpt, device="cpu", overrides=["model.dec_layers=3"])

    other = tmp_path / "three_layers.yaml"
    own = torch.load(ckpt, weights_only=True)["config"]
    other.write_text(yaml.safe_dump({**own, "model": {**own["model"], "dec_layers": 3}}))
    det = HOIDetector.from_checkpoint(ckpt, device="cpu", config=other)  # logger hqm: on stderr here
    assert len(det.model.transformer.decoder.layers) == 2
    assert "would change model.dec_layers 2 -> 3" in capsys.readouterr().err
    assert main(["eval", str(other), f"weights={ckpt}", "data.num_workers=0", "--json"]) == 0
    captured = capsys.readouterr()
    assert "would change model.dec_layers 2 -> 3" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["mAP_full"] >= 0.0

    # weights trained on other classes than the dataset's are refused before evaluating
    hico = tmp_path / "hico"
    (hico / "annotations").mkdir(parents=True)
    for name in ("trainval_hico.json", "test_hico.json"):
        (hico / "annotations" / name).write_text("[]")
    assert main(["eval", str(ckpt), "data.dataset=hico_det", f"data.root={hico}"]) == 2
    assert "trained on other classes" in capsys.readouterr().err


def test_predicted_boxes_are_clipped_to_the_image(trained, monkeypatch):
    """``predict`` returns boxes inside the image (torchvision's detectors do too). The box heads'
    last bias is raised so that the raw boxes (width and height near the image's) cross the border:
    the check is not vacuous."""
    from hqm import HOIDetector

    paths = trained["images"]
    detector = HOIDetector.from_checkpoint(trained["ckpt"], device="cpu")
    with torch.no_grad():
        for head in (detector.model.sub_bbox_embed, detector.model.obj_bbox_embed):
            head.layers[-1].bias[2:] += 3.0  # sigmoid: w, h ~ 0.95 of the image

    def inside(p: HOIPredictions) -> bool:
        h, w = p.image_size
        boxes = np.concatenate([p.sub_boxes, p.obj_boxes])
        return bool((boxes >= 0).all() and (boxes[:, 0::2] <= w).all() and (boxes[:, 1::2] <= h).all())

    clipped = detector.predict(paths)
    assert all(inside(p) for p in clipped)
    monkeypatch.setattr(HOIPredictions, "clipped", lambda self: self)
    raw = detector.predict(paths)
    assert not all(inside(p) for p in raw)
    for c, r in zip(clipped, raw):  # the same triplets, only the boxes moved onto the border
        np.testing.assert_array_equal(c.scores, r.scores)
        np.testing.assert_array_equal(
            c.sub_boxes, np.clip(r.sub_boxes, 0, [c.image_size[1], c.image_size[0]] * 2)
        )


def test_clipped_keeps_no_object_boxes_and_unknown_sizes():
    from hqm.evaluation.testing import make_predictions

    p = make_predictions(
        "a", [([-5, 2, 30, 50], [0, 0, 0, 0], 1, 2, 0.9), ([1, 1, 5, 5], [8, -1, 12, 9], 0, 0, 0.5)]
    )
    assert p.clipped() is p  # image_size (0, 0): nothing to clip to
    p.image_size = (40, 20)  # height, width
    c = p.clipped()
    np.testing.assert_array_equal(c.sub_boxes, [[0, 2, 20, 40], [1, 1, 5, 5]])
    np.testing.assert_array_equal(c.obj_boxes, [[0, 0, 0, 0], [8, 0, 12, 9]])
    np.testing.assert_array_equal(p.sub_boxes[0], [-5, 2, 30, 50])  # the original is not modified
