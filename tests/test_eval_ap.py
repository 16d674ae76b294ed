"""AP utilities and matching kernels: hand-computed values and statistical sanity."""

from __future__ import annotations

import numpy as np
import pytest

from hqm.evaluation.ap import (
    AP_THRESHOLDS,
    ap_11point,
    ap_voc,
    best_match,
    box_iou_pairs,
    expand_groups,
    first_occurrence_tp,
    matlab_colon,
    per_class_ap,
    precision_recall,
    topk_desc,
)


def test_threshold_variants_are_the_documented_doubles():
    exact = [k / 10 for k in range(11)]
    assert AP_THRESHOLDS["exact"].tolist() == exact
    # MATLAB 0:0.1:1 differs from k/10 only at t = 0.3 (= 3 * 0.1, one ulp above 0.3)
    matlab = AP_THRESHOLDS["matlab"].tolist()
    assert [k for k in range(11) if matlab[k] != exact[k]] == [3]
    assert matlab[3] == 0.30000000000000004 == np.nextafter(0.3, 1)
    # np.arange(0, 1.1, 0.1) differs at 0.3, 0.6 and 0.7, each one ulp above
    numpy = AP_THRESHOLDS["numpy"].tolist()
    assert [k for k in range(11) if numpy[k] != exact[k]] == [3, 6, 7]
    assert all(numpy[k] == np.nextafter(exact[k], 1) for k in (3, 6, 7))


def test_matlab_colon_is_symmetric_with_an_exact_middle():
    # 0:0.1:0.7 (n = 7): a + k*d up to k = 3, then 0.7 - 3*0.1, 0.7 - 2*0.1, 0.7 - 0.1, 0.7
    assert matlab_colon(0.0, 0.1, 0.7).tolist() == [
        0.0,
        0.1,
        0.2,
        0.30000000000000004,
        0.3999999999999999,
        0.49999999999999994,
        0.6,
        0.7,
    ]
    # 0:0.1:0.6 (n = 6, even): the middle element is (0 + 0.6) / 2 = 0.3, not 3 * 0.1
    assert matlab_colon(0.0, 0.1, 0.6).tolist() == [0.0, 0.1, 0.2, 0.3, 0.39999999999999997, 0.5, 0.6]
    with pytest.raises(ValueError, match="whole number of steps"):
        matlab_colon(0.0, 0.3, 1.0)


# 10 GT; tp flags in score order; AP by hand for the three variants (sums over 11 thresholds).
# All-TP runs ending at recall 3/10, 6/10, 7/10: only the last threshold reached is at stake.
# "interior": TP TP TP FP FP FP TP -> rec .1 .2 .3 .3 .3 .3 .4, the envelope drops after recall 3/10:
# t = 0.3 sees precision 1 when it is exactly 0.3 (exact) and 4/7 when it is 0.3 + 1 ulp.
_BOUNDARY_CASES = {
    "recall 3/10": ([1, 1, 1], {"exact": 4 / 11, "matlab": 3 / 11, "numpy": 3 / 11}),
    "recall 6/10": ([1] * 6, {"exact": 7 / 11, "matlab": 7 / 11, "numpy": 6 / 11}),
    "recall 7/10": ([1] * 7, {"exact": 8 / 11, "matlab": 8 / 11, "numpy": 7 / 11}),
    "interior 3/10": (
        [1, 1, 1, 0, 0, 0, 1],
        {"exact": (4 + 4 / 7) / 11, "matlab": (3 + 2 * 4 / 7) / 11, "numpy": (3 + 2 * 4 / 7) / 11},
    ),
    "interior 6/10": (
        [1] * 6 + [0] * 6 + [1],  # rec .6 (prec 1), then .7 at prec 7/13: numpy misses t = .7 too
        {"exact": (7 + 7 / 13) / 11, "matlab": (7 + 7 / 13) / 11, "numpy": (6 + 7 / 13) / 11},
    ),
}


@pytest.mark.parametrize("variant", ["matlab", "numpy", "exact"])
@pytest.mark.parametrize("case", list(_BOUNDARY_CASES))
def test_eleven_point_at_exact_boundary_recalls(case, variant):
    tp, expected = _BOUNDARY_CASES[case]
    rec, prec = precision_recall(np.array(tp), npos=10)
    assert ap_11point(rec, prec, variant) == pytest.approx(expected[variant], abs=1e-15)


def test_unknown_threshold_variant_is_refused():
    rec, prec = precision_recall(np.array([1]), npos=1)
    with pytest.raises(ValueError, match="matlab, numpy, exact"):
        ap_11point(rec, prec, "matlab2")
    with pytest.raises(ValueError, match="matlab, numpy, exact"):
        per_class_ap(np.zeros(1, np.int64), np.ones(1, bool), np.ones(1, np.int64), thresholds="x")


def test_eleven_point_by_hand():
    # tp: 1 0 1 with npos 4 -> rec .25 .25 .5, prec 1 .5 .667
    rec, prec = precision_recall(np.array([1, 0, 1]), npos=4)
    # t=0,.1,.2: max prec at rec>=t is 1; t=.3,.4,.5: 2/3; t>.5: 0
    assert ap_11point(rec, prec) == pytest.approx((3 * 1 + 3 * 2 / 3) / 11)
    assert ap_11point(np.zeros(0), np.zeros(0)) == 0.0


def test_voc_ap_by_hand():
    rec, prec = precision_recall(np.array([1, 0, 1, 0]), npos=2)
    # envelope: 1 on (0, .5], 2/3 on (.5, 1]
    assert ap_voc(rec, prec) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    rec, prec = precision_recall(np.array([0, 1]), npos=1)
    assert ap_voc(rec, prec) == pytest.approx(0.5)


def test_iou_plus_one_convention():
    gt = np.array([[0, 0, 9, 9]], float)  # 10 x 10 pixels with the +1 convention
    assert box_iou_pairs(np.array([[0, 0, 9, 19]]), gt, plus_one=True)[0] == 0.5
    assert box_iou_pairs(np.array([[0, 0, 9, 20]]), gt, plus_one=True)[0] < 0.5
    assert box_iou_pairs(np.array([[0, 0, 9, 19]]), gt, plus_one=False)[0] == pytest.approx(81 / 171)
    assert box_iou_pairs(np.array([[20, 20, 30, 30]]), gt, plus_one=True)[0] == 0.0


def test_expand_and_best_match_first_max_wins():
    det_key = np.array([5, 7, 5, 9])
    gt_key = np.array([5, 9, 5, 5])
    pair_det, pair_gt, count = expand_groups(det_key, gt_key)
    assert count.tolist() == [3, 0, 3, 1]
    assert pair_gt[pair_det == 0].tolist() == [0, 2, 3]  # GT index order within the group
    val = np.array([0.2, 0.7, 0.7, 0.1, 0.1, 0.3, 0.9])
    best_gt, best_val = best_match(pair_det, pair_gt, val, count)
    assert best_gt.tolist() == [2, -1, 3, 1]  # ties -> first GT in order
    assert best_val[1] == -np.inf and best_val[3] == 0.9


def test_first_occurrence_tp_is_the_greedy_loop():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = 50
        gt = rng.integers(0, 8, n)
        qual = rng.random(n) < 0.7
        order = rng.permutation(n)
        tp = first_occurrence_tp(qual, gt, order)
        used, expect = set(), np.zeros(n, bool)
        for d in order:
            if qual[d] and gt[d] not in used:
                used.add(gt[d])
                expect[d] = True
        assert (tp == expect).all()


def test_per_class_ap_nan_without_gt_and_zero_without_dets():
    cls = np.array([0, 0, 2])
    tp = np.array([True, False, True])
    ap, rec, n_det = per_class_ap(cls, tp, np.array([1, 3, 0]), method="voc")
    assert ap[0] == 1.0 and rec[0] == 1.0
    assert ap[1] == 0.0 and rec[1] == 0.0
    assert np.isnan(ap[2]) and n_det.tolist() == [2, 0, 1]


def test_topk_desc_stable_ties():
    s = np.array([0.5, 0.9, 0.5, 0.1, 0.5, 0.9], dtype=np.float32)
    assert topk_desc(s, 3).tolist() == [1, 5, 0]
    assert topk_desc(s, 4).tolist() == [1, 5, 0, 2]
    assert topk_desc(s, None).tolist() == [1, 5, 0, 2, 4, 3]
    assert topk_desc(s, 0).tolist() == []


@pytest.mark.parametrize("p", [0.1, 0.3, 0.6])
def test_random_scores_give_ap_near_positive_rate(p):
    # Random ranking: the expected precision at every recall level is p, so AP ~ p. With N = 20,000
    # detections (n_pos ~ p N >= 2,000) the standard deviation of AP across seeds is < 0.01 (it is about
    # sqrt(p (1 - p) / N) times a small constant; measured ~0.004); 0.03 is > 3 sigma for every p here.
    rng = np.random.default_rng(int(p * 100))
    n = 20_000
    tp = rng.random(n) < p
    rec, prec = precision_recall(tp, int(tp.sum()))
    assert ap_voc(rec, prec) == pytest.approx(p, abs=0.03)
    # 11-point: the t = 0 term is the maximum precision anywhere on the curve (often 1 from the first
    # few detections) instead of ~p, so it sits above p by up to (1 - p) / 11, never below p - 0.03.
    ap11 = ap_11point(rec, prec)
    assert p - 0.03 <= ap11 <= p + (1 - p) / 11 + 0.03
    assert (ap11 * 11 - prec.max()) / 10 == pytest.approx(p, abs=0.03)
