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


def test_batching_keeps_order(detector, trained):
    """Batches of 1, 2 and 3 give one result per image, in input order (padding may change scores
    slightly, as in DETR: the backbone sees the padded border)."""
    paths = trained["images"]
    for bs in (1, 2, 3):
        preds = detector.predict(paths, top_k=10, batch_size=bs)
        assert [p.file_name for p in preds] == [str(p) for p in paths]
        assert [p.image_size for p in preds] == [(80, 110), (96, 64), (70, 70)]


def test_input_size_is_configurable(detector, trained):
    images, masks, sizes, orig = detector.preprocess([(trained["images"][0], "a")], size=64)
    assert tuple(sizes[0].tolist()) == (64, 88) and tuple(orig[0].tolist()) == (80, 110)
    assert images.shape[-2] == 64 and images.shape[-1] >= 88  # the batch may pad to a multiple of 32
    assert not masks[0, :, :88].any() and masks[0, :, 88:].all()


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
    for bad in (np.zeros((3, 70, 90), np.uint8), torch.randn(1, 3, 40, 50), np.zeros((40, 50, 3), np.int32)):
        with pytest.raises(ValueError, match=str(tuple(bad.shape[-3:]))):
            detector.predict(bad)


def test_export_roundtrip(detector, trained, tmp_path):
    from hqm import HOIDetector
    from hqm.cli import main

    out = tmp_path / "exported"
    assert main(["export", str(trained["ckpt"]), str(out)]) == 0
    assert (out / "model.safetensors").is_file()
    import yaml

    info = yaml.safe_load((out / "config.yaml").read_text())
    assert info["hqm_export"]["metrics"]["mAP_full"] == 1.5 and info["hqm_export"]["detector"] == "qpic"
    assert info["meta"]["object_names"] == trained["meta"].object_names
    assert info["config"]["model"]["hidden_dim"] == 32
    again = HOIDetector.from_checkpoint(out, device="cpu")
    a, b = detector.predict(trained["images"][0], top_k=5), again.predict(trained["images"][0], top_k=5)
    np.testing.assert_array_equal(a[0].scores, b[0].scores)


def test_evaluate_runs_the_engine(detector, trained):
    metrics = detector.evaluate(trained["root"], batch_size=4)
    assert "mAP_full" in metrics and 0.0 <= metrics["mAP_full"] <= 100.0


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
    assert (
        "model.dec_layers 2 -> 3" in captured.err and captured.out == "" and "Traceback" not in captured.err
    )
    with pytest.raises(WeightsMismatchError, match="18 missing"):
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
