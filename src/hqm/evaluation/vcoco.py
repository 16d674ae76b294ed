"""V-COCO role AP (Scenario 1 / 2) and agent AP with the semantics of s-gupta/v-coco ``vsrl_eval.py``.

Input is the QPIC format: ``meta.verb_names`` are the action-role classes (29 on V-COCO, e.g.
``hold_obj``, ``cut_instr``, ``stand``); a class named ``<action>_obj`` / ``<action>_instr`` has a role
object, any other name is an agent-only action (``stand``, ``walk``, ``run``, ``smile``). GT rows are
``[person, object or -1, role class]``; predicted triplets carry a role class and a role box, which is
"empty" when all zeros or any NaN.

Ground truth per image: the person boxes (``labels == person_class``). A person has action ``a`` when
it is the subject of a row of any role class of ``a``; its GT role box for class c is the object of its
first row of class c with an object (none when only ``-1`` rows exist).

Role AP of class c (action a), as ``_do_role_eval``: detections of class c sorted by score; the human
box is matched to the GT person of the image with the largest IoU (+1 convention, any person); TP iff
that person has action a, IoU_h >= 0.5, the role overlap >= 0.5 and (person, c) is not covered yet;
everything else FP. Role overlap: IoU to the GT role box; when the person has no GT role object,
Scenario 1 gives 1 only for an empty predicted role box (else 0), Scenario 2 always 1. ``#pos`` =
persons with action a (those without a role object included). VOC all-point AP.

Agent AP of action a, as ``_do_agent_eval``: one agent detection per (image, distinct subject box)
among the triplets of a's classes, scored by their maximum; matched like the human box above.

Means (fractions in [0, 1]): ``AP_role_S1`` / ``AP_role_S2`` over the role classes except
``point_instr`` - on V-COCO the customary 24 (25 classes with a role object; ``point`` is excluded as in
most papers since QPIC) - skipping classes without GT; ``AP_agent`` over actions with GT.
Per-class tables: ``per_class["role_S1"]``, ``["role_S2"]``, ``["agent"]``.

Differences from ``vsrl_eval.py`` that the QPIC JSON cannot express: the official code skips a
detection whose best person is a COCO person without V-COCO labels ("ignore"); the QPIC files do not
mark those, so no person is ignored here. Use the official evaluator (pickle export in
:mod:`hqm.evaluation.export`) for paper numbers. No per-image top-k cut is applied (none in vsrl_eval).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hqm.evaluation.ap import best_match, box_iou_pairs, expand_groups, first_occurrence_tp, per_class_ap
from hqm.evaluation.base import HOIEvaluator
from hqm.structures import DatasetMeta, HOIPredictions, ImageAnnotation

ROLE_SUFFIXES = ("_obj", "_instr")
EXCLUDED_ROLE_CLASSES = ("point_instr",)


def parse_role_classes(names: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Actions, (K,) action id of every class and (K,) bool "has a role object"."""
    actions: list[str] = []
    action_of = np.zeros(len(names), dtype=np.int64)
    has_role = np.zeros(len(names), dtype=bool)
    for k, name in enumerate(names):
        action = name
        for suf in ROLE_SUFFIXES:
            if name.endswith(suf):
                action, has_role[k] = name[: -len(suf)], True
        if action not in actions:
            actions.append(action)
        action_of[k] = actions.index(action)
    return actions, action_of, has_role


def is_empty_box(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) -> (N,) bool: all zeros or any NaN (vsrl_eval's "no role predicted")."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (boxes == 0).all(axis=1) | np.isnan(boxes).any(axis=1)


class VCOCOEvaluator(HOIEvaluator):
    """AP_role (Scenario 1 and 2) and AP_agent, vectorised. See the module docstring."""

    def __init__(
        self,
        meta: DatasetMeta,
        test_annotations: list[ImageAnnotation],
        person_class: int = 0,
        iou_threshold: float = 0.5,
        excluded: tuple[str, ...] = EXCLUDED_ROLE_CLASSES,
    ) -> None:
        super().__init__()
        self.meta, self.iou_threshold = meta, iou_threshold
        self.names = list(meta.verb_names)
        self.actions, self.action_of, self.has_role = parse_role_classes(self.names)
        self.in_mean = self.has_role & ~np.isin(self.names, list(excluded))
        self.file_index = {ann.file_name: i for i, ann in enumerate(test_annotations)}
        n_cls, n_act = len(self.names), len(self.actions)
        img, boxes, acts, roles, role_ok = [], [], [], [], []
        for i, ann in enumerate(test_annotations):
            labels = np.asarray(ann.labels, dtype=np.int64)
            persons = np.flatnonzero(labels == person_class)
            local = np.full(labels.shape[0], -1, dtype=np.int64)
            local[persons] = np.arange(persons.shape[0])
            a = np.zeros((persons.shape[0], n_act), dtype=bool)
            r = np.zeros((persons.shape[0], n_cls, 4), dtype=np.float64)
            ok = np.zeros((persons.shape[0], n_cls), dtype=bool)
            for s, o, c in np.asarray(ann.hois, dtype=np.int64).reshape(-1, 3)[::-1]:  # first row wins
                if local[s] < 0 or not 0 <= c < n_cls:
                    continue
                a[local[s], self.action_of[c]] = True
                if o >= 0:
                    r[local[s], c], ok[local[s], c] = ann.boxes[o], True
            img.append(np.full(persons.shape[0], i, dtype=np.int64))
            boxes.append(np.asarray(ann.boxes, dtype=np.float64).reshape(-1, 4)[persons])
            acts.append(a)
            roles.append(r)
            role_ok.append(ok)
        # a dummy person (image -1, no action) at the end stands for "no person in this image"
        img.append(np.full(1, -1, dtype=np.int64))
        boxes.append(np.zeros((1, 4)))
        acts.append(np.zeros((1, n_act), dtype=bool))
        roles.append(np.zeros((1, n_cls, 4)))
        role_ok.append(np.zeros((1, n_cls), dtype=bool))
        self.p_img, self.p_box = np.concatenate(img), np.concatenate(boxes)
        self.p_act, self.p_role = np.concatenate(acts), np.concatenate(roles)
        self.p_role_ok = np.concatenate(role_ok)
        self.npos_action = self.p_act.sum(axis=0).astype(np.int64)

    def _reduce(self, pred: HOIPredictions) -> tuple[int, np.ndarray, ...] | None:
        """(image, class (k,), score (k,), human boxes (k, 4), role boxes (k, 4)) of the valid triplets."""
        img = self.file_index.get(pred.file_name)
        if img is None:
            return None
        c = np.asarray(pred.verb_labels, dtype=np.int64)
        keep = (c >= 0) & (c < len(self.names))
        return (
            img,
            c[keep],
            np.asarray(pred.scores, dtype=np.float64)[keep],
            np.asarray(pred.sub_boxes, dtype=np.float32)[keep],
            np.asarray(pred.obj_boxes, dtype=np.float32)[keep],
        )

    def _match_person(self, img: np.ndarray, sub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best GT person of the image for each human box (N, 4): (N,) global id and (N,) IoU.

        The id is the dummy person (last row, no action) when the image has no person.
        """
        pair_det, pair_gt, count = expand_groups(img, self.p_img)
        iou = box_iou_pairs(sub[pair_det], self.p_box[pair_gt], plus_one=True)
        person, ov = best_match(pair_det, pair_gt, iou, count)
        return np.where(person >= 0, person, self.p_img.shape[0] - 1), ov

    def _role_ap(
        self,
        img: np.ndarray,
        rank: np.ndarray,
        cls: np.ndarray,
        score: np.ndarray,
        sub: np.ndarray,
        obj: np.ndarray,
        scenario: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-role-class AP, max recall, #det of role detections (N,) / (N, 4) in a scenario (1 or 2)."""
        person, ov_h = self._match_person(img, sub)
        true_action = self.p_act[person, self.action_of[cls]]
        gt_has = self.p_role_ok[person, cls]
        ov_r = np.nan_to_num(box_iou_pairs(obj, self.p_role[person, cls], plus_one=True))  # NaN box -> 0
        no_gt_ov = is_empty_box(obj).astype(np.float64) if scenario == 1 else np.ones(cls.shape[0])
        ov_r = np.where(gt_has, ov_r, no_gt_ov)
        thr = self.iou_threshold
        qualifies = true_action & (ov_h >= thr) & (ov_r >= thr)
        order = np.lexsort((rank, img, -score, cls))
        tp = first_occurrence_tp(qualifies, person * len(self.names) + cls, order)
        npos = np.where(self.has_role, self.npos_action[self.action_of], 0)
        return per_class_ap(cls[order], tp[order], npos, method="voc")

    def _agent_ap(
        self, img: np.ndarray, cls: np.ndarray, score: np.ndarray, sub: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-action agent AP, max recall, #det; triplets (N,) are merged per (image, action, box)."""
        act = self.action_of[cls]
        key = np.concatenate([img[:, None].astype(np.float64), act[:, None], sub.astype(np.float64)], axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        best = np.full(uniq.shape[0], -np.inf)
        np.maximum.at(best, inv.ravel(), score)
        a_img, a_act, a_box = uniq[:, 0].astype(np.int64), uniq[:, 1].astype(np.int64), uniq[:, 2:]
        person, ov_h = self._match_person(a_img, a_box)
        qualifies = self.p_act[person, a_act] & (ov_h >= self.iou_threshold)
        order = np.lexsort((a_box[:, 0], a_img, -best, a_act))
        tp = first_occurrence_tp(qualifies, person * len(self.actions) + a_act, order)
        return per_class_ap(a_act[order], tp[order], self.npos_action, method="voc")

    def _compute(self, records: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
        items = sorted(records.values(), key=lambda r: r[0])
        img = np.concatenate([np.full(len(r[1]), r[0], np.int64) for r in items] + [np.zeros(0, np.int64)])
        rank = np.concatenate([np.arange(len(r[1])) for r in items] + [np.zeros(0, np.int64)])
        cls = np.concatenate([r[1] for r in items] + [np.zeros(0, np.int64)])
        score = np.concatenate([r[2] for r in items] + [np.zeros(0)])
        sub = np.concatenate([r[3] for r in items] + [np.zeros((0, 4), np.float32)])
        obj = np.concatenate([r[4] for r in items] + [np.zeros((0, 4), np.float32)])
        metrics: dict[str, float] = {}
        tables: dict[str, list[dict[str, Any]]] = {}
        role = self.has_role[cls]
        npos_cls = np.where(self.has_role, self.npos_action[self.action_of], 0)
        for scenario in (1, 2):
            ap, rec, n_det = self._role_ap(
                img[role], rank[role], cls[role], score[role], sub[role], obj[role], scenario
            )
            use = self.in_mean & (npos_cls > 0)
            metrics[f"AP_role_S{scenario}"] = float(ap[use].mean()) if use.any() else float("nan")
            tables[f"role_S{scenario}"] = [
                {
                    "name": n,
                    "ap": float(ap[k]),
                    "max_recall": float(rec[k]),
                    "n_gt": int(npos_cls[k]),
                    "n_det": int(n_det[k]),
                    "in_mean": bool(self.in_mean[k]),
                }
                for k, n in enumerate(self.names)
                if self.has_role[k]
            ]
        ap, rec, n_det = self._agent_ap(img, cls, score, sub)
        use = self.npos_action > 0
        metrics["AP_agent"] = float(ap[use].mean()) if use.any() else float("nan")
        tables["agent"] = [
            {
                "name": n,
                "ap": float(ap[k]),
                "max_recall": float(rec[k]),
                "n_gt": int(self.npos_action[k]),
                "n_det": int(n_det[k]),
            }
            for k, n in enumerate(self.actions)
        ]
        return metrics, tables
