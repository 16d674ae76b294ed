"""HOI-A mAP in the style of PPDM ``src/lib/eval/hoia_eval.py``.

What PPDM's code does (read from the source, reproduced here):

* IoU in continuous coordinates (no +1), 0 unless the boxes overlap strictly; a predicted box
  "matches" a GT box when the categories are equal and IoU >= 0.5.
* Per image, predictions are sorted by descending score (Python's stable sort). For each prediction,
  the *unmatched* GT HOIs are scanned in GT order; every one whose subject and object boxes match the
  prediction's boxes and whose verb equals the prediction's verb is marked matched, and the prediction
  is a TP if at least one was. Note the loop uses ``continue``, not ``break``: one prediction consumes
  *all* such GT HOIs (only differs from one-to-one matching with duplicated / coincident GT HOIs).
  There is no "largest IoU" choice. Predictions of a verb outside the 10 classes are skipped.
* Per verb: all predictions of the test set sorted by score, VOC all-point AP, ``#GT`` = number of GT
  HOI rows of that verb. mAP = mean over *all* verb classes, a class without GT or without detection
  contributing 0 (``np.mean(ap)`` over the zero-initialised array).

``matching="ppdm"`` (default) reproduces the above; ``matching="greedy"`` is the usual one-to-one rule:
the prediction takes the unmatched qualifying GT with the largest min(IoU_s, IoU_o). Both apply a
per-image top ``max_dets`` cut first (PPDM's prediction files hold the top 100). The predicted subject
category is taken to be ``person_class``. Metric keys: ``mAP``, ``mean_max_recall`` (fractions);
per-class table ``per_class["default"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hqm.evaluation.ap import box_iou_pairs, per_class_ap, topk_desc
from hqm.evaluation.base import HOIEvaluator
from hqm.structures import DatasetMeta, HOIPredictions, ImageAnnotation


class HOIAEvaluator(HOIEvaluator):
    """PPDM-style HOI-A mAP over the verb classes. See the module docstring."""

    def __init__(
        self,
        meta: DatasetMeta,
        test_annotations: list[ImageAnnotation],
        max_dets: int | None = 100,
        iou_threshold: float = 0.5,
        matching: str = "ppdm",
        person_class: int = 0,
    ) -> None:
        super().__init__()
        if matching not in ("ppdm", "greedy"):
            raise ValueError(f"matching must be 'ppdm' or 'greedy', got {matching!r}")
        self.meta, self.max_dets, self.iou_threshold = meta, max_dets, iou_threshold
        self.matching, self.person_class = matching, person_class
        self.num_verbs = meta.num_verb_classes
        self.file_index = {ann.file_name: i for i, ann in enumerate(test_annotations)}
        self.gt: list[tuple[np.ndarray, ...]] = []
        npos = np.zeros(self.num_verbs, dtype=np.int64)
        for ann in test_annotations:
            h = np.asarray(ann.hois, dtype=np.int64).reshape(-1, 3)
            h = h[(h[:, 1] >= 0) & (h[:, 2] >= 0) & (h[:, 2] < self.num_verbs)]
            boxes = np.asarray(ann.boxes, dtype=np.float64).reshape(-1, 4)
            labels = np.asarray(ann.labels, dtype=np.int64)
            # (verb, sub box, sub label, obj box, obj label) of each GT HOI
            self.gt.append((h[:, 2], boxes[h[:, 0]], labels[h[:, 0]], boxes[h[:, 1]], labels[h[:, 1]]))
            npos += np.bincount(h[:, 2], minlength=self.num_verbs)
        self.npos = npos

    def _reduce(self, pred: HOIPredictions) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Match the image right away (matching is per image): (image, verb (k,), score (k,), tp (k,))."""
        img = self.file_index.get(pred.file_name)
        if img is None:
            return None
        verb = np.asarray(pred.verb_labels, dtype=np.int64)
        score = np.asarray(pred.scores, dtype=np.float64)
        keep = np.flatnonzero((verb >= 0) & (verb < self.num_verbs))
        keep = keep[topk_desc(score[keep], self.max_dets)]
        tp = self._match_image(img, pred, keep)
        return img, verb[keep], score[keep], tp

    def _match_image(self, img: int, pred: HOIPredictions, idx: np.ndarray) -> np.ndarray:
        """(k,) bool TP flags of the score-sorted predictions ``idx`` of one image."""
        g_verb, g_sub, g_slab, g_obj, g_olab = self.gt[img]
        k, m = idx.shape[0], g_verb.shape[0]
        tp = np.zeros(k, dtype=bool)
        if k == 0 or m == 0:
            return tp
        sub = np.asarray(pred.sub_boxes, dtype=np.float64)[idx]
        obj = np.asarray(pred.obj_boxes, dtype=np.float64)[idx]
        ii, jj = np.repeat(np.arange(k), m), np.tile(np.arange(m), k)
        iou_s = box_iou_pairs(sub[ii], g_sub[jj], plus_one=False).reshape(k, m)
        iou_o = box_iou_pairs(obj[ii], g_obj[jj], plus_one=False).reshape(k, m)
        thr = self.iou_threshold
        q = (
            (np.asarray(pred.verb_labels)[idx][:, None] == g_verb[None, :])
            & (g_slab[None, :] == self.person_class)
            & (np.asarray(pred.obj_labels)[idx][:, None] == g_olab[None, :])
            & (iou_s >= thr)
            & (iou_o >= thr)
        )
        min_iou = np.minimum(iou_s, iou_o)
        used = np.zeros(m, dtype=bool)
        for d in np.flatnonzero(q.any(axis=1)):  # only predictions that can match at all
            avail = q[d] & ~used
            if not avail.any():
                continue
            tp[d] = True
            if self.matching == "ppdm":
                used |= avail
            else:
                used[np.argmax(np.where(avail, min_iou[d], -1.0))] = True
        return tp

    def _compute(self, records: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
        items = sorted(records.values(), key=lambda r: r[0])
        img = np.concatenate([np.full(len(r[1]), r[0], np.int64) for r in items] + [np.zeros(0, np.int64)])
        rank = np.concatenate([np.arange(len(r[1])) for r in items] + [np.zeros(0, np.int64)])
        verb = np.concatenate([r[1] for r in items] + [np.zeros(0, np.int64)])
        score = np.concatenate([r[2] for r in items] + [np.zeros(0)])
        tp = np.concatenate([r[3] for r in items] + [np.zeros(0, bool)])
        order = np.lexsort((rank, img, -score, verb))
        ap, rec, n_det = per_class_ap(verb[order], tp[order], self.npos, method="voc")
        metrics = {
            "mAP": float(np.nan_to_num(ap).mean()) if ap.size else float("nan"),
            "mean_max_recall": float(np.nan_to_num(rec).mean()) if rec.size else float("nan"),
        }
        table = [
            {
                "name": self.meta.verb_names[v],
                "ap": float(ap[v]),
                "max_recall": float(rec[v]),
                "n_gt": int(self.npos[v]),
                "n_det": int(n_det[v]),
            }
            for v in range(self.num_verbs)
        ]
        return metrics, {"default": table}
