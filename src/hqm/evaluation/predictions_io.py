"""Read / write the predictions file used by ``hqm eval-file`` (PPDM / QPIC detection JSON layout).

The file is a JSON list of per-image records::

    {"file_name": str,
     "predictions":    [{"bbox": [x1, y1, x2, y2], "category_id": <file object id>}, ...],
     "hoi_prediction": [{"subject_id": int, "object_id": int, "category_id": <file verb id>,
                         "score": float}, ...]}

``subject_id`` / ``object_id`` index into ``predictions``. Ids follow the annotation files of the dataset
(the data layer passes the lists):

* ``object_ids``: file category id of every contiguous object class (``object_ids[c]``); HICO-DET and
  V-COCO: the 80 COCO ids, HOI-A: ``1..11``.
* ``verb_id_offset``: file verb id = contiguous verb + offset; HICO-DET / HOI-A: 1, V-COCO: 0 (the 29
  action-role classes are 0-based).
* ``no_object_class``: V-COCO's contiguous "no object" class; ``object_id == -1`` in the file reads as
  that class with an all-zero object box, and such triplets are written back with ``object_id: -1``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hqm.errors import UserError
from hqm.structures import HOIPredictions

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class PredictionsFormatError(UserError, ValueError):
    """A malformed record in a predictions file (the message names file, record and field)."""


def _fail(source: str, rec: int, field: str, msg: str, name: str | None = None) -> PredictionsFormatError:
    image = f" (file_name {name!r})" if name is not None else ""
    return PredictionsFormatError(f"{source}: record {rec}{image}: field {field!r}: {msg}")


def records_to_predictions(
    records: Sequence[dict[str, Any]],
    object_ids: Sequence[int],
    verb_id_offset: int,
    no_object_class: int | None = None,
    num_verbs: int | None = None,
    source: str = "<records>",
) -> list[HOIPredictions]:
    """Parse file records into ``HOIPredictions`` (triplets sorted by descending score, stable).
    Raises ``PredictionsFormatError`` naming the record and field for a malformed record or a
    second record of one image."""
    to_contig = {int(cid): c for c, cid in enumerate(object_ids)}
    out = []
    if not isinstance(records, list):
        raise PredictionsFormatError(f"{source}: expected a JSON list of per-image records")
    first: dict[str, int] = {}  # file_name -> its record
    for r, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise _fail(source, r, "<record>", "expected an object")
        name = rec.get("file_name")
        if not isinstance(name, str):
            raise _fail(source, r, "file_name", "missing or not a string")
        if name in first:  # which of the two counts would depend on their order
            raise _fail(
                source, r, "file_name", f"the image of record {first[name]} too: one record per image", name
            )
        first[name] = r
        if "hoi_prediction" not in rec:  # another layout (or a typo): not "an image with no detections"
            raise _fail(source, r, "hoi_prediction", "missing (an image without detections has [])", name)
        boxes_in = rec.get("predictions", [])
        hois_in = rec["hoi_prediction"]
        if not isinstance(boxes_in, list) or not isinstance(hois_in, list):
            raise _fail(source, r, "predictions/hoi_prediction", "expected lists", name)
        boxes = np.zeros((len(boxes_in), 4), dtype=np.float32)
        labels = np.zeros(len(boxes_in), dtype=np.int64)
        for b, box in enumerate(boxes_in):
            try:
                xyxy = np.asarray(box["bbox"], dtype=np.float64).reshape(4)
            except (KeyError, TypeError, ValueError) as e:
                raise _fail(source, r, f"predictions[{b}].bbox", "expected 4 numbers", name) from e
            if not (np.abs(xyxy) <= _FLOAT32_MAX).all():  # NaN, inf, or inf once stored as float32
                msg = f"{box['bbox']} is not finite (float32): a NaN / inf box cannot be matched"
                raise _fail(source, r, f"predictions[{b}].bbox", msg, name)
            boxes[b] = xyxy
            cat = box.get("category_id")
            if isinstance(cat, bool) or not isinstance(cat, int) or cat not in to_contig:
                raise _fail(source, r, f"predictions[{b}].category_id", f"unknown object id {cat!r}", name)
            labels[b] = to_contig[cat]
        n = len(hois_in)
        sub = np.zeros((n, 4), np.float32)
        obj = np.zeros((n, 4), np.float32)
        obj_lab = np.zeros(n, np.int64)
        verb = np.zeros(n, np.int64)
        score = np.zeros(n, np.float32)
        for h, hoi in enumerate(hois_in):
            where = f"hoi_prediction[{h}]"
            try:
                s, o = int(hoi["subject_id"]), int(hoi["object_id"])
                v, sc = int(hoi["category_id"]) - verb_id_offset, float(hoi["score"])
            except (KeyError, TypeError, ValueError) as e:
                msg = f"needs integer subject_id, object_id, category_id and a score ({e})"
                raise _fail(source, r, where, msg, name) from e
            if not math.isfinite(sc) or abs(sc) > _FLOAT32_MAX:  # NaN sorts anywhere, inf ranks first
                msg = f"{sc} is not a finite (float32) score: refused rather than ranked arbitrarily"
                raise _fail(source, r, f"{where}.score", msg, name)
            if not 0 <= s < len(boxes_in):
                raise _fail(source, r, f"{where}.subject_id", f"{s} out of range [0, {len(boxes_in)})", name)
            if num_verbs is not None and not 0 <= v < num_verbs:
                raise _fail(
                    source, r, f"{where}.category_id", f"verb id {v + verb_id_offset} out of range", name
                )
            if o == -1:
                if no_object_class is None:
                    msg = "-1 (no object) is not allowed for this dataset"
                    raise _fail(source, r, f"{where}.object_id", msg, name)
                obj_lab[h] = no_object_class
            elif 0 <= o < len(boxes_in):
                obj[h], obj_lab[h] = boxes[o], labels[o]
            else:
                raise _fail(source, r, f"{where}.object_id", f"{o} out of range [0, {len(boxes_in)})", name)
            sub[h], verb[h], score[h] = boxes[s], v, sc
        order = np.argsort(-score, kind="stable")
        out.append(HOIPredictions(name, sub[order], obj[order], obj_lab[order], verb[order], score[order]))
    return out


def _box_id(box: np.ndarray, label: int, boxes: list[list[float]], index: dict[tuple, int]) -> int:
    """Index of (box, label) in ``boxes``, appended on first use."""
    b = [float(x) for x in box]
    key = (*b, label)
    if key not in index:
        index[key] = len(boxes)
        boxes.append(b + [label])
    return index[key]


def predictions_to_records(
    predictions: Sequence[HOIPredictions],
    object_ids: Sequence[int],
    verb_id_offset: int,
    no_object_class: int | None = None,
    person_class: int = 0,
) -> list[dict[str, Any]]:
    """The inverse of :func:`records_to_predictions`; identical boxes of one category are shared."""
    out = []
    for pred in predictions:
        boxes: list[list[float]] = []
        index: dict[tuple, int] = {}
        hois = []
        for k in range(len(pred)):
            lab = int(pred.obj_labels[k])
            s = _box_id(pred.sub_boxes[k], person_class, boxes, index)
            no_obj = no_object_class is not None and lab == no_object_class
            o = -1 if no_obj else _box_id(pred.obj_boxes[k], lab, boxes, index)
            hois.append(
                {
                    "subject_id": s,
                    "object_id": o,
                    "category_id": int(pred.verb_labels[k]) + verb_id_offset,
                    "score": float(pred.scores[k]),
                }
            )
        out.append(
            {
                "file_name": pred.file_name,
                "predictions": [{"bbox": b[:4], "category_id": int(object_ids[int(b[4])])} for b in boxes],
                "hoi_prediction": hois,
            }
        )
    return out


def load_predictions(
    path: str | os.PathLike,
    object_ids: Sequence[int],
    verb_id_offset: int,
    no_object_class: int | None = None,
    num_verbs: int | None = None,
) -> list[HOIPredictions]:
    """Read a predictions JSON file -> one ``HOIPredictions`` per record."""
    from hqm.data.records import load_json

    records = load_json(Path(path), PredictionsFormatError)
    return records_to_predictions(records, object_ids, verb_id_offset, no_object_class, num_verbs, str(path))


def save_predictions(
    predictions: Sequence[HOIPredictions],
    path: str | os.PathLike,
    object_ids: Sequence[int],
    verb_id_offset: int,
    no_object_class: int | None = None,
) -> None:
    """Write ``predictions`` as a predictions JSON file (see the module docstring), atomically
    (``hqm.output.write_atomic``: a failed write leaves no partial file)."""
    from hqm.output import write_atomic

    records = predictions_to_records(predictions, object_ids, verb_id_offset, no_object_class)
    write_atomic(Path(path), json.dumps(records).encode(), "write the predictions to")
