"""Vectorised average-precision and matching kernels shared by the HOI evaluators.

Everything here works on numpy arrays and has no Python loop over detections:

* :func:`box_iou_pairs` - IoU of matching rows of two box arrays, with or without the +1-pixel area
  convention of the official HICO-DET / V-COCO code (``w = x2 - x1 + 1``);
* :func:`expand_groups` / :func:`best_match` - for each detection, the ground truth of the same group
  (image, or image and class) with the largest overlap, first one in GT order on ties (the official
  MATLAB loop only replaces the best on a strictly larger value);
* :func:`first_occurrence_tp` - the sequential "a GT can be matched only once, in score order" rule:
  a qualifying detection is a TP iff it is the *first* qualifying detection, in processing order, to
  choose its GT. This is exactly the greedy loop of the official code without the loop;
* :func:`ap_11point` (HICO-DET) and :func:`ap_voc` (V-COCO / HOI-A) on recall/precision curves, and
  :func:`per_class_ap` that slices a class-sorted detection list into per-class curves.

The 11 recall thresholds of :func:`ap_11point` come in three variants (:data:`AP_THRESHOLDS`), which
differ only where a class's recall lands exactly on 3/10, 6/10 or 7/10:

* ``matlab`` (default): the doubles of ``0:0.1:1`` in ho-rcnn's ``VOCevaldet_bboxpair.m``. MATLAB's
  colon operator builds the first half of a range as ``a + k*d`` and the second half as ``b - k*d``
  (:func:`matlab_colon`), so the thresholds are k/10 except t = 0.3, which is 0.1 * 3 =
  0.30000000000000004: a recall of exactly 3/10 does not reach it.
* ``numpy``: ``np.arange(0, 1.1, 0.1)`` as in the QPIC / CDN / HQM Python evaluators (``hico_eval.py``):
  0.3, 0.6 and 0.7 are each one ulp above k/10.
* ``exact``: the correctly rounded doubles k/10; every recall of exactly k/10 reaches t = k/10.
"""

from __future__ import annotations

import numpy as np


def matlab_colon(a: float, d: float, b: float) -> np.ndarray:
    """The doubles of MATLAB's ``a:d:b`` (float64, d > 0) for a range whose end ``b`` is a whole
    number n of steps from ``a``: ``a + k*d`` for k <= n/2 and ``b - (n-k)*d`` above, and (a + b) / 2
    in the middle when n is even (MathWorks' ``colonop.m``, which mimics the built-in ``colon``:
    ranges are computed symmetrically so that both ends are exact). For ``0:0.1:1`` every element
    is k/10 except k = 3, 0.1 * 3 = 0.30000000000000004.

    Raises ``ValueError`` when ``b`` is not within 1e-10 steps of a whole number of steps (MATLAB
    then stops short of ``b``; not needed here)."""
    if not d > 0:
        raise ValueError(f"step must be > 0, got {d}")
    steps = (b - a) / d
    n = int(round(steps))
    if n < 0 or abs(steps - n) > 1e-10:
        raise ValueError(f"{a}:{d}:{b} does not end a whole number of steps from its start")
    k = np.arange(n + 1, dtype=np.float64)
    out = np.where(k <= n // 2, a + k * d, b - (n - k) * d)
    if n % 2 == 0:
        out[n // 2] = (a + b) / 2
    return out


AP_THRESHOLDS: dict[str, np.ndarray] = {
    "matlab": matlab_colon(0.0, 0.1, 1.0),
    "numpy": np.arange(0, 1.1, 0.1),
    "exact": np.arange(11, dtype=np.float64) / 10.0,
}
"""The 11 recall thresholds of each variant (see the module docstring); ``matlab`` is the default."""


def recall_thresholds(variant: str) -> np.ndarray:
    """(11,) float64 recall thresholds of ``variant`` (``matlab`` | ``numpy`` | ``exact``).

    Raises ``ValueError`` naming the valid variants for anything else."""
    if variant not in AP_THRESHOLDS:
        raise ValueError(f"AP thresholds must be one of {', '.join(AP_THRESHOLDS)}, got {variant!r}")
    return AP_THRESHOLDS[variant]


def box_iou_pairs(a: np.ndarray, b: np.ndarray, plus_one: bool) -> np.ndarray:
    """IoU of row i of ``a`` with row i of ``b``.

    a, b: (N, 4) absolute xyxy boxes (any float dtype; computed in float64).
    plus_one: use the +1-pixel convention (``w = x2 - x1 + 1``, intersection counted only when the +1
        width and height are > 0) of ho-rcnn ``VOCevaldet_bboxpair.m`` and v-coco ``get_overlap``;
        otherwise continuous coordinates (intersection only when strictly positive, PPDM ``compute_IOU``).
    Returns (N,) float64; 0 where the boxes do not overlap. NaN boxes give NaN.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    e = 1.0 if plus_one else 0.0
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + e
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + e
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[:, 2] - a[:, 0] + e) * (a[:, 3] - a[:, 1] + e)
    area_b = (b[:, 2] - b[:, 0] + e) * (b[:, 3] - b[:, 1] + e)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    nan = np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1)
    iou[nan] = np.nan
    return iou


def expand_groups(det_key: np.ndarray, gt_key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (detection, GT) pairs that share a group key, grouped by detection, GT in index order.

    det_key: (N,) int64 group of every detection (e.g. ``image * num_classes + class``).
    gt_key:  (M,) int64 group of every ground truth.
    Returns ``pair_det`` (P,) ascending detection index, ``pair_gt`` (P,) GT index (ascending within a
    detection, i.e. the official GT loop order) and ``count`` (N,) number of GT of each detection.
    """
    det_key = np.asarray(det_key, dtype=np.int64)
    gt_key = np.asarray(gt_key, dtype=np.int64)
    gt_order = np.argsort(gt_key, kind="stable")
    sorted_keys = gt_key[gt_order]
    start = np.searchsorted(sorted_keys, det_key, side="left")
    count = np.searchsorted(sorted_keys, det_key, side="right") - start
    total = int(count.sum())
    pair_det = np.repeat(np.arange(det_key.shape[0], dtype=np.int64), count)
    seg_start = np.cumsum(count) - count
    within = np.arange(total, dtype=np.int64) - np.repeat(seg_start, count)
    pair_gt = gt_order[np.repeat(start, count) + within]
    return pair_det, pair_gt, count


def best_match(
    pair_det: np.ndarray, pair_gt: np.ndarray, pair_val: np.ndarray, count: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the GT with the largest ``pair_val`` (first in pair order on ties).

    pair_det, pair_gt, count: output of :func:`expand_groups`; pair_val: (P,) overlap of each pair
    (NaN is treated as -inf, i.e. never better than a real overlap).
    Returns ``best_gt`` (N,) int64 (-1 when the detection has no GT in its group) and ``best_val``
    (N,) float64 (-inf when none).
    """
    n = count.shape[0]
    best_gt = np.full(n, -1, dtype=np.int64)
    best_val = np.full(n, -np.inf, dtype=np.float64)
    if pair_det.size == 0:
        return best_gt, best_val
    val = np.where(np.isnan(pair_val), -np.inf, pair_val).astype(np.float64)
    has = count > 0
    seg_start = (np.cumsum(count) - count)[has]
    seg_max = np.maximum.reduceat(val, seg_start)
    best_val[has] = seg_max
    is_max = val == best_val[pair_det]
    idx = np.flatnonzero(is_max)
    d = pair_det[idx]
    first = np.ones(idx.shape[0], dtype=bool)
    first[1:] = d[1:] != d[:-1]
    best_gt[d[first]] = pair_gt[idx[first]]
    return best_gt, best_val


def first_occurrence_tp(qualifies: np.ndarray, gt_id: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Greedy one-to-one assignment in processing order, without a loop.

    qualifies: (N,) bool, the detection's chosen GT overlaps enough (and any other condition holds).
    gt_id:     (N,) int64 id of the chosen GT, globally unique across images/classes.
    order:     (N,) permutation, the processing order (per class: descending score).
    Returns (N,) bool: TP iff the detection qualifies and no earlier qualifying detection chose the same
    GT. Later detections choosing an already matched GT are FP (duplicates; no fallback to another GT).
    """
    tp = np.zeros(qualifies.shape[0], dtype=bool)
    seq = order[qualifies[order]]
    if seq.size:
        _, first = np.unique(gt_id[seq], return_index=True)
        tp[seq[first]] = True
    return tp


def precision_recall(tp_sorted: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision after each detection of a score-sorted TP array (N,) -> (N,), (N,)."""
    tp_cum = np.cumsum(np.asarray(tp_sorted, dtype=np.float64))
    n_det = np.arange(1, tp_cum.shape[0] + 1, dtype=np.float64)
    return tp_cum / float(npos), tp_cum / n_det


def ap_11point(rec: np.ndarray, prec: np.ndarray, thresholds: str = "matlab") -> float:
    """11-point interpolated AP of ho-rcnn ``VOCevaldet_bboxpair.m``.

    ``AP = sum_t max(prec[rec >= t]) / 11`` over t in ``AP_THRESHOLDS[thresholds]`` (``matlab``,
    ``numpy`` or ``exact``, see the module docstring), 0 when no point reaches t.
    rec, prec: (N,) with rec non-decreasing (a cumulative curve). Raises ``ValueError`` for an
    unknown variant.
    """
    if rec.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(prec[::-1])[::-1]  # max precision at this point or later
    first = np.searchsorted(rec, recall_thresholds(thresholds), side="left")  # first index with rec >= t
    reached = first < rec.shape[0]
    vals = np.where(reached, envelope[np.minimum(first, rec.shape[0] - 1)], 0.0)
    return float(vals.sum() / 11.0)


def ap_voc(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC all-point AP: area under the monotone precision envelope (v-coco / PPDM ``voc_ap``)."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def per_class_ap(
    cls_sorted: np.ndarray,
    tp_sorted: np.ndarray,
    npos: np.ndarray,
    method: str = "11point",
    thresholds: str = "matlab",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AP, final recall and detection count of every class from one class-major sorted list.

    cls_sorted: (N,) class of each detection, sorted ascending (class-major, then processing order).
    tp_sorted:  (N,) bool TP flags in the same order.
    npos:       (K,) number of ground truths per class.
    method: ``"11point"`` or ``"voc"``; thresholds: the 11-point variant (``matlab`` | ``numpy`` |
    ``exact``; ignored by ``voc``).
    Returns ap (K,), max_recall (K,) - NaN where ``npos == 0`` - and n_det (K,) int64.
    """
    if method not in ("11point", "voc"):
        raise ValueError(f"method must be '11point' or 'voc', got {method!r}")
    recall_thresholds(thresholds)  # an unknown variant fails before any work
    num = npos.shape[0]
    bounds = np.searchsorted(cls_sorted, np.arange(num + 1), side="left")
    ap = np.full(num, np.nan)
    rec_max = np.full(num, np.nan)
    n_det = np.diff(bounds).astype(np.int64)
    for k in np.flatnonzero(npos > 0):  # one vectorised step per class
        lo, hi = bounds[k], bounds[k + 1]
        if hi == lo:
            ap[k], rec_max[k] = 0.0, 0.0
            continue
        rec, prec = precision_recall(tp_sorted[lo:hi], int(npos[k]))
        ap[k] = ap_11point(rec, prec, thresholds) if method == "11point" else ap_voc(rec, prec)
        rec_max[k] = float(rec[-1])
    return ap, rec_max, n_det


def topk_desc(scores: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the ``k`` highest scores, descending, ties broken by the lower index (stable).

    Uses a partition first so the cost is ~O(N) for N >> k (11,700 candidates, k = 100).
    scores: (N,) float. Returns (min(N, k),) int64 (all N sorted when k is None).
    """
    s = np.asarray(scores, dtype=np.float64)
    n = s.shape[0]
    if k is None or n <= k:
        return np.argsort(-s, kind="stable").astype(np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(-s, k - 1)[k - 1]
    cand = np.flatnonzero(-s <= kth)  # ascending index, includes every tie of the k-th score
    return cand[np.argsort(-s[cand], kind="stable")][:k].astype(np.int64)
