"""``hqm check-data CONFIG``: a clean dataset passes with a summary that matches its files; each kind
of damage is found (all of them in one pass, not only the first), with an example naming the record."""

from __future__ import annotations

import copy
import json
import shutil

import pytest

from hqm.cli import main


def check(capsys, root, *extra: str) -> tuple[int, str, dict]:
    code = main(["check-data", "qpic_r18_synthetic", f"data.root={root}", "data.synth_preset=tiny", *extra])
    out = capsys.readouterr().out.strip().splitlines()
    return code, "\n".join(out[:-1]), json.loads(out[-1])


def test_a_clean_dataset_and_its_summary(tiny_root, capsys):
    code, text, report = check(capsys, tiny_root, "--json")
    assert code == 0 and report["ok"] and "problems: none" in text
    for split, name in (("train", "trainval_hico.json"), ("test", "test_hico.json")):
        records = json.loads((tiny_root / "annotations" / name).read_text())
        (summary,) = [s for s in report["splits"] if s["split"] == split]
        assert summary["records"] == summary["images"] == len(records)
        assert summary["hois"] == sum(len(r["hoi_annotation"]) for r in records)
        assert summary["boxes"] == sum(len(r["annotations"]) for r in records)
        hois = [(i, h) for i, r in enumerate(records) for h in r["hoi_annotation"]]
        pairs = {(i, h["subject_id"], h["object_id"]) for i, h in hois}
        assert summary["pairs"] == len(pairs)
    meta = json.loads((tiny_root / "annotations" / "meta.json").read_text())
    assert report["object_classes"] == len(meta["object_names"])
    assert report["verb_classes"] == len(meta["verb_names"])
    assert 0 < report["rare_classes"] <= report["hoi_classes"]


@pytest.fixture
def damaged_root(tiny_root, tmp_path):
    """A copy of the tiny benchmark with one fault of each kind in the training split."""
    root = tmp_path / "damaged"
    shutil.copytree(tiny_root, root)
    ann = root / "annotations" / "trainval_hico.json"
    records = json.loads(ann.read_text())
    with_hoi = [i for i, r in enumerate(records) if r["hoi_annotation"]][:3]
    clean = next(i for i in range(len(records)) if i not in with_hoi)
    records.append(copy.deepcopy(records[clean]))  # the same image listed twice
    records[with_hoi[0]]["hoi_annotation"][0]["category_id"] = 999
    records[with_hoi[1]]["annotations"][0]["category_id"] = 999
    records[with_hoi[2]]["annotations"][-1]["bbox"] = [1, 2, "x", 4]
    missing, truncated = records[-2]["file_name"], records[-3]["file_name"]
    del records[-4]["file_name"]
    (root / "images" / "train2015" / records[-5]["file_name"]).write_text("not an image")
    ann.write_text(json.dumps(records))
    (root / "images" / "train2015" / missing).unlink()
    image = root / "images" / "train2015" / truncated
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return root, truncated


def test_every_kind_of_damage_is_found_in_one_pass(damaged_root, capsys):
    root, truncated = damaged_root
    code, text, report = check(capsys, root, "--json")
    assert code == 1 and not report["ok"]
    kinds = {
        "verb_out_of_range": "verb id 999",
        "unknown_category": "unknown object category id 999",
        "malformed_box": "'x'",
        "malformed_record": "field 'file_name'",
        "missing_image": "not found",
        "unreadable_image": "synth_train",  # a file that is not an image: not "missing"
        "duplicate_file_name": "listed before, in record",
        "undecodable_image": truncated,
    }
    assert set(report["problems"]) == set(kinds)
    for kind, needle in kinds.items():
        assert report["problems"][kind] == 1
        (example,) = report["examples"][kind]
        assert needle in example and "trainval_hico.json" in example
        assert f"{kind}: 1" in text and example in text
    # headers only: the truncated image is not found, the rest is
    code, _, report = check(capsys, root, "--json", "--no-decode")
    assert code == 1 and set(report["problems"]) == set(kinds) - {"undecodable_image"}


def test_an_image_listed_twice_is_refused_by_training_as_check_data_says(tiny_root, tmp_path):
    """check-data said training stops at a duplicate file_name; training used the image twice."""
    from hqm.data import load_annotations
    from hqm.data.records import DatasetError

    root = tmp_path / "dup"
    shutil.copytree(tiny_root, root)
    ann = root / "annotations" / "trainval_hico.json"
    records = json.loads(ann.read_text())
    ann.write_text(json.dumps([*records, copy.deepcopy(records[1])]))
    with pytest.raises(DatasetError, match=rf"record {len(records)} \(file_name '{records[1]['file_name']}'\)"
                       rf": field 'file_name': listed before, in record 1"):  # fmt: skip
        load_annotations("synthetic", root, "train", "error", check_images=False)
    kept = load_annotations("synthetic", root, "train", "skip", check_images=False)
    assert [a.file_name for a in kept] == [r["file_name"] for r in records]  # the first one kept


def test_an_empty_split_or_one_without_labels_is_refused_and_reported(tiny_root, tmp_path, capsys):
    """A training file holding [] passed check-data and training said "no training records to count
    the rare / non-rare split from"; one whose boxes were all dropped trained on 0 HOI labels."""
    from hqm.cli import main
    from test_errors import one_line, train_args

    root = tmp_path / "empty"
    shutil.copytree(tiny_root, root)
    ann = root / "annotations" / "trainval_hico.json"
    records = json.loads(ann.read_text())
    ann.write_text("[]")
    code, text, report = check(capsys, root, "--json", "--no-decode")
    assert (
        code == 1 and report["problems"] == {"unusable_split": 1} and "the train split has no usable" in text
    )
    assert "`hqm check-data`" not in text  # check-data does not point to itself
    one_line(capsys, train_args(root, tmp_path / "run"), 1, str(ann), "the train split has no usable records")
    assert not (tmp_path / "run").exists()
    for r in records:
        r["hoi_annotation"] = []
    ann.write_text(json.dumps(records))
    line = one_line(capsys, train_args(root, tmp_path / "run"), 1, str(ann), "but no HOI label")
    assert (
        f"{len(records)} records" in line
        and main(["check-data", "qpic_r18_synthetic", f"data.root={root}"]) == 1
    )
