"""A deliberately simple, loop-based HICO-DET evaluation used to check the fast evaluator.

This is a direct Python transcription of the official protocol (ho-rcnn ``eval_one.m`` +
``VOCevaldet_bboxpair.m``) with the same documented choices as :mod:`hqm.evaluation.hico_det`
(valid-pair classes, per-image top-k cut, KO cut among known-object candidates, classes without test
GT skipped from the means). It shares no code with the fast path - no numpy vectorisation, no helper
from :mod:`hqm.evaluation.ap` - and is O(detections x GT) in pure Python: use it on small cases only.
"""

from __future__ import annotations

from hqm.structures import DatasetMeta, HOIPredictions, ImageAnnotation


def _iou_plus_one(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1.0
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1.0
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0] + 1.0) * (a[3] - a[1] + 1.0) + (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0) - inter
    return inter / union


def _thresholds(variant: str) -> list[float]:
    """The 11 recall thresholds, written out the way each original computes them."""
    if variant == "matlab":  # MATLAB 0:0.1:1: a + k*d for the first half, b - k*d for the second
        return [k * 0.1 for k in range(6)] + [1.0 - k * 0.1 for k in (4, 3, 2, 1, 0)]
    if variant == "numpy":  # np.arange(0, 1.1, 0.1): start + k*step
        return [0.0 + k * 0.1 for k in range(11)]
    if variant == "exact":
        return [k / 10 for k in range(11)]
    raise ValueError(f"unknown AP thresholds {variant!r}")


def _ap_11(tp: list[int], npos: int, variant: str) -> tuple[float, float]:
    rec, prec = [], []
    n_tp = 0
    for i, t in enumerate(tp):
        n_tp += t
        rec.append(n_tp / npos)
        prec.append(n_tp / (i + 1))
    ap = 0.0
    for thr in _thresholds(variant):
        p = [prec[i] for i in range(len(rec)) if rec[i] >= thr]
        ap += (max(p) if p else 0.0) / 11
    return ap, (rec[-1] if rec else 0.0)


def reference_hico_eval(
    meta: DatasetMeta,
    test_annotations: list[ImageAnnotation],
    predictions: list[HOIPredictions],
    known_object: bool = False,
    max_dets: int = 100,
    train_annotations: list[ImageAnnotation] | None = None,
    ap_thresholds: str = "matlab",
) -> dict[str, float]:
    """``mAP_full`` / ``mean_max_recall`` (and rare / non-rare with the official split of
    ``meta.rare_classes`` or else training annotations) the slow way.

    ap_thresholds: ``matlab`` | ``numpy`` | ``exact``, the 11-point recall thresholds (the same
    setting as ``HICODetEvaluator``; the values are written out here independently)."""
    n_verb, n_obj = len(meta.verb_names), len(meta.object_names)
    classes = [(v, o) for v in range(n_verb) for o in range(n_obj) if bool(meta.correct_mat[v][o])]
    cid = {c: i for i, c in enumerate(classes)}
    order = {a.file_name: i for i, a in enumerate(test_annotations)}

    gt: dict[tuple[int, int], list[tuple[list[float], list[float]]]] = {}
    known: list[set[int]] = []
    for i, ann in enumerate(test_annotations):
        objs = set()
        for s, o, v in ann.hois.tolist():
            if o < 0:
                continue
            lab = int(ann.labels[o])
            objs.add(lab)
            if (v, lab) in cid:
                gt.setdefault((cid[(v, lab)], i), []).append((ann.boxes[s].tolist(), ann.boxes[o].tolist()))
        known.append(objs)

    dets: dict[int, list[tuple[float, int, int, list[float], list[float]]]] = {c: [] for c in range(len(cid))}
    seen = set()
    for pred in predictions:
        if pred.file_name not in order or pred.file_name in seen:
            continue
        seen.add(pred.file_name)
        i = order[pred.file_name]
        cands = []
        for j in range(len(pred)):
            key = (int(pred.verb_labels[j]), int(pred.obj_labels[j]))
            if key not in cid:
                continue
            if known_object and key[1] not in known[i]:
                continue
            cands.append((-float(pred.scores[j]), j))
        cands.sort()
        for rank, (_, j) in enumerate(cands[:max_dets]):
            key = (int(pred.verb_labels[j]), int(pred.obj_labels[j]))
            dets[cid[key]].append(
                (float(pred.scores[j]), i, rank, pred.sub_boxes[j].tolist(), pred.obj_boxes[j].tolist())
            )

    aps, recs, npos_all = [], [], []
    for c in range(len(cid)):
        npos = sum(len(g) for (cc, _), g in gt.items() if cc == c)
        npos_all.append(npos)
        lst = sorted(dets[c], key=lambda d: (-d[0], d[1], d[2]))
        used: dict[int, list[bool]] = {}
        tp = []
        for _, i, _, hb, ob in lst:
            g = gt.get((c, i), [])
            used.setdefault(i, [False] * len(g))
            best, jbest = -float("inf"), -1
            for j, (gh, go) in enumerate(g):
                ov = min(_iou_plus_one(hb, gh), _iou_plus_one(ob, go))
                if ov > best:
                    best, jbest = ov, j
            if best >= 0.5 and not used[i][jbest]:
                used[i][jbest] = True
                tp.append(1)
            else:
                tp.append(0)
        if npos == 0:
            aps.append(None)
            recs.append(None)
            continue
        ap, rec = _ap_11(tp, npos, ap_thresholds)
        aps.append(ap)
        recs.append(rec)

    def mean(vals: list) -> float:
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals else float("nan")

    out = {"mAP_full": mean(aps), "mean_max_recall": mean(recs)}
    if meta.rare_classes is not None:  # the official split
        official = {tuple(c) for c in meta.rare_classes}
        rare = [(v, o) in official for v, o in classes]
    elif train_annotations is not None:
        counts = [0] * len(cid)
        for ann in train_annotations:
            for s, o, v in ann.hois.tolist():
                if o < 0 or int(ann.labels[s]) != 0:
                    continue
                key = (v, int(ann.labels[o]))
                if key in cid:
                    counts[cid[key]] += 1
        rare = [n < 10 for n in counts]
    else:
        return out
    out["mAP_rare"] = mean([a for a, r in zip(aps, rare) if r])
    out["mAP_nonrare"] = mean([a for a, r in zip(aps, rare) if not r])
    return out
