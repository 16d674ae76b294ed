"""data.synth_stream: fresh, reproducible synthetic training images every epoch."""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.config import load_config
from hqm.data.build import build_dataset
from hqm.data.records import DatasetError
from hqm.data.synthetic_stream import SyntheticStream


def stream_cfg(root, *extra):
    return load_config(
        None, TINY_OVERRIDES + TINY_DATA_64 + [f"data.root={root}", "data.synth_stream=true", *extra]
    )


def test_stream_images_are_a_function_of_epoch_and_index(tiny_root):
    ds = build_dataset(stream_cfg(tiny_root).data, "train", False)
    assert isinstance(ds, SyntheticStream)
    fixed = build_dataset(
        load_config(None, TINY_OVERRIDES + TINY_DATA_64 + [f"data.root={tiny_root}"]).data, "train", False
    )
    assert len(ds) == len(fixed)  # an epoch keeps the fixed split's length
    (img_a, tgt_a), (img_b, tgt_b) = ds[(3, 1)], ds[(3, 1)]
    assert torch.equal(img_a, img_b) and torch.equal(tgt_a["sub_boxes"], tgt_b["sub_boxes"])
    img_c, _ = ds[(3, 2)]
    img_d, _ = ds[(4, 1)]
    assert not torch.equal(img_a, img_c) and not torch.equal(img_a, img_d)  # nothing repeats
    # the stream never reuses the fixed training images (another seed stream)
    assert all(
        not torch.equal(ds[(i, 0)][0], fixed[i][0])
        for i in range(3)
        if ds[(i, 0)][0].shape == fixed[i][0].shape
    )


def test_stream_targets_are_valid_records(tiny_root):
    # like the fixed split, a few scenes hold people and objects but no interaction
    ds = build_dataset(stream_cfg(tiny_root).data, "train", False)
    meta = ds.meta
    counts = []
    for i in range(6):
        ann, image = ds.generate(i, 5)
        assert ann.width in (0, image.size[0]) and len(ann.boxes) == len(ann.labels)
        img, tgt = ds[(i, 5)]
        n = len(tgt["obj_labels"])
        counts.append(n)
        assert img.ndim == 3 and img.shape[0] == 3 and n == len(ann.hois)
        assert tgt["sub_boxes"].shape == (n, 4) and tgt["verb_labels"].shape == (n, meta.num_verb_classes)
        assert (tgt["obj_labels"] <= meta.num_obj_classes).all()
        assert ((tgt["sub_boxes"] >= 0) & (tgt["sub_boxes"] <= 1)).all()
    assert sum(counts) > 0


def test_stream_keeps_the_fixed_records_for_the_rare_split(tiny_root):
    ds = build_dataset(stream_cfg(tiny_root).data, "train", False)
    fixed = build_dataset(
        load_config(None, TINY_OVERRIDES + TINY_DATA_64 + [f"data.root={tiny_root}"]).data, "train", False
    )
    assert [a.file_name for a in ds.annotations] == [a.file_name for a in fixed.annotations]


def test_stream_needs_a_generated_synthetic_root(tmp_path, tiny_root):
    with pytest.raises(DatasetError, match="synth_config.json: missing"):
        SyntheticStream(tmp_path, build_dataset(stream_cfg(tiny_root).data, "train", False).meta)
    cfg = stream_cfg(tiny_root, "data.dataset=hico_det")
    with pytest.raises(DatasetError, match="data.synth_stream needs data.dataset=synthetic"):
        build_dataset(cfg.data, "train", True)
