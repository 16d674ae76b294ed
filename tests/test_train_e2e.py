"""End to end: a 2-step training run on the tiny synthetic preset writes every run file; eval reloads it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.config import load_config
from hqm.engine.checkpoint import load_checkpoint

# multi-scale training on the tiny preset
SMALL_IMAGES = TINY_DATA_64 + ["data.scales=[64,80]", "data.max_size=128", "eval.batch_size=4"]


def tiny_overrides(root, out) -> list[str]:
    return (
        TINY_OVERRIDES
        + SMALL_IMAGES
        + [
            "data.dataset=synthetic",
            f"data.root={root}",
            "data.synth_preset=tiny",
            f"train.output_dir={out}",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.log_every=1",
        ]
    )


def test_two_step_run_writes_run_files(tiny_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "qpic_r18_synthetic", *tiny_overrides(tiny_root, out), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"mAP_full", "mAP_rare", "mAP_nonrare"} <= set(metrics)
    for name in (
        "config.yaml",
        "log.txt",
        "metrics.jsonl",
        "results.csv",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (out / name).is_file(), name
    cfg = load_config(out / "config.yaml")
    assert cfg.train.max_steps == 2 and cfg.data.root == str(tiny_root)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")  # weights_only=True
    assert ckpt["step"] == 2 and {"model", "optimizer", "scheduler", "config", "meta", "rng"} <= set(ckpt)
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events].count("train") == 2 and events[-1]["kind"] == "eval"
    # stopped by train.max_steps inside the first epoch: evaluated in it, not "after epoch 0"
    assert "evaluation in epoch 1 (step 2)" in (out / "log.txt").read_text()

    # hqm eval on the checkpoint reproduces the training run's final evaluation
    preds_file = tmp_path / "preds.json"
    assert (
        main(
            [
                "eval",
                str(out / "config.yaml"),
                f"weights={out / 'checkpoints' / 'last.pt'}",
                "--json",
                "--save-predictions",
                str(preds_file),
            ]
        )
        == 0
    )
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again == metrics
    # an existing predictions file (a user's file) is refused before the evaluation, unless --overwrite
    saved = preds_file.read_bytes()
    argv = ["eval", str(out / "config.yaml"), f"weights={out / 'checkpoints' / 'last.pt'}"]
    assert main([*argv, "--save-predictions", str(preds_file)]) == 2
    assert "--overwrite" in capsys.readouterr().err and preds_file.read_bytes() == saved
    assert main([*argv, "--save-predictions", str(preds_file), "--overwrite"]) == 0
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 2  # nothing to overwrite: said, not ignored
    assert "--overwrite replaces the --save-predictions file" in capsys.readouterr().err

    # the saved predictions file evaluates, without a model, to the same numbers
    records = json.loads(preds_file.read_text())
    assert {"file_name", "predictions", "hoi_prediction"} <= set(records[0])
    assert (
        main(
            [
                "eval-file",
                "--dataset",
                "synthetic",
                "--root",
                str(tiny_root),
                "--predictions",
                str(preds_file),
                "--json",
            ]
        )
        == 0
    )
    from_file = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert from_file == pytest.approx(metrics, abs=1e-6, nan_ok=True)

    # evaluation needs the annotation files only: a root without training images gives the same
    # numbers (rare split included), also with data.on_bad_record=skip (it used to drop every record)
    bare = tmp_path / "no_train_images"
    shutil.copytree(tiny_root / "annotations", bare / "annotations")
    shutil.copytree(tiny_root / "images" / "test2015", bare / "images" / "test2015")
    for extra in ([], ["data.on_bad_record=skip"]):
        argv = ["eval", str(out / "config.yaml"), f"weights={out / 'checkpoints' / 'last.pt'}"]
        assert main([*argv, f"data.root={bare}", *extra, "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == metrics

    # a predictions file with an infinite score is refused in one line naming file, image and index
    from hqm.data import file_ids

    person = file_ids("synthetic", bare)[0][0]
    r = 3
    records[r]["predictions"] = [{"bbox": [1, 2, 30, 40], "category_id": person}] * 2
    records[r]["hoi_prediction"] = [
        {"subject_id": 0, "object_id": 1, "category_id": 1, "score": 0.5},
        {"subject_id": 0, "object_id": 1, "category_id": 2, "score": float("inf")},
    ]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))  # writes the Infinity literal
    argv = ["eval-file", "--dataset", "synthetic", "--root", str(bare), "--predictions", str(bad)]
    assert main(argv) == 1  # the file exists but its records are bad: a runtime error (usage is 2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and repr(records[r]["file_name"]) in err
    assert f"record {r}" in err and "hoi_prediction[1].score" in err

    # a file that names none of the test images gave a confident 0% mAP; one that covers some of
    # them, or names other images too, says so; a record without hoi_prediction is not "no detections"
    good = json.loads(preds_file.read_text())
    wrong = [{**rec, "file_name": rec["file_name"].replace("test", "train")} for rec in good]
    for content in (wrong, []):
        bad.write_text(json.dumps(content))
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"none of its {len(content)} records names a test image" in err
    bad.write_text(json.dumps(good[:2] + wrong[:1]))
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"no record for {len(good) - 2} of the {len(good)} test images" in err
    assert "1 records name images that are not in the test set; ignored" in err
    bad.write_text(json.dumps([{"file_name": good[0]["file_name"], "hois": []}]))
    assert main(argv) == 1
    assert "record 0 (file_name" in capsys.readouterr().err
    bad.write_text(json.dumps(good))
    for n in ("0", "-1"):
        assert main([*argv, "--max-dets", n]) == 2
        assert f"--max-dets {n}: must be >= 1" in capsys.readouterr().err
    torch.set_grad_enabled(True)
