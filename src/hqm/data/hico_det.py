"""HICO-DET in the PPDM/QPIC annotation format (also the format of the synthetic benchmark).

Layout::

    <root>/images/train2015/*.jpg   <root>/images/test2015/*.jpg
    <root>/annotations/trainval_hico.json   test_hico.json   corre_hico.npy (117 x 80, [verb, object])
    <root>/annotations/meta.json            optional: a vocabulary replacing the packaged one

Object category ids are the 80 valid COCO ids mapped to 0..79 in order (person = 0); verb = id - 1.
When ``annotations/meta.json`` exists (``{"object_names", "object_ids", "verb_names"}``), its lists
replace the packaged HICO-DET vocabulary: this is how the synthetic benchmark is read by this loader.
With the packaged vocabulary the meta carries the official rare split (138 classes), so evaluation
uses it whatever the training annotations hold (a subset for few-shot training, say); with a custom
vocabulary the rare split comes from the training counts.
"""

from __future__ import annotations

from pathlib import Path

from hqm.data import vocab
from hqm.data.records import RecordRules
from hqm.structures import DatasetMeta

SPLITS = {
    "train": ("images/train2015", "annotations/trainval_hico.json"),
    "test": ("images/test2015", "annotations/test_hico.json"),
}
CORRECT_MAT = "annotations/corre_hico.npy"
CUSTOM_VOCABULARY = "annotations/meta.json"


def _vocabulary(root: Path) -> tuple[list[str], list[int], list[str], bool]:
    """(object names, object category ids, verb names, is_custom)."""
    custom = root / CUSTOM_VOCABULARY
    if custom.is_file():
        return (*vocab.read_custom_vocabulary(custom), True)
    names, ids = vocab.coco_objects()
    return names, ids, vocab.hico_verbs(), False


def load_meta(root: str | Path, name: str = "hico_det") -> DatasetMeta:
    """Vocabulary and (C_verb, C_obj) validity matrix of a HICO-format root."""
    root = Path(root)
    names, _, verbs, custom = _vocabulary(root)
    default = None if custom else vocab.hico_correct_mat()
    mat = vocab.load_correct_mat(root / CORRECT_MAT, len(verbs), len(names), default)
    rare = None if custom else vocab.hico_rare_hoi_classes()  # the official split, not the counts
    return vocab.make_meta(name, names, verbs, mat, rare_classes=rare)


def record_rules(root: str | Path, split: str) -> RecordRules:
    """Id mapping of the annotation files of ``split`` under ``root``."""
    names, ids, verbs, _ = _vocabulary(Path(root))
    return RecordRules(
        object_index={cid: i for i, cid in enumerate(ids)}, num_verbs=len(verbs), verb_offset=1
    )
