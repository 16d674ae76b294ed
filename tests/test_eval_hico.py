"""HICO-DET evaluator: hand-built golden cases, invariances and agreement with the slow reference."""

from __future__ import annotations

import numpy as np
import pytest

from hqm.evaluation import build_evaluator, format_class_table, format_table, merge_records
from hqm.evaluation.hico_det import HICODetEvaluator
from hqm.evaluation.reference import reference_hico_eval
from hqm.evaluation.testing import (
    iter_random_predictions,
    make_annotation,
    make_predictions,
    random_annotations,
    random_meta,
)
from hqm.structures import DatasetMeta

H = [0.0, 0.0, 9.0, 9.0]  # a 10 x 10 px person (+1 convention)
OB = [20.0, 20.0, 29.0, 29.0]  # a 10 x 10 px object


def meta3() -> DatasetMeta:
    """person, cup, ball; verbs hold, look; every pair valid -> 6 classes."""
    return DatasetMeta("toy", ["person", "cup", "ball"], ["hold", "look"], np.ones((2, 3), bool))


ann = make_annotation
pred = make_predictions


def run(test, preds, mode="default", train=None, max_dets=100, ap_thresholds="matlab"):
    ev = build_evaluator(
        "hico_det", meta3(), test, train, mode=mode, max_dets=max_dets, ap_thresholds=ap_thresholds
    )
    ev.process(preds)
    return ev.evaluate(), ev


def table(ev, key="default"):
    return {r["name"]: r for r in ev.per_class[key]}


def test_perfect_predictions_score_one():
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0], [0, 1, 1]]), ann("b", [H, OB], [0, 2], [[0, 1, 1]])]
    preds = [pred("a", [(H, OB, 1, 0, 0.9), (H, OB, 1, 1, 0.8)]), pred("b", [(H, OB, 2, 1, 0.7)])]
    m, ev = run(test, preds, mode="both")
    assert m["mAP_full"] == 1.0 and m["mean_max_recall"] == 1.0 and m["mAP_full_ko"] == 1.0
    t = table(ev)
    assert t["hold_ball"]["n_gt"] == 0 and np.isnan(t["hold_ball"]["ap"])  # no GT: out of the mean
    assert "mAP_full" in format_table(m) and "100.00" in format_table(m)
    assert "hold_cup" in format_class_table(ev.per_class["default"])


def test_a_test_image_listed_twice_is_named():
    from hqm.data.records import DatasetError

    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0]]), ann("b", [H, OB], [0, 1], [[0, 1, 0]])]
    with pytest.raises(DatasetError, match="the test annotations list 'b' more than once"):
        run([*test, ann("b", [H, OB], [0, 1], [[0, 1, 1]])], [])


OB2 = [40.0, 40.0, 49.0, 49.0]  # a second object


@pytest.mark.parametrize(
    "variant, expected",
    # three classes with 10 GT each, recall exactly 3/10, 6/10 and 7/10 at precision 1; per class
    # 11-point AP = (thresholds reached) / 11: exact 4 + 7 + 8, MATLAB 3 + 7 + 8 (misses 0.3 + 1 ulp
    # at recall 3/10), NumPy 3 + 6 + 7 (also misses 0.6 and 0.7 + 1 ulp)
    [("exact", 19 / 33), ("matlab", 18 / 33), ("numpy", 16 / 33)],
)
def test_threshold_variants_at_exact_boundary_recalls(variant, expected):
    test = [ann(f"i{i}", [H, OB, OB2], [0, 1, 2], [[0, 1, 0], [0, 1, 1], [0, 2, 0]]) for i in range(10)]
    # hold_cup right in images 0-2, look_cup in 0-5, hold_ball in 0-6
    preds = [
        pred(
            f"i{i}",
            [(H, OB, 1, 0, 0.9)] * (i < 3) + [(H, OB, 1, 1, 0.8)] * (i < 6) + [(H, OB2, 2, 0, 0.7)] * (i < 7),
        )
        for i in range(10)
    ]
    m, ev = run(test, preds, ap_thresholds=variant)
    assert [table(ev)[c]["max_recall"] for c in ("hold_cup", "look_cup", "hold_ball")] == [0.3, 0.6, 0.7]
    assert m["mAP_full"] == pytest.approx(expected, abs=1e-15)
    ref = reference_hico_eval(meta3(), test, preds, ap_thresholds=variant)
    assert ref["mAP_full"] == pytest.approx(expected, abs=1e-15)


def test_duplicate_is_false_positive():
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0]]), ann("b", [H, OB], [0, 1], [[0, 1, 0]])]
    preds = [pred("a", [(H, OB, 1, 0, 0.9), (H, OB, 1, 0, 0.8)]), pred("b", [(H, OB, 1, 0, 0.7)])]
    m, _ = run(test, preds)
    # tp 1 0 1 over 2 GT: rec .5 .5 1, prec 1 .5 2/3 -> t <= .5: 1 (6 thresholds), t > .5: 2/3 (5)
    assert m["mAP_full"] == pytest.approx((6 + 5 * 2 / 3) / 11)


@pytest.mark.parametrize("y2, expect", [(49.0, 1.0), (50.0, 0.0)])
def test_iou_exactly_half_is_tp_and_just_below_is_fp(y2, expect):
    # GT object 10 x 20 px (+1), prediction 10 x 40: IoU = 200 / 400 = 0.5 exactly; y2 = 50 -> 200 / 410.
    gt_obj = [20.0, 20.0, 29.0, 39.0]
    test = [ann("a", [H, gt_obj], [0, 1], [[0, 1, 0]])]
    m, _ = run(test, [pred("a", [(H, [20.0, 20.0, 29.0, 59.0 - 49.0 + y2], 1, 0, 0.9)])])
    assert m["mAP_full"] == expect


def test_two_gt_one_detection():
    other = [0.0, 50.0, 9.0, 59.0]
    test = [ann("a", [H, OB, other], [0, 1, 1], [[0, 1, 0], [0, 2, 0]])]
    m, ev = run(test, [pred("a", [(H, OB, 1, 0, 0.9)])])
    assert m["mAP_full"] == pytest.approx(6 / 11)  # recall .5 at precision 1
    assert m["mean_max_recall"] == 0.5
    assert table(ev)["hold_cup"]["n_gt"] == 2


def test_best_gt_taken_even_if_matched_no_fallback():
    # two GT pairs of the same class; both detections overlap GT 0 best, the second also GT 1 enough.
    o2 = [22.0, 20.0, 31.0, 29.0]  # IoU with OB = 80/120 = .667
    test = [ann("a", [H, OB, o2], [0, 1, 1], [[0, 1, 0], [0, 2, 0]])]
    near = [21.0, 20.0, 30.0, 29.0]  # IoU .818 with OB, .818 with o2 -> first GT (OB) on the tie
    m, _ = run(test, [pred("a", [(H, OB, 1, 0, 0.9), (H, near, 1, 0, 0.8)])])
    # second detection: best GT is OB (already matched) -> FP, although o2 would match: recall stays .5
    assert m["mean_max_recall"] == 0.5


def test_invalid_pairs_ignored_and_topk_cut():
    meta = DatasetMeta("toy", ["person", "cup"], ["hold", "look"], np.array([[1, 1], [0, 1]], bool))
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0]])]
    # (look, person) is invalid: its high score must not consume the single top-1 slot
    preds = [pred("a", [(H, H, 0, 1, 0.99), (H, OB, 1, 0, 0.5)])]
    ev = build_evaluator("synthetic", meta, test, None, max_dets=1)
    ev.process(preds)
    assert ev.evaluate()["mAP_full"] == 1.0


def test_known_object_mode_filters_images_and_uses_full_candidate_set():
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0]]), ann("b", [H, OB], [0, 2], [[0, 1, 0]])]
    preds = [
        pred("a", [(H, OB, 2, 0, 0.95), (H, OB, 1, 0, 0.5)]),  # hold_ball: ball unknown in "a"
        pred("b", [(H, OB, 1, 0, 0.9)]),  # hold_cup FP in an image without a cup
    ]
    m, ev = run(test, preds, mode="both", max_dets=1)
    # Default top-1 of "a" is the hold_ball FP -> hold_cup has only the FP from "b"
    assert table(ev)["hold_cup"]["ap"] == 0.0
    # KO: "a" keeps its best known-object candidate (hold_cup, TP); "b" has no cup -> no hold_cup det
    assert table(ev, "ko")["hold_cup"]["ap"] == 1.0 and table(ev, "ko")["hold_ball"]["ap"] == 0.0
    assert m["mAP_full_ko"] == pytest.approx(0.5) and m["mAP_full"] == 0.0


def test_rare_split_from_training_counts():
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0], [0, 1, 1]])]
    train = [
        ann("t1", [H, OB], [0, 1], [[0, 1, 0]] * 10 + [[0, 1, 1]] * 9),
        ann("t2", [OB, OB], [1, 1], [[0, 1, 1]]),
    ]
    # hold_cup: 10 (non-rare); look_cup: 9 with a person subject (the cup-subject row is not counted)
    m, ev = run(test, [pred("a", [(H, OB, 1, 0, 0.9)])], train=train)
    assert m["mAP_nonrare"] == 1.0 and m["mAP_rare"] == 0.0 and m["mAP_full"] == 0.5
    assert table(ev)["look_cup"]["n_train"] == 9 and table(ev)["look_cup"]["rare"]
    m, _ = run(test, [pred("a", [(H, OB, 1, 0, 0.9)])])
    assert "mAP_rare" not in m  # no training annotations -> no split


def test_official_hico_split_is_used_whatever_the_training_subset(tmp_path, caplog):
    from hqm.data import load_meta

    meta = load_meta("hico_det", tmp_path)  # the packaged vocabulary: no file needed
    assert len(meta.rare_classes) == 138
    names = {f"{meta.verb_names[v]}_{meta.object_names[o]}" for v, o in meta.rare_classes}
    # spot checks of the official split: HOI ids 9 and 23 are rare, 19 (ride bicycle) is not
    assert {"wash_airplane", "wash_bicycle"} <= names and "ride_bicycle" not in names
    assert all(meta.correct_mat[v, o] for v, o in meta.rare_classes)
    ride_bike = (meta.verb_names.index("ride"), meta.object_names.index("bicycle"))
    wash_plane = (meta.verb_names.index("wash"), meta.object_names.index("airplane"))
    test = [
        ann("a", [H, OB], [0, ride_bike[1]], [[0, 1, ride_bike[0]]]),
        ann("b", [H, OB], [0, wash_plane[1]], [[0, 1, wash_plane[0]]]),
    ]
    preds = [pred("a", [(H, OB, ride_bike[1], ride_bike[0], 0.9)])]
    # a few-shot training subset: 3 rows of ride_bicycle, nothing else -> counting would call all 600 rare
    subset = [ann("t", [H, OB], [0, ride_bike[1]], [[0, 1, ride_bike[0]]] * 3)]
    with caplog.at_level("WARNING", logger="hqm.evaluation"):
        ev = HICODetEvaluator(meta, test, subset)
    assert "the training annotations give 600 rare classes" in caplog.text
    assert "462 classes differ" in caplog.text and "official split" in caplog.text
    assert int(ev.rare.sum()) == 138 and ev.train_counts.sum() == 3
    ev.process(preds)
    m = ev.evaluate()
    # ride_bicycle (non-rare, AP 1) and wash_airplane (rare, no detection, AP 0)
    assert m["mAP_nonrare"] == 1.0 and m["mAP_rare"] == 0.0 and m["mAP_full"] == 0.5
    # without training annotations the official split still applies; the reference agrees
    no_train = HICODetEvaluator(meta, test)
    no_train.process(preds)
    assert no_train.evaluate() == m
    assert reference_hico_eval(meta, test, preds, train_annotations=subset) == pytest.approx(m, abs=1e-12)


def test_rare_split_from_zero_training_records_is_an_error():
    with pytest.raises(ValueError, match="no training records"):
        run([ann("a", [H, OB], [0, 1], [[0, 1, 0]])], [], train=[])


def _random_case(seed, n_images=40, n_pairs=8, tie_scores=False):
    meta = random_meta(10, 6, 25, seed=seed)
    test = random_annotations(meta, n_images, seed=seed + 1)
    train = random_annotations(meta, 150, seed=seed + 2, prefix="train")
    preds = [p for b in iter_random_predictions(meta, test, seed=seed + 3, n_pairs=n_pairs) for p in b]
    if tie_scores:  # coarse scores create many ties across and within images
        for p in preds:
            p.scores = np.round(p.scores * 10) / 10
    return meta, test, train, preds


@pytest.mark.parametrize("seed, ties", [(0, False), (10, True), (20, False)])
@pytest.mark.parametrize("mode", ["default", "ko"])
def test_fast_equals_reference(seed, ties, mode):
    meta, test, train, preds = _random_case(seed, tie_scores=ties)
    ev = HICODetEvaluator(meta, test, train, mode=mode, max_dets=25)
    ev.process(preds)
    fast = ev.evaluate()
    ref = reference_hico_eval(
        meta, test, preds, known_object=mode == "ko", max_dets=25, train_annotations=train
    )
    sfx = "_ko" if mode == "ko" else ""
    for key in ("mAP_full", "mAP_rare", "mAP_nonrare", "mean_max_recall"):
        assert fast[key + sfx] == pytest.approx(ref[key], abs=1e-6), key
    assert 0.05 < fast["mAP_full" + sfx] < 0.95  # a non-trivial case


def test_batching_and_order_invariance():
    meta, test, train, preds = _random_case(5, tie_scores=True)
    results = []
    for batches in (
        [preds],
        [preds[i : i + 3] for i in range(0, len(preds), 3)],
        [[p] for p in preds[::-1]],
        [preds[1::2], preds[::2], preds[:5]],  # shuffled, with repeated images
    ):
        ev = HICODetEvaluator(meta, test, train, mode="both")
        for b in batches:
            ev.process(b)
        results.append((ev.evaluate(), ev.per_class))
    for m, tables in results[1:]:
        assert m == results[0][0]
        assert tables == results[0][1]


def test_rank_invariance_with_sampler_padding():
    meta, test, train, preds = _random_case(7)
    single = HICODetEvaluator(meta, test, train, mode="both")
    single.process(preds)
    expect = single.evaluate()
    for world in (2, 3):
        padded = preds + preds[: (-len(preds)) % world]  # DistributedSampler pads with repeats
        ranks = []
        for r in range(world):
            ev = HICODetEvaluator(meta, test, train, mode="both")
            ev.process(padded[r::world])
            ranks.append(ev.records)
        merged = merge_records(ranks)
        assert len(merged) == len(preds)
        assert HICODetEvaluator(meta, test, train, mode="both").compute_from(merged) == expect


def test_unknown_images_are_counted_not_used():
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0]])]
    m, ev = run(test, [pred("a", [(H, OB, 1, 0, 0.9)]), pred("zzz", [(H, OB, 1, 0, 0.9)])])
    assert m["mAP_full"] == 1.0 and ev.num_unknown_images == 1


def test_empty_predictions():
    test = [ann("a", [H, OB], [0, 1], [[0, 1, 0]])]
    m, _ = run(test, [], mode="both")
    assert m["mAP_full"] == 0.0 and m["mAP_full_ko"] == 0.0 and m["mean_max_recall"] == 0.0
