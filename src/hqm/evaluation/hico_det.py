"""HICO-DET mAP with the semantics of the official ho-rcnn MATLAB evaluation (``evaluation/``).

Classes
    Every (verb, object) pair with ``meta.correct_mat[verb, object]`` true, enumerated in row-major
    (verb, object) order; on the real dataset these are the 600 HOI classes. The means (Full / Rare /
    Non-rare, mean max recall) run over the classes with >= 1 test ground truth: the real test set has
    GT for all 600 (so this is the official mean), and on synthetic data a class without test GT, whose
    AP is undefined (0/0 recall in the MATLAB code), is skipped instead of poisoning the mean with NaN.
    A class with GT but no detection scores 0.
Candidates
    ``process`` may receive any number of triplets per image. Triplets whose (verb, object) is not a
    class are ignored. Default mode keeps the top ``max_dets`` by score over all the image's valid
    triplets. Known-Object (KO) mode keeps, for a class with object o, only images whose test GT has an
    HOI with object o; its per-image top ``max_dets`` cut is taken among the triplets whose object class
    is known in that image - i.e. KO is computed from the full candidate set, not from inside the
    Default top-k. Ties in the cut go to the lower candidate index.
Matching (per class, whole test set, ``VOCevaldet_bboxpair.m``)
    Detections are sorted by descending score (stable: ties keep test-image order, then the in-image
    rank). Each takes the GT pair of its image and class - matched or not - with the largest
    min(IoU_human, IoU_object) (first GT on ties); TP iff that value >= 0.5 and the GT is still free,
    otherwise FP (duplicates are FP; no fallback to the second-best GT). IoU uses the +1-pixel area
    convention (``w = x2 - x1 + 1``).
AP
    11-point interpolated (:func:`hqm.evaluation.ap.ap_11point`); max recall = final recall. The
    recall thresholds default to MATLAB's ``0:0.1:1`` (``ap_thresholds="matlab"``, the official
    numbers); ``"numpy"`` reproduces the QPIC / CDN / HQM Python evaluators (``np.arange(0, 1.1,
    0.1)``) and ``"exact"`` uses k/10 (see :mod:`hqm.evaluation.ap`). They differ only for a class
    whose recall lands exactly on 3/10, 6/10 or 7/10.
Rare / Non-rare
    With a fixed official split (``meta.rare_classes``: the 138 rare HICO-DET classes of ho-rcnn) that
    split is used, so a model trained on a subset (few-shot, zero-shot) is still scored against the
    official split; training annotations whose counts give another split only log a warning naming
    the classes that differ. Otherwise (custom vocabularies such as the synthetic benchmark) the
    training count of each class = number of HOI rows (person subject, object present) over the
    training annotations, rare iff < 10; a split counted from zero training records is an error
    (it would make every class rare).

Metric keys (fractions in [0, 1]): ``mAP_full``, ``mAP_rare``, ``mAP_nonrare``, ``mean_max_recall`` and
the same with ``_ko``; the rare / non-rare keys exist only when there is a split (an official one, or
training annotations).
Per-class tables: ``evaluator.per_class["default"]`` / ``["ko"]``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, NamedTuple

import numpy as np

from hqm.data.records import DatasetError
from hqm.evaluation.ap import (
    best_match,
    box_iou_pairs,
    expand_groups,
    first_occurrence_tp,
    per_class_ap,
    recall_thresholds,
    topk_desc,
)
from hqm.evaluation.base import HOIEvaluator
from hqm.structures import DatasetMeta, HOIPredictions, ImageAnnotation

LOGGER = logging.getLogger("hqm.evaluation")
RARE_THRESHOLD = 10
MODES = ("default", "ko", "both")


class _Dets(NamedTuple):
    """Detections of one image after the cut: cls (k,), score (k,) float64, sub/obj (k, 4) float32."""

    cls: np.ndarray
    score: np.ndarray
    sub: np.ndarray
    obj: np.ndarray


def hoi_class_index(correct_mat: np.ndarray) -> np.ndarray:
    """(V, C) int64 map (verb, object) -> class id (row-major over valid pairs), -1 when invalid."""
    valid = np.asarray(correct_mat, dtype=bool)
    index = np.full(valid.shape, -1, dtype=np.int64)
    index[valid] = np.arange(int(valid.sum()))
    return index


def training_counts(
    class_index: np.ndarray, train_annotations: list[ImageAnnotation], person_class: int = 0
) -> np.ndarray:
    """(K,) number of training HOI rows of each class (person subject, object present)."""
    num_cls = int(class_index.max()) + 1 if class_index.size else 0
    counts = np.zeros(num_cls, dtype=np.int64)
    n_verb, n_obj = class_index.shape
    for ann in train_annotations:
        h = np.asarray(ann.hois, dtype=np.int64).reshape(-1, 3)
        h = h[h[:, 1] >= 0]
        if h.shape[0] == 0:
            continue
        labels = np.asarray(ann.labels, dtype=np.int64)
        h = h[labels[h[:, 0]] == person_class]
        obj, verb = labels[h[:, 1]], h[:, 2]
        ok = (verb >= 0) & (verb < n_verb) & (obj >= 0) & (obj < n_obj)
        cls = class_index[verb[ok], obj[ok]]
        counts += np.bincount(cls[cls >= 0], minlength=num_cls)
    return counts


def rare_split(meta: DatasetMeta, class_index: np.ndarray, counts: np.ndarray | None) -> np.ndarray | None:
    """(K,) bool rare mask: ``meta.rare_classes`` when the dataset has an official split, else
    ``counts < 10`` (None without counts). A count-based split that disagrees with the official one
    is logged as a warning naming the classes that differ."""
    counted = None if counts is None else counts < RARE_THRESHOLD
    if meta.rare_classes is None:
        return counted
    official = np.zeros(int(class_index.max()) + 1 if class_index.size else 0, dtype=bool)
    for verb, obj in meta.rare_classes:
        if (
            0 <= verb < class_index.shape[0]
            and 0 <= obj < class_index.shape[1]
            and class_index[verb, obj] >= 0
        ):
            official[class_index[verb, obj]] = True
    if counted is not None and (counted != official).any():
        verbs, objs = np.nonzero(class_index >= 0)
        differ = np.flatnonzero(counted != official)
        names = [f"{meta.verb_names[verbs[k]]}_{meta.object_names[objs[k]]}" for k in differ[:5]]
        LOGGER.warning(
            f"the training annotations give {int(counted.sum())} rare classes, the official {meta.name} "
            f"split has {int(official.sum())} ({differ.size} classes differ, e.g. {', '.join(names)}): "
            "Rare / Non-rare use the official split (expected when training on a subset)"
        )
    return official


class HICODetEvaluator(HOIEvaluator):
    """Official HICO-DET protocol (Default / Known-Object), vectorised. See the module docstring."""

    def __init__(
        self,
        meta: DatasetMeta,
        test_annotations: list[ImageAnnotation],
        train_annotations: list[ImageAnnotation] | None = None,
        mode: str = "default",
        max_dets: int | None = 100,
        iou_threshold: float = 0.5,
        ap_thresholds: str = "matlab",
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        recall_thresholds(ap_thresholds)  # fail early on an unknown variant
        self.meta, self.mode, self.max_dets, self.iou_threshold = meta, mode, max_dets, iou_threshold
        self.ap_thresholds = ap_thresholds
        self.class_index = hoi_class_index(meta.correct_mat)
        self.class_verb, self.class_obj = np.nonzero(self.class_index >= 0)
        self.num_classes = int(self.class_verb.shape[0])
        self.file_index = {ann.file_name: i for i, ann in enumerate(test_annotations)}
        if len(self.file_index) != len(test_annotations):
            twice = next(n for n, k in Counter(a.file_name for a in test_annotations).items() if k > 1)
            raise DatasetError(
                f"the test annotations list {twice!r} more than once (each test image must be listed "
                "once; `hqm check-data` lists every duplicate)"
            )
        self._build_gt(test_annotations)
        self.train_counts: np.ndarray | None = None
        if train_annotations is not None:
            if not train_annotations:
                raise DatasetError(
                    "no training records to count the rare / non-rare split from (every record "
                    "dropped?): give the training annotation file, or evaluate without a rare split"
                )
            self.train_counts = training_counts(self.class_index, train_annotations)
        self.rare = rare_split(meta, self.class_index, self.train_counts)

    def _build_gt(self, anns: list[ImageAnnotation]) -> None:
        n_verb, n_obj = self.class_index.shape
        img, cls, sub, obj = [], [], [], []
        self.known_objects = np.zeros((len(anns), n_obj), dtype=bool)
        for i, ann in enumerate(anns):
            h = np.asarray(ann.hois, dtype=np.int64).reshape(-1, 3)
            h = h[h[:, 1] >= 0]
            if h.shape[0] == 0:
                continue
            labels = np.asarray(ann.labels, dtype=np.int64)
            boxes = np.asarray(ann.boxes, dtype=np.float64).reshape(-1, 4)
            o_lab, verb = labels[h[:, 1]], h[:, 2]
            ok = (verb >= 0) & (verb < n_verb) & (o_lab >= 0) & (o_lab < n_obj)
            self.known_objects[i, o_lab[ok]] = True
            c = np.full(h.shape[0], -1, dtype=np.int64)
            c[ok] = self.class_index[verb[ok], o_lab[ok]]
            keep = c >= 0
            img.append(np.full(int(keep.sum()), i, dtype=np.int64))
            cls.append(c[keep])
            sub.append(boxes[h[keep, 0]])
            obj.append(boxes[h[keep, 1]])
        self.gt_img = np.concatenate(img) if img else np.zeros(0, dtype=np.int64)
        self.gt_cls = np.concatenate(cls) if cls else np.zeros(0, dtype=np.int64)
        self.gt_sub = np.concatenate(sub) if sub else np.zeros((0, 4))
        self.gt_obj = np.concatenate(obj) if obj else np.zeros((0, 4))
        self.npos = np.bincount(self.gt_cls, minlength=self.num_classes)

    # ------------------------------------------------------------------ process
    def _cut(self, pred: HOIPredictions, cls: np.ndarray, keep: np.ndarray) -> _Dets:
        idx = np.flatnonzero(keep)
        idx = idx[topk_desc(pred.scores[idx], self.max_dets)]
        return _Dets(
            cls=cls[idx].astype(np.int32),
            score=np.asarray(pred.scores, dtype=np.float64)[idx],
            sub=np.asarray(pred.sub_boxes, dtype=np.float32)[idx],
            obj=np.asarray(pred.obj_boxes, dtype=np.float32)[idx],
        )

    def _reduce(self, pred: HOIPredictions) -> tuple[int, _Dets | None, _Dets | None] | None:
        img = self.file_index.get(pred.file_name)
        if img is None:
            return None
        n_verb, n_obj = self.class_index.shape
        verb = np.asarray(pred.verb_labels, dtype=np.int64)
        obj = np.asarray(pred.obj_labels, dtype=np.int64)
        in_range = (verb >= 0) & (verb < n_verb) & (obj >= 0) & (obj < n_obj)
        cls = np.full(verb.shape[0], -1, dtype=np.int64)
        cls[in_range] = self.class_index[verb[in_range], obj[in_range]]
        valid = cls >= 0
        default = self._cut(pred, cls, valid) if self.mode in ("default", "both") else None
        ko = None
        if self.mode in ("ko", "both"):
            known = np.zeros(verb.shape[0], dtype=bool)
            known[valid] = self.known_objects[img, obj[valid]]
            ko = self._cut(pred, cls, known)
        return img, default, ko

    # ------------------------------------------------------------------ evaluate
    def match(
        self, img: np.ndarray, rank: np.ndarray, dets: _Dets
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-class AP, max recall and detection count of a concatenated detection set.

        img, rank: (N,) test-image index and in-image rank of each detection; dets: concatenated.
        """
        cls = dets.cls.astype(np.int64)
        k = max(self.num_classes, 1)
        pair_det, pair_gt, count = expand_groups(img * k + cls, self.gt_img * k + self.gt_cls)
        iou_h = box_iou_pairs(dets.sub[pair_det], self.gt_sub[pair_gt], plus_one=True)
        iou_o = box_iou_pairs(dets.obj[pair_det], self.gt_obj[pair_gt], plus_one=True)
        best_gt, best_val = best_match(pair_det, pair_gt, np.minimum(iou_h, iou_o), count)
        # processing order: class-major, descending score, then test-image order, then in-image rank
        order = np.lexsort((rank, img, -dets.score, cls))
        tp = first_occurrence_tp(best_val >= self.iou_threshold, best_gt, order)
        return per_class_ap(cls[order], tp[order], self.npos, "11point", self.ap_thresholds)

    def _compute(self, records: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
        items = sorted(records.values(), key=lambda r: r[0])
        metrics: dict[str, float] = {}
        tables: dict[str, list[dict[str, Any]]] = {}
        slots = {"default": [("default", 1, "")], "ko": [("ko", 2, "_ko")]}
        slots["both"] = slots["default"] + slots["ko"]
        for name, slot, suffix in slots[self.mode]:
            parts = [(r[0], r[slot]) for r in items]
            empty = [np.zeros(0, np.int64)]
            img = np.concatenate([np.full(len(d.cls), i, np.int64) for i, d in parts] + empty)
            rank = np.concatenate([np.arange(len(d.cls)) for _, d in parts] + empty)
            dets = _Dets(
                cls=np.concatenate([d.cls for _, d in parts] + [np.zeros(0, np.int32)]),
                score=np.concatenate([d.score for _, d in parts] + [np.zeros(0)]),
                sub=np.concatenate([d.sub for _, d in parts] + [np.zeros((0, 4), np.float32)]),
                obj=np.concatenate([d.obj for _, d in parts] + [np.zeros((0, 4), np.float32)]),
            )
            ap, rec, n_det = self.match(img, rank, dets)
            metrics.update(self._summarise(ap, rec, suffix))
            tables[name] = self._table(ap, rec, n_det)
        return metrics, tables

    def _summarise(self, ap: np.ndarray, rec: np.ndarray, suffix: str) -> dict[str, float]:
        has_gt = self.npos > 0

        def mean(x: np.ndarray, mask: np.ndarray) -> float:
            return float(x[mask].mean()) if mask.any() else float("nan")

        out = {f"mAP_full{suffix}": mean(ap, has_gt)}
        if self.rare is not None:
            out[f"mAP_rare{suffix}"] = mean(ap, has_gt & self.rare)
            out[f"mAP_nonrare{suffix}"] = mean(ap, has_gt & ~self.rare)
        out[f"mean_max_recall{suffix}"] = mean(rec, has_gt)
        return out

    def class_names(self) -> list[str]:
        """``"<verb>_<object>"`` name of every class, in class-id order."""
        v, o = self.meta.verb_names, self.meta.object_names
        return [f"{v[a]}_{o[b]}" for a, b in zip(self.class_verb, self.class_obj)]

    def _table(self, ap: np.ndarray, rec: np.ndarray, n_det: np.ndarray) -> list[dict[str, Any]]:
        names = self.class_names()
        rows = []
        for k in range(self.num_classes):
            row = {
                "name": names[k],
                "verb": int(self.class_verb[k]),
                "object": int(self.class_obj[k]),
                "ap": float(ap[k]),
                "max_recall": float(rec[k]),
                "n_gt": int(self.npos[k]),
                "n_det": int(n_det[k]),
            }
            if self.train_counts is not None:
                row["n_train"] = int(self.train_counts[k])
            if self.rare is not None:
                row["rare"] = bool(self.rare[k])
            rows.append(row)
        return rows
