"""HOIDataset targets (keys, dtypes, shapes, pair merging and order) and batch collation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from hqm.config import DataConfig
from hqm.data import TARGET_KEYS, HOIDataset, build_dataset, collate_fn, load_annotations, load_meta
from hqm.data.dataset import pair_instances
from hqm.data.transforms import build_transforms

W, H = 120, 90


def write_hico(
    root: Path, records: list, folder: str = "images/train2015", ann: str = "trainval_hico.json"
) -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for r in records:
        Image.new("RGB", (W, H), (90, 90, 90)).save(root / folder / r["file_name"])
    (root / "annotations" / ann).write_text(json.dumps(records))
    return root


def rec(name: str, boxes, hois) -> dict:
    return {
        "file_name": name,
        "annotations": [{"bbox": b, "category_id": c} for b, c in boxes],
        "hoi_annotation": [{"subject_id": s, "object_id": o, "category_id": v} for s, o, v in hois],
    }


BOXES = [([10, 10, 50, 80], 1), ([60, 20, 100, 60], 3), ([5, 5, 20, 20], 37), ([70, 10, 110, 85], 1)]
# (0,1) appears first, then (0,2), then (0,1) again, then (3,1): rows (0,1) [v0, v4], (0,2) [v1], (3,1) [v2]
HOIS = [(0, 1, 1), (0, 2, 2), (0, 1, 5), (3, 1, 3)]


@pytest.fixture()
def hico_dataset(tmp_path):
    root = write_hico(tmp_path, [rec("a.jpg", BOXES, HOIS), rec("empty.jpg", BOXES[:1], [])])
    meta = load_meta("hico_det", root)
    anns = load_annotations("hico_det", root, "train")
    return HOIDataset(anns, meta, root / "images/train2015", None)


def test_target_contract(hico_dataset):
    img, t = hico_dataset[0]
    assert tuple(t.keys()) == TARGET_KEYS
    assert img.dtype == torch.float32 and img.shape == (3, H, W)
    assert t["image_id"] == 0 and isinstance(t["image_id"], int) and t["file_name"] == "a.jpg"
    assert t["orig_size"].dtype == torch.int64 and t["orig_size"].tolist() == [H, W]
    assert t["size"].dtype == torch.int64 and t["size"].tolist() == [H, W]
    assert t["obj_labels"].dtype == torch.int64 and t["obj_labels"].tolist() == [2, 32, 2]
    vl = t["verb_labels"]
    assert vl.dtype == torch.float32 and vl.shape == (3, 117)
    assert [torch.nonzero(r).flatten().tolist() for r in vl] == [[0, 4], [1], [2]]
    assert t["sub_boxes"].dtype == torch.float32 and t["sub_boxes"].shape == (3, 4)
    assert t["has_obj"].dtype == torch.bool and t["has_obj"].tolist() == [True, True, True]
    # normalised cxcywh
    assert torch.allclose(t["sub_boxes"][0], torch.tensor([30 / W, 45 / H, 40 / W, 70 / H]))
    assert torch.allclose(t["obj_boxes"][1], torch.tensor([12.5 / W, 12.5 / H, 15 / W, 15 / H]))
    assert torch.allclose(t["sub_boxes"][2], torch.tensor([90 / W, 47.5 / H, 40 / W, 75 / H]))


def test_empty_image(hico_dataset):
    img, t = hico_dataset[1]
    assert t["obj_labels"].shape == (0,) and t["verb_labels"].shape == (0, 117)
    assert t["sub_boxes"].shape == (0, 4) and t["obj_boxes"].shape == (0, 4) and t["has_obj"].shape == (0,)
    cfg = DataConfig(
        scales=[64, 80], max_size=128, crop_resize=[60], crop_min=30, crop_max=50, color_jitter=0.2
    )
    hico_dataset.transforms = build_transforms(cfg, train=True)
    for seed in range(4):
        torch.manual_seed(seed)
        img, t = hico_dataset[1]
        assert t["sub_boxes"].shape == (0, 4) and t["size"].tolist() == list(img.shape[-2:])


def test_train_targets_stay_normalised_and_ordered(hico_dataset):
    cfg = DataConfig(scales=[64, 80], max_size=128, crop_resize=[60, 80], crop_min=30, crop_max=60)
    hico_dataset.transforms = build_transforms(cfg, train=True)
    for seed in range(10):
        torch.manual_seed(seed)
        img, t = hico_dataset[0]
        assert t["size"].tolist() == list(img.shape[-2:])
        for key in ("sub_boxes", "obj_boxes"):
            b = t[key]
            assert ((b >= -1e-6) & (b <= 1 + 1e-6)).all() and (b[:, 2:] > 0).all()
        # surviving rows keep their relative order: verb sets are a subsequence of the full order
        rows = [tuple(torch.nonzero(r).flatten().tolist()) for r in t["verb_labels"]]
        full = [(0, 4), (1,), (2,)]
        assert rows == [r for r in full if r in rows]


def test_vcoco_roles_without_object(tmp_path):
    root = write_hico(
        tmp_path,
        [rec("v.jpg", BOXES[:2], [(0, -1, 1), (0, 1, 0), (0, -1, 23)])],
        "images/train2014",
        "trainval_vcoco.json",
    )
    meta = load_meta("vcoco", root)
    anns = load_annotations("vcoco", root, "train")
    cfg = DataConfig(scales=[64, 80], max_size=128, crop_resize=[60, 80], crop_min=30, crop_max=60)
    ds = HOIDataset(anns, meta, root / "images/train2014", build_transforms(cfg, train=True))
    for seed in range(10):
        torch.manual_seed(seed)
        _, t = ds[0]
        no_obj = ~t["has_obj"]
        assert (t["obj_labels"][no_obj] == 80).all() and (t["obj_boxes"][no_obj] == 0).all()
        if len(t["has_obj"]) == 2:
            assert t["has_obj"].tolist() == [False, True]  # (0,-1) rows merged: verbs 1 and 23
            assert torch.nonzero(t["verb_labels"][0]).flatten().tolist() == [1, 23]


def test_collate_pads_bottom_right_and_masks():
    a = torch.ones(3, 4, 6)
    b = torch.full((3, 5, 3), 2.0)
    images, masks, targets = collate_fn([(a, {"i": 0}), (b, {"i": 1})])
    # padded to the largest height and width of the batch, like the released QPIC code
    assert images.shape == (2, 3, 5, 6) and masks.shape == (2, 5, 6) and masks.dtype == torch.bool
    assert [t["i"] for t in targets] == [0, 1]
    assert (images[0, :, :4, :6] == 1).all() and (images[0, :, 4:] == 0).all()
    assert (images[0, :, :, 6:] == 0).all()
    assert (images[1, :, :5, :3] == 2).all() and (images[1, :, :, 3:] == 0).all()
    assert not masks[0, :4, :6].any() and masks[0, 4:].all() and masks[0, :, 6:].all()
    assert not masks[1, :5, :3].any() and masks[1, :, 3:].all()
    # train.size_divisibility rounds both sides up to a multiple
    images, masks, _ = collate_fn([(a, {}), (b, {})], size_divisibility=32)
    assert images.shape == (2, 3, 32, 32) and masks[0, :4, :6].logical_not().all() and masks[0, 4:].all()


def test_build_dataset_on_the_synthetic_benchmark(tiny_root):
    cfg = DataConfig(
        dataset="synthetic",
        root=str(tiny_root),
        synth_preset="tiny",
        scales=[64, 72],
        max_size=128,
        crop_resize=[64],
        crop_min=32,
        crop_max=48,
        test_scale=64,
    )
    train = build_dataset(cfg, "train", train=True)
    test = build_dataset(cfg, "test", train=False)
    assert len(train) == 16 and len(test) == 8
    assert train.meta.name == "synthetic" and train.meta.object_names[0] == "person"
    images, masks, targets = collate_fn([test[0], test[1]])
    assert images.shape[0] == 2 and min(targets[0]["size"].tolist()) == 64
    assert targets[0]["verb_labels"].shape[1] == train.meta.num_verb_classes


def _pairs_the_old_way(ds: HOIDataset, index: int) -> dict:
    """The pair targets as computed before instances were kept (``transform_pairs`` on pair boxes)."""
    from hqm.data.dataset import _normalise, merge_pairs
    from hqm.data.transforms import transform_pairs

    ann = ds.annotations[index]
    image = ds.load_image(index)
    p = merge_pairs(ann, ds.meta)
    has_obj = torch.from_numpy(p["has_obj"])
    img, sub, obj, keep = transform_pairs(
        ds.transforms, image, torch.from_numpy(p["sub_boxes"]), torch.from_numpy(p["obj_boxes"]), has_obj
    )
    h, w = img.shape[-2:]
    return {
        "sub_boxes": _normalise(sub[keep], h, w),
        "obj_boxes": _normalise(obj[keep], h, w),
        "verb_labels": torch.from_numpy(p["verb_labels"])[keep],
        "has_obj": has_obj[keep],
    }


@pytest.mark.parametrize("dataset", ["hico_det", "vcoco"])
def test_instances_beside_pairs_stay_consistent_under_crops(tmp_path, dataset):
    """Instances (HOTR's targets) and pairs (QPIC / CDN) come from the same transform: the pair
    boxes are the referenced instances' boxes, a cropped-away instance takes its pairs with it, and
    the pair targets equal the pre-instance computation on the same random draws."""
    hois = [(0, 1, 1), (0, 2, 2), (3, 1, 3), (3, 2, 4)] + ([(0, -1, 5)] if dataset == "vcoco" else [])
    folder, ann = (
        ("images/train2015", "trainval_hico.json")
        if dataset == "hico_det"
        else ("images/train2014", "trainval_vcoco.json")
    )
    root = write_hico(tmp_path, [rec("a.jpg", BOXES, hois)], folder, ann)
    meta = load_meta(dataset, root)
    anns = load_annotations(dataset, root, "train")
    cfg = DataConfig(scales=[64, 80], max_size=128, crop_resize=[60, 80], crop_min=20, crop_max=40)
    ds = HOIDataset(anns, meta, root / folder, build_transforms(cfg, train=True))
    dropped = 0
    for seed in range(24):
        torch.manual_seed(seed)
        _, t = ds[0]
        torch.manual_seed(seed)
        old = _pairs_the_old_way(ds, 0)
        for key, v in old.items():
            assert torch.equal(t[key], v), (seed, key)
        k = len(t["inst_boxes"])
        dropped += k < len(BOXES)
        assert t["inst_labels"].shape == (k,) and t["inst_labels"].dtype == torch.int64
        assert ((t["sub_inst"] >= 0) & (t["sub_inst"] < k)).all()
        assert torch.equal(t["obj_inst"] >= 0, t["has_obj"]) and (t["obj_inst"] < k).all()
        assert torch.equal(t["inst_boxes"][t["sub_inst"]], t["sub_boxes"])
        with_obj = t["has_obj"]
        assert torch.equal(t["inst_boxes"][t["obj_inst"][with_obj]], t["obj_boxes"][with_obj])
        assert torch.equal(t["inst_labels"][t["obj_inst"][with_obj]], t["obj_labels"][with_obj])
        assert (t["inst_labels"][t["sub_inst"]] == 0).all()  # subjects are persons
    assert dropped > 0  # the crops did remove instances in some draws


def test_pair_instances_one_instance_per_role_and_none_for_objectless():
    pairs = {
        "sub_boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.2], [0.6, 0.4, 0.2, 0.2]]),
        "obj_boxes": torch.tensor([[0.4, 0.4, 0.1, 0.1], [0.0, 0.0, 0.0, 0.0], [0.7, 0.7, 0.3, 0.1]]),
        "obj_labels": torch.tensor([5, 7, 2]),
        "has_obj": torch.tensor([True, False, True]),
    }
    inst = pair_instances(pairs, person_label=0)
    assert inst["obj_inst"].tolist() == [3, -1, 4]
    assert inst["sub_inst"].tolist() == [0, 1, 2]
    assert inst["inst_labels"].tolist() == [0, 0, 0, 5, 2]
    assert torch.equal(inst["inst_boxes"][inst["sub_inst"]], pairs["sub_boxes"])
    has = pairs["has_obj"]
    assert torch.equal(inst["inst_boxes"][inst["obj_inst"][has]], pairs["obj_boxes"][has])
