"""V-COCO (AP_role S1/S2, AP_agent) and HOI-A (PPDM mAP) golden cases."""

from __future__ import annotations

import numpy as np
import pytest

from hqm.evaluation import build_evaluator, merge_records
from hqm.evaluation.hoia import HOIAEvaluator
from hqm.evaluation.testing import make_annotation, make_predictions
from hqm.evaluation.vcoco import VCOCOEvaluator, parse_role_classes
from hqm.structures import DatasetMeta

P = [0.0, 0.0, 99.0, 99.0]
P2 = [300.0, 0.0, 399.0, 99.0]
CUP = [100.0, 100.0, 149.0, 149.0]
ZERO = [0.0, 0.0, 0.0, 0.0]
NAN = [float("nan")] * 4


ann = make_annotation
pred = make_predictions


VERBS = ["hold_obj", "stand", "eat_obj", "eat_instr", "point_instr"]
HOLD, STAND, EAT_OBJ, EAT_INSTR, POINT = range(5)


def vmeta():
    mat = np.ones((5, 3), bool)
    return DatasetMeta("vcoco", ["person", "cup", "none"], VERBS, mat, no_object_class=2)


def test_parse_role_classes():
    actions, action_of, has_role = parse_role_classes(VERBS)
    assert actions == ["hold", "stand", "eat", "point"]
    assert action_of.tolist() == [0, 1, 2, 2, 3] and has_role.tolist() == [True, False, True, True, True]


def vcoco_case(eat_obj_box):
    # person 0 holds the cup, stands, eats with the cup as instrument; the eaten object is not annotated
    test = [ann("a", [P, CUP], [0, 1], [[0, 1, HOLD], [0, -1, STAND], [0, -1, EAT_OBJ], [0, 1, EAT_INSTR]])]
    preds = [
        pred(
            "a",
            [
                (P, CUP, 1, HOLD, 0.9),
                (P, ZERO, 2, STAND, 0.8),
                (P, eat_obj_box, 1, EAT_OBJ, 0.7),
                (P, CUP, 1, EAT_INSTR, 0.6),
            ],
        )
    ]
    ev = build_evaluator("vcoco", vmeta(), test, None)
    ev.process(preds)
    return ev.evaluate(), ev


@pytest.mark.parametrize("box", [ZERO, NAN])
def test_vcoco_empty_role_box_correct_in_both_scenarios(box):
    m, ev = vcoco_case(box)
    assert m["AP_role_S1"] == 1.0 and m["AP_role_S2"] == 1.0 and m["AP_agent"] == 1.0
    names = [r["name"] for r in ev.per_class["role_S1"]]
    assert names == ["hold_obj", "eat_obj", "eat_instr", "point_instr"]  # agent-only "stand" has no role AP
    assert not ev.per_class["role_S1"][-1]["in_mean"]  # point_instr excluded from the mean


def test_vcoco_scenario_1_vs_2_with_a_role_without_object():
    m, ev = vcoco_case(CUP)  # predicts an object box for eat_obj, whose GT role has no object
    s1 = {r["name"]: r["ap"] for r in ev.per_class["role_S1"]}
    s2 = {r["name"]: r["ap"] for r in ev.per_class["role_S2"]}
    assert s1["eat_obj"] == 0.0 and s2["eat_obj"] == 1.0
    assert m["AP_role_S1"] == pytest.approx(2 / 3) and m["AP_role_S2"] == 1.0  # mean over 3 classes with GT


def test_vcoco_human_matched_to_best_person_only():
    # det overlaps person 1 (no action) best, person 0 (holding) with IoU >= .5: FP as in vsrl_eval
    test = [ann("a", [P, [0.0, 0.0, 99.0, 79.0], CUP], [0, 0, 1], [[0, 2, HOLD]])]
    det_box = [0.0, 0.0, 99.0, 84.0]
    ev = VCOCOEvaluator(vmeta(), test)
    ev.process([pred("a", [(det_box, CUP, 1, HOLD, 0.9)])])
    assert ev.evaluate()["AP_role_S1"] == 0.0
    ev.reset()
    ev.process([pred("a", [(P, CUP, 1, HOLD, 0.9), (P, CUP, 1, HOLD, 0.8)])])  # duplicate -> FP after TP
    m = ev.evaluate()
    assert m["AP_role_S1"] == 1.0 and ev.per_class["role_S1"][0]["n_det"] == 2


def test_vcoco_agent_ap_merges_triplets_of_one_person():
    test = [ann("a", [P, P2, CUP], [0, 0, 1], [[0, 2, EAT_INSTR], [1, -1, STAND]])]
    preds = [
        pred("a", [(P, CUP, 1, EAT_INSTR, 0.9), (P, ZERO, 2, EAT_OBJ, 0.8), (P2, ZERO, 2, EAT_OBJ, 0.7)])
    ]
    ev = VCOCOEvaluator(vmeta(), test)
    ev.process(preds)
    ev.evaluate()
    agent = {r["name"]: r for r in ev.per_class["agent"]}
    # eat: P (two triplets -> one agent detection, TP) and P2 (FP): AP 1 (TP first), 2 detections
    assert agent["eat"]["n_det"] == 2 and agent["eat"]["ap"] == 1.0
    assert agent["stand"]["ap"] == 0.0 and agent["stand"]["n_gt"] == 1


def test_vcoco_rank_invariance():
    test = [ann(f"i{k}", [P, CUP], [0, 1], [[0, 1, HOLD], [0, -1, EAT_OBJ]]) for k in range(6)]
    rng = np.random.default_rng(0)
    preds = [
        pred(t.file_name, [(P, CUP, 1, HOLD, rng.random()), (P, CUP, 1, EAT_OBJ, rng.random())]) for t in test
    ]
    one = VCOCOEvaluator(vmeta(), test)
    one.process(preds)
    expect = one.evaluate()
    ranks = []
    for r in range(4):
        ev = VCOCOEvaluator(vmeta(), test)
        ev.process((preds + preds[:2])[r::4])
        ranks.append(ev.records)
    assert VCOCOEvaluator(vmeta(), test).compute_from(merge_records(ranks)) == expect


# ----------------------------------------------------------------------------------------------- HOI-A
def hmeta():
    return DatasetMeta("hoia", ["person", "cellphone", "cigarette"], ["smoke", "call"], np.ones((2, 3), bool))


CIG = [10.0, 10.0, 20.0, 20.0]


def test_hoia_duplicate_and_class_without_gt():
    test = [ann("a", [P, CIG], [0, 2], [[0, 1, 0]])]
    ev = build_evaluator("hoia", hmeta(), test, None)
    ev.process([pred("a", [(P, CIG, 2, 0, 0.9), (P, CIG, 2, 0, 0.95)])])
    m = ev.evaluate()
    # smoke: TP then duplicate FP -> AP 1; call has no GT and counts 0 in PPDM's mean
    assert ev.per_class["default"][0]["ap"] == 1.0 and ev.per_class["default"][0]["n_det"] == 2
    assert m["mAP"] == 0.5


def test_hoia_continuous_iou_and_category():
    test = [ann("a", [P, CIG], [0, 2], [[0, 1, 0]]), ann("b", [P, CIG], [0, 2], [[0, 1, 0]])]
    ev = HOIAEvaluator(hmeta(), test)
    half = [0.0, 0.0, 99.0, 198.0]  # continuous IoU with P: 99*99 / (99*198) = 0.5 -> TP
    ev.process([pred("a", [(half, CIG, 2, 0, 0.9)]), pred("b", [(P, CIG, 1, 0, 0.8)])])  # "b": wrong category
    ev.evaluate()
    row = ev.per_class["default"][0]
    assert row["max_recall"] == 0.5 and row["ap"] == 0.5


def test_hoia_ppdm_matching_consumes_coincident_gt():
    # two identical GT HOIs: PPDM's loop lets one prediction mark both as matched
    test = [ann("a", [P, CIG], [0, 2], [[0, 1, 0], [0, 1, 0]])]
    preds = [pred("a", [(P, CIG, 2, 0, 0.9), (P, CIG, 2, 0, 0.8)])]
    ppdm, greedy = HOIAEvaluator(hmeta(), test), HOIAEvaluator(hmeta(), test, matching="greedy")
    for ev in (ppdm, greedy):
        ev.process(preds)
        ev.evaluate()
    assert ppdm.per_class["default"][0]["ap"] == 0.5
    assert greedy.per_class["default"][0]["ap"] == 1.0


def test_hoia_top_k_cut():
    test = [ann("a", [P, CIG], [0, 2], [[0, 1, 0]])]
    ev = HOIAEvaluator(hmeta(), test, max_dets=1)
    ev.process([pred("a", [(P, CIG, 2, 0, 0.5), (P2, CIG, 2, 1, 0.9)])])
    ev.evaluate()
    assert ev.per_class["default"][0]["n_det"] == 0
