"""Data layer: annotation parsers (HICO-DET, V-COCO, HOI-A), transforms, ``HOIDataset`` and the
embedded synthetic benchmark (``hqm.data.synthetic``)."""

from hqm.data.build import (
    build_dataset,
    build_meta,
    check_synthetic_preset,
    ensure_synthetic,
    file_ids,
    image_dir,
    load_annotations,
    load_meta,
)
from hqm.data.dataset import TARGET_KEYS, HOIDataset, collate_fn, merge_pairs
from hqm.data.records import DatasetError
from hqm.data.transforms import build_transforms, make_test_transforms, make_train_transforms

__all__ = [
    "TARGET_KEYS",
    "DatasetError",
    "HOIDataset",
    "build_dataset",
    "build_meta",
    "build_transforms",
    "check_synthetic_preset",
    "collate_fn",
    "ensure_synthetic",
    "image_dir",
    "file_ids",
    "load_annotations",
    "load_meta",
    "make_test_transforms",
    "make_train_transforms",
    "merge_pairs",
]
