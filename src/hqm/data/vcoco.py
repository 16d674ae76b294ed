"""V-COCO in the QPIC-converted annotation format.

Layout::

    <root>/images/train2014/  <root>/images/val2014/   (test images live in val2014)
    <root>/annotations/trainval_vcoco.json  test_vcoco.json  corre_vcoco.npy (29 x 80, [verb, object])

Same record schema as HICO-DET, but ``hoi_annotation[].category_id`` is already a 0-based index into
the 29 action-role classes and ``object_id == -1`` means the role has no object. The vocabulary gets an
81st object class ``"none"`` (``DatasetMeta.no_object_class == 80``; its box is all zeros downstream)
and the validity matrix an all-ones column for it (shape 29 x 81).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hqm.data import vocab
from hqm.data.records import RecordRules
from hqm.structures import DatasetMeta

SPLITS = {
    "train": ("images/train2014", "annotations/trainval_vcoco.json"),
    "test": ("images/val2014", "annotations/test_vcoco.json"),
}
CORRECT_MAT = "annotations/corre_vcoco.npy"
NO_OBJECT_NAME = "none"


def load_meta(root: str | Path, name: str = "vcoco") -> DatasetMeta:
    """81 object classes (80 COCO + "none"), 29 action roles, (29, 81) validity matrix."""
    names, _ = vocab.coco_objects()
    verbs = vocab.vcoco_verbs()
    path = Path(root) / CORRECT_MAT
    if path.is_file() and vocab.read_npy(path).shape == (len(verbs), len(names) + 1):
        mat = vocab.load_correct_mat(path, len(verbs), len(names) + 1, None)
    else:
        mat = vocab.load_correct_mat(path, len(verbs), len(names), None)
        # every role may lack an object: the "none" column is all valid
        mat = np.concatenate([mat, np.ones((len(verbs), 1), dtype=bool)], axis=1)
    return vocab.make_meta(name, names + [NO_OBJECT_NAME], verbs, mat, no_object_class=len(names))


def record_rules(root: str | Path, split: str) -> RecordRules:
    """Id mapping of the annotation files of ``split`` under ``root``."""
    _, ids = vocab.coco_objects()
    return RecordRules(
        object_index={cid: i for i, cid in enumerate(ids)},
        num_verbs=len(vocab.vcoco_verbs()),
        verb_offset=0,
        allow_no_object=True,
    )
