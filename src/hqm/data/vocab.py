"""Packaged class vocabularies (``hqm/data/meta/*.json``) and ``DatasetMeta`` construction.

The JSON files hold the official class lists, in the order every DETR-family repository uses:

* ``coco_objects.json``: the 80 COCO object names (HICO-DET spelling, ``sports_ball``) and their
  category ids (1..90 with gaps at 12, 26, 29, 30, 45, 66, 68, 69, 71, 83); contiguous index = position.
* ``hico_verbs.json``: the 117 HICO-DET verbs (annotation id = index + 1).
* ``hico_hoi_classes.json``: the 600 HICO-DET HOI classes in official order
  (``hoi_category_id = index + 1``), each ``[verb id, COCO object id, verb name, object name]``.
* ``hico_rare_hois.json``: the official rare split, the 138 HOI ids with fewer than 10 training
  instances (its ``note`` names the sources it was checked against).
* ``vcoco_verbs.json``: the 29 V-COCO action-role classes in the QPIC order (0-based ids).
* ``hoia.json``: the 11 HOI-A objects (ids 1..11) and 10 verbs (ids 1..10).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from hqm.data.records import DatasetError, load_json
from hqm.structures import DatasetMeta

META_DIR = Path(__file__).parent / "meta"


@cache
def _read_packaged(name: str) -> dict[str, Any]:
    with open(META_DIR / name) as f:
        return json.load(f)


def coco_objects() -> tuple[list[str], list[int]]:
    """The 80 COCO object names and their category ids, in contiguous-index order."""
    d = _read_packaged("coco_objects.json")
    return list(d["object_names"]), list(d["object_ids"])


def hico_verbs() -> list[str]:
    """The 117 HICO-DET verb names (verb id = index + 1)."""
    return list(_read_packaged("hico_verbs.json")["verb_names"])


def hico_hoi_classes() -> list[tuple[int, int]]:
    """The 600 HICO-DET HOI classes as ``(verb index 0..116, object index 0..79)``, official order."""
    names, ids = coco_objects()
    index_of = {cid: i for i, cid in enumerate(ids)}
    rows = _read_packaged("hico_hoi_classes.json")["hoi_classes"]
    return [(int(r[0]) - 1, index_of[int(r[1])]) for r in rows]


def hico_rare_hoi_classes() -> list[tuple[int, int]]:
    """The 138 rare HICO-DET HOI classes of the official split as ``(verb index, object index)``."""
    classes = hico_hoi_classes()
    return [classes[int(i) - 1] for i in _read_packaged("hico_rare_hois.json")["rare_hoi_ids"]]


def hico_correct_mat() -> np.ndarray:
    """(117, 80) bool validity matrix built from the packaged 600-class list."""
    mat = np.zeros((117, 80), dtype=bool)
    for v, o in hico_hoi_classes():
        mat[v, o] = True
    return mat


def vcoco_verbs() -> list[str]:
    """The 29 V-COCO action-role names (0-based ids, QPIC order)."""
    return list(_read_packaged("vcoco_verbs.json")["verb_names"])


def hoia_vocabulary() -> tuple[list[str], list[int], list[str]]:
    """HOI-A object names, object ids (1..11) and verb names (verb id = index + 1)."""
    d = _read_packaged("hoia.json")
    return list(d["object_names"]), list(d["object_ids"]), list(d["verb_names"])


def read_custom_vocabulary(path: Path) -> tuple[list[str], list[int], list[str]]:
    """Read a HICO-format ``annotations/meta.json`` overriding the packaged vocabulary.

    Format: ``{"object_names": [...], "object_ids": [...category ids...], "verb_names": [...]}``;
    object index = position in the lists (person must be index 0), verb id = index + 1.
    """
    try:
        d = load_json(path)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the vocabulary file: {e}") from None
    for key in ("object_names", "object_ids", "verb_names"):
        if not isinstance(d, dict) or not isinstance(d.get(key), list) or not d[key]:
            raise DatasetError(f"{path}: field '{key}' must be a non-empty list")
    names, ids, verbs = d["object_names"], d["object_ids"], d["verb_names"]
    if len(names) != len(ids):
        raise DatasetError(f"{path}: 'object_names' ({len(names)}) and 'object_ids' ({len(ids)}) differ")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: 'object_ids' must be distinct integers")
    return [str(n) for n in names], [int(i) for i in ids], [str(v) for v in verbs]


def load_correct_mat(path: Path, num_verbs: int, num_objects: int, default: np.ndarray | None) -> np.ndarray:
    """Read a ``corre_*.npy`` validity matrix ``[verb, object]`` and check its shape.

    Falls back to ``default`` (or all-valid) when the file does not exist.
    """
    if not path.is_file():
        if default is not None:
            return default.astype(bool)
        return np.ones((num_verbs, num_objects), dtype=bool)
    mat = read_npy(path)
    if mat.shape != (num_verbs, num_objects):
        raise DatasetError(
            f"{path}: validity matrix has shape {tuple(mat.shape)}, expected ({num_verbs}, {num_objects}) "
            "= (verbs, objects)"
        )
    return mat.astype(bool)


def read_npy(path: Path) -> np.ndarray:
    """The array of a NumPy ``.npy`` file (no pickles). Raises ``DatasetError`` naming the file for
    anything else (a text file, a pickle, a truncated array)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the validity matrix: {e}") from None
    if magic != b"\x93NUMPY":  # np.load would blame pickling (allow_pickle) for a text file
        raise DatasetError(
            f"{path}: not a NumPy .npy array file (a text or other file?): write the validity matrix "
            "with numpy.save"
        )
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:  # a damaged header or data
        raise DatasetError(
            f"{path}: cannot read the validity matrix (a damaged .npy file? write it again with "
            f"numpy.save): {e}"
        ) from None


def make_meta(
    name: str,
    object_names: list[str],
    verb_names: list[str],
    correct_mat: np.ndarray,
    no_object_class: int | None = None,
    rare_classes: list[tuple[int, int]] | None = None,
) -> DatasetMeta:
    """A ``DatasetMeta`` with a bool ``(C_verb, C_obj)`` validity matrix (see ``DatasetMeta`` for
    ``rare_classes``)."""
    return DatasetMeta(
        name=name,
        object_names=list(object_names),
        verb_names=list(verb_names),
        correct_mat=np.asarray(correct_mat, dtype=bool),
        no_object_class=no_object_class,
        rare_classes=rare_classes,
    )
