"""HOI-A (PPDM format).

Layout::

    <root>/images/trainval2019/  <root>/images/test2019/
    <root>/annotations/train_2019.json  test_2019.json  corre_hoia.npy (10 x 11, [verb, object])

11 object classes (ids 1..11 -> 0..10, person = 0) and 10 verbs (ids 1..10 -> 0..9). The training
file contains HOIs with verb 0 (and a few out-of-range ids): they are dropped in both
``on_bad_record`` modes and counted in the load summary, as PPDM does. In the test file an
out-of-range verb is an ordinary bad record.
"""

from __future__ import annotations

from pathlib import Path

from hqm.data import vocab
from hqm.data.records import RecordRules
from hqm.structures import DatasetMeta

SPLITS = {
    "train": ("images/trainval2019", "annotations/train_2019.json"),
    "test": ("images/test2019", "annotations/test_2019.json"),
}
CORRECT_MAT = "annotations/corre_hoia.npy"


def load_meta(root: str | Path, name: str = "hoia") -> DatasetMeta:
    """11 objects, 10 verbs, (10, 11) validity matrix (all valid when the file is absent)."""
    names, _, verbs = vocab.hoia_vocabulary()
    mat = vocab.load_correct_mat(Path(root) / CORRECT_MAT, len(verbs), len(names), None)
    return vocab.make_meta(name, names, verbs, mat)


def record_rules(root: str | Path, split: str) -> RecordRules:
    """Id mapping of the annotation files of ``split`` under ``root``."""
    names, ids, verbs = vocab.hoia_vocabulary()
    return RecordRules(
        object_index={cid: i for i, cid in enumerate(ids)},
        num_verbs=len(verbs),
        verb_offset=1,
        drop_invalid_verbs=split == "train",
    )
