"""Export predictions to the official evaluators' detection layouts (cross-checks in MATLAB / Python 2).

* :func:`export_hico_mat` - ywchao/ho-rcnn ``eval_one.m`` with ``format = 'obj'``: one file
  ``detections_XX.mat`` per object class (XX = 1-based object index in COCO order, as ho-rcnn's
  ``list_coco_obj``) holding ``all_boxes``, a (num HOIs of that object) x (num test images) cell array;
  each cell is an (n, 9) double matrix ``[h_x1 h_y1 h_x2 h_y2 o_x1 o_y1 o_x2 o_y2 score]``. Rows follow
  the official HOI order of that object. ho-rcnn adds 1 to every detection coordinate before comparing
  with its 1-based GT, so coordinates are written with ``box_offset`` (default -1) added: our boxes are
  in the coordinates of the annotation JSON, which copies the GT ``.mat`` values.
* :func:`export_vcoco_pickle` - s-gupta/v-coco ``vsrl_eval.py``: a pickled list of dicts, one per
  distinct person box of an image, with ``image_id``, ``person_box``, ``<action>_agent`` (score) and
  ``<action>_<role>`` (``[x1, y1, x2, y2, score]``); entries with no prediction are NaN (the official
  code skips NaN scores).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hqm.evaluation.ap import topk_desc
from hqm.evaluation.vcoco import is_empty_box, parse_role_classes
from hqm.output import check_new_output, write_atomic
from hqm.structures import DatasetMeta, HOIPredictions


def export_hico_mat(
    predictions: Sequence[HOIPredictions],
    out_dir: str | os.PathLike,
    meta: DatasetMeta,
    test_file_names: Sequence[str],
    hoi_classes: Sequence[tuple[int, int]],
    max_dets: int | None = 100,
    box_offset: float = -1.0,
    overwrite: bool = False,
) -> list[str]:
    """Write ``detections_XX.mat`` files; returns their paths.

    test_file_names: the official image order (``list_test``), one column of ``all_boxes`` each.
    hoi_classes: official HOI id order, ``hoi_classes[i] = (verb, object)`` contiguous for HOI id i + 1.
    The same per-image cut as the Default evaluator is applied (valid pairs, top ``max_dets``).
    Raises ``UsageError`` before writing anything when a ``detections_XX.mat`` of ``out_dir``
    already exists (unless ``overwrite``); each file is written atomically (``OutputError`` naming it).
    """
    from scipy.io import savemat

    n_obj = meta.num_obj_classes
    targets = [Path(out_dir) / f"detections_{obj + 1:02d}.mat" for obj in range(n_obj)]
    for target in targets:
        check_new_output(target, overwrite, overwrite_hint="call with overwrite=True")
    col = {name: j for j, name in enumerate(test_file_names)}
    hoi_id = {(int(v), int(o)): i for i, (v, o) in enumerate(hoi_classes)}
    per_obj = [[i for i, (_, o) in enumerate(hoi_classes) if o == obj] for obj in range(n_obj)]
    row_of = {i: r for rows in per_obj for r, i in enumerate(rows)}
    cells: dict[tuple[int, int], list[np.ndarray]] = {}
    for pred in predictions:
        j = col.get(pred.file_name)
        if j is None:
            continue
        ids = np.array([hoi_id.get((int(v), int(o)), -1) for v, o in zip(pred.verb_labels, pred.obj_labels)])
        keep = np.flatnonzero(ids >= 0)
        keep = keep[topk_desc(pred.scores[keep], max_dets)]
        sub = np.asarray(pred.sub_boxes, dtype=np.float64)[keep] + box_offset
        obj = np.asarray(pred.obj_boxes, dtype=np.float64)[keep] + box_offset
        rows = np.concatenate([sub, obj, np.asarray(pred.scores, dtype=np.float64)[keep, None]], axis=1)
        for r, i in zip(rows, ids[keep]):
            cells.setdefault((int(i), j), []).append(r)
    paths = []
    for obj, hois in enumerate(per_obj):
        all_boxes = np.empty((len(hois), len(test_file_names)), dtype=object)
        for r in range(len(hois)):
            for j in range(len(test_file_names)):
                all_boxes[r, j] = np.zeros((0, 9))
        for (i, j), lst in cells.items():
            if hoi_classes[i][1] == obj:
                all_boxes[row_of[i], j] = np.stack(lst)
        buffer = io.BytesIO()
        savemat(buffer, {"all_boxes": all_boxes})
        write_atomic(targets[obj], buffer.getvalue())
        paths.append(os.fspath(targets[obj]))
    return paths


def export_vcoco_pickle(
    predictions: Sequence[HOIPredictions],
    path: str | os.PathLike,
    meta: DatasetMeta,
    image_ids: Mapping[str, int],
    overwrite: bool = False,
) -> int:
    """Write the ``vsrl_eval`` detection pickle; returns the number of person entries.

    image_ids: COCO image id of every file name. Class names come from ``meta.verb_names``
    (``hold_obj``, ``stand`` ...). Per (image, person box) the best triplet of each class is kept.
    An existing ``path`` is refused with ``UsageError`` before anything is computed (unless
    ``overwrite``); the file is written atomically (``OutputError`` naming it).
    """
    target = check_new_output(path, overwrite, overwrite_hint="call with overwrite=True")
    actions, action_of, has_role = parse_role_classes(list(meta.verb_names))
    names = list(meta.verb_names)
    roles: dict[str, list[str]] = {a: [] for a in actions}
    for k, name in enumerate(names):
        if has_role[k]:
            roles[actions[action_of[k]]].append(name)
    dets = []
    for pred in predictions:
        if pred.file_name not in image_ids or len(pred) == 0:
            continue
        boxes, inv = np.unique(np.asarray(pred.sub_boxes, dtype=np.float64), axis=0, return_inverse=True)
        inv = inv.ravel()
        for p, box in enumerate(boxes):
            entry: dict[str, object] = {"image_id": int(image_ids[pred.file_name])}
            entry["person_box"] = box.tolist()
            for a in actions:
                entry[f"{a}_agent"] = float("nan")
                for role in roles[a]:
                    entry[role] = [float("nan")] * 5
            for k in np.flatnonzero(inv == p):  # triplets arrive score-sorted: keep the first per class
                c = int(pred.verb_labels[k])
                if not 0 <= c < len(names):
                    continue
                sc = float(pred.scores[k])
                agent = f"{actions[action_of[c]]}_agent"
                if np.isnan(entry[agent]) or sc > entry[agent]:
                    entry[agent] = sc
                if has_role[c] and (np.isnan(entry[names[c]][4]) or sc > entry[names[c]][4]):
                    ob = pred.obj_boxes[k]
                    ob = [0.0] * 4 if is_empty_box(ob[None])[0] else [float(x) for x in ob]
                    entry[names[c]] = ob + [sc]
            dets.append(entry)
    write_atomic(target, pickle.dumps(dets, protocol=2))
    return len(dets)
