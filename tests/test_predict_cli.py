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
from hqm.detectors import build_model
from hqm.engine.checkpoint import save_checkpoint
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
    # a mistyped option was taken for a config key ("unknown config key 'thresold'. Valid keys: data, ...")
    argv = ["predict", str(setup["ckpt"]), f"source={setup['imgs']}", f"out={setup['tmp'] / 'x'}"]
    assert main([*argv, "thresold=0.3"]) == 2
    assert "unknown option thresold= (did you mean threshold=?)" in capsys.readouterr().err
    assert main([*argv, "foo"]) == 2
    assert "unrecognized argument 'foo'" in capsys.readouterr().err
    # weights= beside a checkpoint was ignored in silence (the predictions came from the checkpoint)
    assert main([*argv, f"weights={setup['ckpt']}"]) == 2
    assert "goes with a config" in capsys.readouterr().err
    # an empty out= wrote into the current folder
    assert main([*argv[:-1], "out="]) == 2
    assert "out=... is required (it is empty)" in capsys.readouterr().err
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
    assert _predict(setup, setup["tmp"] / "nope", setup["tmp"] / "x") == 2
    err = capsys.readouterr().err
    assert "nope does not exist" in err and len(err.strip().splitlines()) == 1
    for bad in ("2", "-1", "nan"):  # a triplet score is in [0, 1]
        assert _predict(setup, setup["imgs"], setup["tmp"] / "x", f"threshold={bad}") == 2
        err = capsys.readouterr().err
        assert (
            f"threshold={bad}: must be a number between 0 and 1" in err and len(err.strip().splitlines()) == 1
        )
    assert not (setup["tmp"] / "x").exists()


def _predict(setup, source, out, *extra) -> int:
    return main(["predict", str(setup["ckpt"]), f"source={source}", f"out={out}", *extra, "--quiet"])


def test_predict_never_overwrites_an_input(setup, capsys):
    src = setup["tmp"] / "own"
    src.mkdir()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(src / "a.png")
    before = (src / "a.png").read_bytes()
    assert _predict(setup, src, src) == 2  # out= the source folder: a.png would be drawn over a.png
    err = capsys.readouterr().err
    assert "holds the input images" in err and "a.png" in err and "Traceback" not in err
    assert (src / "a.png").read_bytes() == before and not (src / "predictions.jsonl").exists()
    assert _predict(setup, src / "a.png", src) == 2  # a single file: the same
    assert _predict(setup, src, src / "a.png") == 2  # out= a file
    assert "is a file" in capsys.readouterr().err and (src / "a.png").read_bytes() == before


def test_distinct_outputs_skipped_files_and_upright_photos(setup, capsys):
    """a.jpg / a.png would both write a.png; x.jpg's attention panel and x_attn.jpg's drawing would
    both be x_attn.png: every such input gets a longer, distinct name. Unreadable files are skipped
    with one warning each and counted; a phone photo is predicted and drawn upright."""
    from test_images import oriented_photo

    src = setup["tmp"] / "clash"
    src.mkdir()
    colours = {"a.jpg": 30, "a.png": 220, "x.jpg": 120, "x_attn.jpg": 60}
    for name, c in colours.items():
        Image.fromarray(np.full((40, 60 + c // 10, 3), c, np.uint8)).save(src / name)
    (src / "cut.jpg").write_bytes((src / "a.jpg").read_bytes()[:300])
    (src / "text.png").write_text("not a picture")
    oriented_photo(src / "phone.jpg")  # stored 100 x 40, EXIF orientation 6
    out = setup["tmp"] / "clash_out"
    assert _predict(setup, src, out, "batch=3", "--attn") == 0
    captured = capsys.readouterr()
    assert "5 images, 2 skipped" in captured.out and "same name" in captured.err
    warnings = [line for line in captured.err.splitlines() if "skipped an image" in line]
    assert len(warnings) == 2 and "cut.jpg" in warnings[0] and "text.png" in warnings[1]
    written = {p.name for p in out.iterdir()}
    expected = ["a_jpg", "a_png", "x_attn_jpg", "x_jpg", "phone"]
    assert written == {f"{n}.png" for n in expected} | {f"{n}_attn.png" for n in expected} | {
        "predictions.jsonl"
    }
    recs = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    recs = {r["file_name"].rsplit("/", 1)[-1]: r for r in recs}
    assert sorted(recs) == sorted([*colours, "phone.jpg"])
    assert (recs["phone.jpg"]["height"], recs["phone.jpg"]["width"]) == (100, 40)  # upright
    with Image.open(out / "phone.png") as im:
        assert im.size[1] > im.size[0]  # drawn upright (portrait)
    # each drawing shows its own input (widths differ per input); short side upscaled to 480
    for name, c in colours.items():
        with Image.open(out / f"{name.replace('.', '_')}.png") as im:
            assert im.size == (round((60 + c // 10) * 12), 480)
    bad_only = setup["tmp"] / "bad_only"
    bad_only.mkdir()
    (bad_only / "cut.jpg").write_bytes((src / "cut.jpg").read_bytes())
    assert _predict(setup, bad_only, setup["tmp"] / "bad_out") == 1
    assert "0 images, 1 skipped" in capsys.readouterr().out
    assert not (setup["tmp"] / "bad_out").exists()  # nothing predicted: no folder, no empty JSONL


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


def test_predict_refuses_an_earlier_runs_outputs_unless_overwrite(setup, capsys):
    out = setup["tmp"] / "again"
    assert _predict(setup, setup["imgs"] / "im0.jpg", out) == 0
    (out / "mine.txt").write_text("a user's own file")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # refused before anything is written
    assert _predict(setup, setup["imgs"] / "im0.jpg", out) == 2
    err = capsys.readouterr().err
    assert "already holds predictions.jsonl, im0.png: this run would write" in err and "--overwrite" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # another input into the same folder still finds predictions.jsonl there
    assert _predict(setup, setup["imgs"] / "im1.jpg", out) == 2
    assert _predict(setup, setup["imgs"] / "im1.jpg", out, "--overwrite") == 0
    assert (out / "im1.png").is_file() and (out / "mine.txt").read_text() == "a user's own file"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["file_name"].endswith("im1.jpg")
    # a fresh folder or one with unrelated files only needs no flag
    other = setup["tmp"] / "unrelated"
    other.mkdir()
    (other / "notes.md").write_text("x")
    assert _predict(setup, setup["imgs"] / "im2.jpg", other) == 0


def test_predict_refuses_a_size_far_beyond_the_training_inputs(setup, capsys):
    out = setup["tmp"] / "huge"
    # the config: data.max_size=128, data.test_scale=96 -> at most 4 x 128 = 512
    assert _predict(setup, setup["imgs"] / "im0.jpg", out, "size=100000") == 2
    err = capsys.readouterr().err
    assert "size=100000 is more than 4x the largest input" in err and "at most 512" in err
    assert "Traceback" not in err and not (out / "predictions.jsonl").exists()
    assert _predict(setup, setup["imgs"] / "im0.jpg", out, "size=512") == 0


def test_predict_summary_counts_in_the_singular(setup, capsys):
    assert _predict(setup, setup["imgs"] / "im0.jpg", setup["tmp"] / "one_image", "threshold=1") == 0
    assert "hqm predict: 1 image, 0 triplets ->" in capsys.readouterr().out


def _tree(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.is_symlink()}


def test_predict_never_writes_through_a_link(setup, capsys):
    """A symbolic link at an output name (to an input, to a file elsewhere, dangling) is refused, with
    or without --overwrite, before anything is written; a hard link at an output name is replaced,
    not written into: the input it also names keeps its content."""
    src = setup["tmp"] / "linked_src"
    src.mkdir()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(src / "p0.png")
    image = (src / "p0.png").read_bytes()
    precious = setup["tmp"] / "precious.txt"
    precious.write_text("precious")
    elsewhere = setup["tmp"] / "elsewhere.jsonl"
    links = {
        "to_input": ("p0.png", "../linked_src/p0.png"),
        "to_file": ("predictions.jsonl", "../precious.txt"),
        "dangling": ("predictions.jsonl", str(elsewhere)),
    }
    for case, (name, target) in links.items():
        out = setup["tmp"] / f"linked_{case}"
        out.mkdir()
        (out / name).symlink_to(target)
        for flags in ([], ["--overwrite"]):
            assert _predict(setup, src, out, *flags) == 2, (case, flags)
            err = capsys.readouterr().err
            assert f"{name} -> {target} is a symbolic link" in err and len(err.strip().splitlines()) == 1
            assert [p.name for p in out.iterdir()] == [name] and (out / name).is_symlink()
    assert (src / "p0.png").read_bytes() == image and precious.read_text() == "precious"
    assert not elsewhere.exists()
    # a hard link to the input at the output name: --overwrite replaces the name, the input is kept
    out = setup["tmp"] / "hard_linked"
    out.mkdir()
    (out / "p0.png").hardlink_to(src / "p0.png")
    assert _predict(setup, src, out) == 2 and "--overwrite" in capsys.readouterr().err
    assert _predict(setup, src, out, "--overwrite") == 0
    assert (src / "p0.png").read_bytes() == image and (src / "p0.png").stat().st_nlink == 1
    assert (out / "p0.png").read_bytes() != image and sorted(_tree(out)) == ["p0.png", "predictions.jsonl"]
    # a folder at an output name: refused, --overwrite or not
    out = setup["tmp"] / "folder_at_name"
    (out / "p0.png").mkdir(parents=True)
    assert _predict(setup, src, out, "--overwrite") == 2
    assert "p0.png is not a plain file" in capsys.readouterr().err


def test_predict_names_a_users_file_without_calling_it_an_earlier_run(setup, capsys):
    out = setup["tmp"] / "users"
    out.mkdir()
    (out / "im0.png").write_text("userdata")
    assert _predict(setup, setup["imgs"], out) == 2
    err = capsys.readouterr().err
    assert "earlier run" not in err and len(err.strip().splitlines()) == 1
    assert f"out={out} already holds im0.png: this run would write a file of that name" in err
    assert f"new folder (e.g. out={out}_2)" in err and "--overwrite to replace it" in err
    assert _tree(out) == {"im0.png": b"userdata"}


def test_predict_skips_an_image_too_elongated_to_resize(setup, capsys):
    """A 2000 x 10 image would be resized to a side of 0 pixels: skipped with a warning and counted,
    like a file that cannot be decoded (it used to abort the run with a traceback); alone, the run
    exits 1 and leaves no predictions.jsonl and no folder it created, so a re-run is not refused."""
    from hqm.api import HOIDetector
    from hqm.data.images import ImageDecodeError

    src = setup["tmp"] / "wide"
    src.mkdir()
    Image.new("RGB", (2000, 10)).save(src / "wide.png")
    out = setup["tmp"] / "wide_out"
    assert _predict(setup, src, out) == 1
    captured = capsys.readouterr()
    assert "0 images, 1 skipped" in captured.out and "Traceback" not in captured.err
    (warning,) = [line for line in captured.err.splitlines() if "skipped an image" in line]
    assert "wide.png: a 2000 x 10 image would be resized to" in warning and "x 0 pixels" in warning
    assert not out.exists()
    out.mkdir()  # a folder the user made is kept, and holds no empty predictions.jsonl afterwards
    assert _predict(setup, src, out) == 1 and list(out.iterdir()) == []
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(src / "ok.png")
    assert _predict(setup, src, out) == 0
    assert "1 image, 1 skipped" in capsys.readouterr().out
    assert sorted(_tree(out)) == ["ok.png", "predictions.jsonl"]
    # the Python API names the image (a ValueError), a padded batch too
    det = HOIDetector.from_checkpoint(setup["ckpt"], device="cpu")
    with pytest.raises(ImageDecodeError, match="wide.png: a 2000 x 10 image"):
        det.predict([str(src / "ok.png"), str(src / "wide.png")])
    det.cfg.eval.batching = "padded"
    with pytest.raises(ValueError, match="too elongated"):
        det.predict(np.zeros((10, 2000, 3), np.uint8))


def test_predict_that_fails_or_predicts_nothing_keeps_the_folder_as_it_was(setup, monkeypatch):
    """--overwrite with no image predicted keeps an earlier predictions.jsonl; a run that fails before
    its first image is written leaves no file and no folder it created."""
    import hqm.viz.draw
    from hqm.api import HOIDetector
    from hqm.viz.predict_files import predict_to_dir

    out = setup["tmp"] / "kept"
    assert _predict(setup, setup["imgs"] / "im0.jpg", out) == 0
    before = _tree(out)
    src = setup["tmp"] / "only_bad"
    src.mkdir()
    (src / "im0.png").write_text("not a picture")
    assert _predict(setup, src, out, "--overwrite") == 1 and _tree(out) == before

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(hqm.viz.draw, "draw_predictions", broken)
    det = HOIDetector.from_checkpoint(setup["ckpt"], device="cpu")
    fresh = setup["tmp"] / "fails" / "deeper"
    with pytest.raises(RuntimeError, match="drawing failed"):
        predict_to_dir(det, setup["imgs"], fresh, progress=False)
    assert not (setup["tmp"] / "fails").exists()
    with pytest.raises(RuntimeError, match="drawing failed"):
        predict_to_dir(det, setup["imgs"], out, progress=False, overwrite=True)
    assert _tree(out) == before
