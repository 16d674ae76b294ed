"""Annotation parsers: vocabularies, id mappings and validation of bad records (error / skip)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hqm.data import DatasetError, load_annotations, load_meta, vocab

LAYOUT = {
    "hico_det": ("images/train2015", "annotations/trainval_hico.json"),
    "vcoco": ("images/train2014", "annotations/trainval_vcoco.json"),
    "hoia": ("images/trainval2019", "annotations/train_2019.json"),
}


def write_root(root: Path, dataset: str, records: list, size: tuple[int, int] = (100, 80)) -> Path:
    """A dataset root with ``records`` as the training file and a (w, h) image per file_name."""
    img_dir, ann = LAYOUT[dataset]
    (root / img_dir).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for r in records:
        if (
            isinstance(r, dict)
            and isinstance(r.get("file_name"), str)
            and not r["file_name"].startswith("missing")
        ):
            Image.new("RGB", size).save(root / img_dir / r["file_name"])
    (root / ann).write_text(json.dumps(records))
    return root


def record(name="a.jpg", boxes=None, hois=None) -> dict:
    boxes = [([10, 10, 50, 70], 1), ([40, 20, 90, 60], 3)] if boxes is None else boxes
    hois = [(0, 1, 5)] if hois is None else hois
    return {
        "file_name": name,
        "annotations": [{"bbox": b, "category_id": c} for b, c in boxes],
        "hoi_annotation": [{"subject_id": s, "object_id": o, "category_id": v} for s, o, v in hois],
    }


def test_packaged_vocabularies():
    names, ids = vocab.coco_objects()
    assert len(names) == 80 and names[0] == "person" and ids[:11] == list(range(1, 12)) and ids[-1] == 90
    gaps = set(range(1, 91)) - set(ids)
    assert gaps == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    verbs = vocab.hico_verbs()
    assert len(verbs) == 117 and verbs[0] == "adjust" and verbs[57] == "no_interaction" and verbs[-1] == "zip"
    hoi = vocab.hico_hoi_classes()
    assert len(hoi) == 600 and len(set(hoi)) == 600
    assert hoi[0] == (verbs.index("board"), names.index("airplane"))
    assert hoi[-1] == (verbs.index("no_interaction"), names.index("zebra"))
    assert vocab.hico_correct_mat().sum() == 600
    vc = vocab.vcoco_verbs()
    assert len(vc) == 29 and vc[0] == "hold_obj" and vc[-1] == "snowboard_instr"
    o, oid, v = vocab.hoia_vocabulary()
    assert len(o) == 11 and oid == list(range(1, 12)) and len(v) == 10


def test_meta_shapes(tmp_path):
    hico = load_meta("hico_det", tmp_path)
    assert hico.correct_mat.shape == (117, 80) and hico.no_object_class is None
    vc = load_meta("vcoco", tmp_path)
    assert vc.num_obj_classes == 81 and vc.object_names[80] == "none" and vc.no_object_class == 80
    assert vc.correct_mat.shape == (29, 81) and vc.correct_mat[:, 80].all()
    (tmp_path / "annotations").mkdir()
    mat = np.zeros((29, 80), dtype=bool)
    mat[0, 5] = True
    np.save(tmp_path / "annotations" / "corre_vcoco.npy", mat)
    vc = load_meta("vcoco", tmp_path)
    assert vc.correct_mat.shape == (29, 81) and vc.correct_mat[0, 5] and not vc.correct_mat[1, 5]
    assert vc.correct_mat[:, 80].all()
    assert load_meta("hoia", tmp_path).correct_mat.shape == (10, 11)
    np.save(tmp_path / "annotations" / "corre_hico.npy", np.ones((3, 3)))
    with pytest.raises(DatasetError, match=r"corre_hico.npy.*shape \(3, 3\)"):
        load_meta("hico_det", tmp_path)
    # a text file (np.load blamed pickling: "allow_pickle=False"), also V-COCO's (a traceback)
    for dataset, name in (("hico_det", "corre_hico.npy"), ("vcoco", "corre_vcoco.npy")):
        (tmp_path / "annotations" / name).write_text("1 0 1\n")
        with pytest.raises(DatasetError, match=rf"{name}: not a NumPy .npy array file") as e:
            load_meta(dataset, tmp_path)
        assert str(e.value).count(name) == 1  # named once


def test_hico_mapping_and_clamp(tmp_path):
    # COCO id 13 (stop sign) is contiguous 11; a 1-pixel overshoot is clamped
    rec = record(boxes=[([0, 0, 101, 81], 1), ([5, 5, 20, 20], 13)], hois=[(0, 1, 1), (0, 1, 117)])
    root = write_root(tmp_path, "hico_det", [rec])
    (ann,) = load_annotations("hico_det", root, "train")
    assert ann.labels.tolist() == [0, 11]
    assert ann.boxes[0].tolist() == [0, 0, 100, 80]
    assert ann.hois.tolist() == [[0, 1, 0], [0, 1, 116]]
    assert (ann.width, ann.height) == (100, 80)
    assert ann.boxes.dtype == np.float32 and ann.hois.dtype == np.int64


BAD_CASES = [
    # (kind, record, field named in the message)
    ("missing_box", record(hois=[(0, 7, 1)]), "hoi_annotation[0].object_id"),
    ("missing_box", record(hois=[(5, 1, 1)]), "hoi_annotation[0].subject_id"),
    ("missing_box", record(hois=[(0, -1, 1)]), "hoi_annotation[0].object_id"),
    ("inverted_box", record(boxes=[([10, 10, 50, 70], 1), ([40, 60, 90, 20], 3)]), "annotations[1].bbox"),
    (
        "box_outside_image",
        record(boxes=[([10, 10, 50, 70], 1), ([40, 20, 190, 60], 3)]),
        "annotations[1].bbox",
    ),
    (
        "unknown_category",
        record(boxes=[([10, 10, 50, 70], 1), ([40, 20, 90, 60], 12)]),
        "annotations[1].category_id",
    ),
    ("verb_out_of_range", record(hois=[(0, 1, 118)]), "hoi_annotation[0].category_id"),
    ("verb_out_of_range", record(hois=[(0, 1, 0)]), "hoi_annotation[0].category_id"),
    ("missing_image", record(name="missing.jpg"), "file_name"),
    ("malformed_record", {"file_name": "a.jpg", "annotations": []}, "hoi_annotation"),
    ("malformed_record", {"file_name": 3, "annotations": [], "hoi_annotation": []}, "file_name"),
    ("malformed_box", record(boxes=[([10, 10, 50], 1), ([40, 20, 90, 60], 3)]), "annotations[0].bbox"),
    ("malformed_hoi", {**record(), "hoi_annotation": [{"subject_id": 0, "category_id": 1}]}, "object_id"),
]


@pytest.mark.parametrize("kind,bad,field", BAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CASES)])
def test_bad_record_error_names_file_record_field(tmp_path, kind, bad, field):
    good = record(name="good.jpg")
    root = write_root(tmp_path, "hico_det", [good, bad])
    with pytest.raises(DatasetError) as info:
        load_annotations("hico_det", root, "train", on_bad_record="error")
    msg = str(info.value)
    assert "trainval_hico.json" in msg and "record 1" in msg and field in msg


@pytest.mark.parametrize("kind,bad,field", BAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CASES)])
def test_bad_record_skip_drops_and_counts(tmp_path, caplog, kind, bad, field):
    good = record(name="good.jpg")
    root = write_root(tmp_path, "hico_det", [good, bad])
    with caplog.at_level(logging.WARNING, logger="hqm.data"):
        anns = load_annotations("hico_det", root, "train", on_bad_record="skip")
    warnings = [r for r in caplog.records if r.name == "hqm.data"]
    assert len(warnings) == 1 and f"{kind}: 1" in warnings[0].getMessage()
    assert anns[0].file_name == "good.jpg" and anns[0].hois.tolist() == [[0, 1, 4]]
    if len(anns) == 2:  # only the bad box / HOI was dropped; HOIs never point at a dropped box
        assert anns[1].hois.shape[0] == 0
        assert (anns[1].hois[:, :2] < len(anns[1].boxes)).all()


def test_skip_remaps_boxes_after_a_dropped_one(tmp_path):
    bad = record(
        boxes=[([10, 10, 50, 70], 1), ([40, 60, 90, 20], 3), ([5, 5, 30, 30], 3)], hois=[(0, 1, 1), (0, 2, 2)]
    )
    root = write_root(tmp_path, "hico_det", [bad])
    (ann,) = load_annotations("hico_det", root, "train", on_bad_record="skip")
    assert ann.boxes.shape == (2, 4) and ann.hois.tolist() == [[0, 1, 1]]
    assert ann.boxes[1].tolist() == [5, 5, 30, 30]


def test_skip_summary_counts_several_kinds(tmp_path, caplog):
    recs = [record(hois=[(0, 7, 1), (0, 1, 200)]), record(name="missing.jpg"), record(name="b.jpg")]
    root = write_root(tmp_path, "hico_det", recs)
    with caplog.at_level(logging.WARNING, logger="hqm.data"):
        anns = load_annotations("hico_det", root, "train", on_bad_record="skip")
    assert [a.file_name for a in anns] == ["a.jpg", "b.jpg"]
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "hqm.data"]
    assert "missing_box: 1" in msg and "verb_out_of_range: 1" in msg and "missing_image: 1" in msg


def test_vcoco_no_object_role(tmp_path):
    rec = record(hois=[(0, -1, 1), (0, 1, 0), (0, 1, 28)])
    root = write_root(tmp_path, "vcoco", [rec])
    (ann,) = load_annotations("vcoco", root, "train")
    assert ann.hois.tolist() == [[0, -1, 1], [0, 1, 0], [0, 1, 28]]  # verbs are 0-based already
    bad = write_root(tmp_path / "bad", "vcoco", [record(hois=[(0, 1, 29)])])
    with pytest.raises(DatasetError, match="category_id"):
        load_annotations("vcoco", bad, "train")


def test_hoia_training_verb_zero_is_dropped_and_counted(tmp_path, caplog):
    rec = record(
        boxes=[([10, 10, 50, 70], 1), ([40, 20, 90, 60], 11)], hois=[(0, 1, 0), (0, 1, 10), (0, 1, 11)]
    )
    root = write_root(tmp_path, "hoia", [rec])
    with caplog.at_level(logging.WARNING, logger="hqm.data"):
        (ann,) = load_annotations("hoia", root, "train", on_bad_record="error")
    assert ann.labels.tolist() == [0, 10] and ann.hois.tolist() == [[0, 1, 9]]
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "hqm.data"]
    assert "invalid_verb_dropped: 2" in msg


def test_unchecked_images_keep_sizes_zero(tmp_path):
    root = write_root(tmp_path, "hico_det", [record(name="missing_x.jpg")])
    (ann,) = load_annotations("hico_det", root, "train", check_images=False)
    assert (ann.width, ann.height) == (0, 0) and ann.hois.tolist() == [[0, 1, 4]]


def test_file_level_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_annotations("hico_det", tmp_path, "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "trainval_hico.json").write_text("{}")
    with pytest.raises(DatasetError, match="list of image records"):
        load_annotations("hico_det", tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown split"):
        load_annotations("hico_det", tmp_path, "val")
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_annotations("coco", tmp_path, "train")
