"""``hqm predict``: PNGs and predictions.jsonl are written and parse; sources; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_OVERRIDES
from hqm.cli import main
from hqm.config import config_to_dict, load_config
from hqm.engine.checkpoint import save_checkpoint
from hqm.models import build_model
from hqm.structures import DatasetMeta
from hqm.viz.predict_files import expand_sources


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    cfg = load_config(None, TINY_OVERRIDES + ["data.test_scale=96", "data.max_size=128"])
    meta = DatasetMeta(
        "toy",
        ["person", "ball", "cup", "dog", "kite", "bike"],
        ["hold", "kick", "ride", "look", "throw"],
        np.ones((5, 6), bool),
    )
    torch.manual_seed(0)
    model = build_model(cfg, 6, 5)
    ckpt = tmp / "model.pt"
    save_checkpoint(
        ckpt, {"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}
    )
    imgs = tmp / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(80, 100), (64, 90), (90, 72)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(imgs / f"im{i}.jpg")
    (imgs / "notes.txt").write_text("not an image")
    return {"ckpt": ckpt, "imgs": imgs, "tmp": tmp}


def test_predict_writes_pngs_and_jsonl(setup, capsys):
    out = setup["tmp"] / "out"
    rc = main(
        [
            "predict",
            str(setup["ckpt"]),
            f"source={setup['imgs']}",
            f"out={out}",
            "top_k=3",
            "threshold=0.0",
            "batch=2",
            "--attn",
            "--quiet",
        ]
    )
    assert rc == 0 and "3 images" in capsys.readouterr().out
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3
    recs = [json.loads(line) for line in lines]
    assert [r["file_name"].rsplit("/", 1)[-1] for r in recs] == ["im0.jpg", "im1.jpg", "im2.jpg"]
    assert recs[0]["height"] == 80 and recs[0]["width"] == 100 and recs[0]["hois"]
    assert {"verb_name", "object_name", "score", "subject_box", "object_box"} <= set(recs[0]["hois"][0])
    for i in range(3):
        with Image.open(out / f"im{i}.png") as im:
            assert im.mode == "RGB" and min(im.size) >= 480
        with Image.open(out / f"im{i}_attn.png") as im:
            assert im.size[0] > 256


def test_predict_glob_single_file_and_size(setup):
    out = setup["tmp"] / "out_glob"
    assert (
        main(
            [
                "predict",
                str(setup["ckpt"]),
                f"source={setup['imgs']}/im[01].jpg",
                f"out={out}",
                "size=64",
                "--quiet",
            ]
        )
        == 0
    )
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    out1 = setup["tmp"] / "out_one"
    assert (
        main(["predict", str(setup["ckpt"]), f"source={setup['imgs'] / 'im2.jpg'}", f"out={out1}", "--quiet"])
        == 0
    )
    assert (out1 / "im2.png").is_file() and not (out1 / "im2_attn.png").exists()
    assert [p.name for p in expand_sources(setup["imgs"])] == ["im0.jpg", "im1.jpg", "im2.jpg"]


def test_predict_errors_are_one_line(setup, capsys):
    assert main(["predict", str(setup["ckpt"]), f"out={setup['tmp']}"]) == 2
    assert "source=" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                str(setup["ckpt"]),
                f"source={setup['tmp']}/nothing*.png",
                f"out={setup['tmp'] / 'x'}",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no images found" in err and "Traceback" not in err


def test_predict_folder_equals_one_image_at_a_time(setup):
    """hqm predict folder/ writes, for every image, exactly the triplets of hqm predict image.jpg."""
    folder = setup["tmp"] / "out_folder"
    args = ["predict", str(setup["ckpt"]), "threshold=0.0", "top_k=3"]
    assert main([*args, f"source={setup['imgs']}", f"out={folder}", "batch=3", "--quiet"]) == 0
    together = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert len(together) == 3 and all(r["hois"] for r in together)
    for i, record in enumerate(together):
        out = setup["tmp"] / f"out_single{i}"
        assert main([*args, f"source={setup['imgs'] / f'im{i}.jpg'}", f"out={out}", "--quiet"]) == 0
        (alone,) = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert alone == record
