"""Predictions file I/O, exports, and torch.distributed gathering."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from hqm.errors import UsageError
from hqm.evaluation import (
    PredictionsFormatError,
    build_evaluator,
    load_predictions,
    records_to_predictions,
    save_predictions,
)
from hqm.evaluation.export import export_hico_mat, export_vcoco_pickle
from hqm.evaluation.testing import iter_random_predictions, random_annotations, random_meta
from hqm.structures import DatasetMeta, HOIPredictions

COCO_IDS = [1, 2, 3, 4, 5, 6]  # contiguous -> file id


def _preds(seed=0):
    meta = random_meta(5, 6, 12, seed=seed)
    test = random_annotations(meta, 4, seed=seed)
    return meta, test, [p for b in iter_random_predictions(meta, test, seed=seed, n_pairs=3) for p in b]


def test_roundtrip_hico(tmp_path):
    meta, test, preds = _preds()
    path = tmp_path / "pred.json"
    save_predictions(preds, path, COCO_IDS, verb_id_offset=1)
    recs = json.loads(path.read_text())
    assert min(h["category_id"] for r in recs for h in r["hoi_prediction"]) >= 1  # 1-based verbs
    back = load_predictions(path, COCO_IDS, verb_id_offset=1, num_verbs=5)
    for a, b in zip(preds, back):
        assert a.file_name == b.file_name
        for f in ("sub_boxes", "obj_boxes", "obj_labels", "verb_labels", "scores"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
    # the evaluator gives the same numbers from the file
    m1 = build_evaluator("hico_det", meta, test, None)
    m1.process(preds)
    m2 = build_evaluator("hico_det", meta, test, None)
    m2.process(back)
    assert m1.evaluate() == m2.evaluate()


def test_roundtrip_vcoco_no_object():
    p = HOIPredictions(
        "x.jpg",
        np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32),
        np.array([[5, 5, 9, 9], [0, 0, 0, 0]], np.float32),
        np.array([1, 80]),
        np.array([0, 1]),
        np.array([0.9, 0.8], np.float32),
    )
    ids = list(range(1, 81))
    from hqm.evaluation import predictions_to_records

    recs = predictions_to_records([p], ids, verb_id_offset=0, no_object_class=80)
    assert recs[0]["hoi_prediction"][1]["object_id"] == -1 and len(recs[0]["predictions"]) == 2
    back = records_to_predictions(recs, ids, 0, no_object_class=80)[0]
    assert back.obj_labels.tolist() == [1, 80] and not back.obj_boxes[1].any()


@pytest.mark.parametrize(
    "record, field",
    [
        ({"predictions": []}, "file_name"),
        (
            {"file_name": "a", "predictions": [{"bbox": [0, 0, 1], "category_id": 1}], "hoi_prediction": []},
            "predictions[0].bbox",
        ),
        (
            {
                "file_name": "a",
                "predictions": [{"bbox": [0, 0, 1, 1], "category_id": 99}],
                "hoi_prediction": [],
            },
            "category_id",
        ),
        ({"file_name": "a", "predictions": []}, "'hoi_prediction': missing"),  # not "no detections"
        ({"file_name": "ok", "predictions": [], "hoi_prediction": []}, "the image of record 0 too"),
        (
            {
                "file_name": "a",
                "predictions": [{"bbox": [0, 0, 1, 1], "category_id": 1}],
                "hoi_prediction": [{"subject_id": 0, "object_id": 3, "category_id": 1, "score": 0.5}],
            },
            "hoi_prediction[0].object_id",
        ),
        (
            {
                "file_name": "a",
                "predictions": [{"bbox": [0, 0, 1, 1], "category_id": 1}],
                "hoi_prediction": [{"subject_id": 0, "object_id": -1, "category_id": 1, "score": 0.5}],
            },
            "hoi_prediction[0].object_id",
        ),
        (
            {
                "file_name": "a",
                "predictions": [{"bbox": [0, 0, 1, 1], "category_id": 1}],
                "hoi_prediction": [{"subject_id": 0, "object_id": 0, "score": 0.5}],
            },
            "hoi_prediction[0]",
        ),
    ],
)
def test_bad_records_name_file_record_and_field(tmp_path, record, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"file_name": "ok", "predictions": [], "hoi_prediction": []}, record]))
    with pytest.raises(PredictionsFormatError) as e:
        load_predictions(path, COCO_IDS, verb_id_offset=1)
    msg = str(e.value)
    assert "bad.json" in msg and "record 1" in msg and field in msg


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e39"])
@pytest.mark.parametrize("where", ["score", "bbox"])
def test_non_finite_numbers_are_refused_with_file_image_and_index(tmp_path, value, where):
    # Python's json reads NaN / Infinity literals; 1e39 overflows the float32 the scores are kept in
    score, box = (value, "1") if where == "score" else ("0.5", value)
    text = (
        '[{"file_name": "ok.jpg", "predictions": [], "hoi_prediction": []},'
        ' {"file_name": "img2.jpg", "predictions": [{"bbox": [0, 0, 5, 5], "category_id": 1},'
        f' {{"bbox": [0, 0, 9, {box}], "category_id": 2}}], "hoi_prediction": ['
        ' {"subject_id": 0, "object_id": 0, "category_id": 1, "score": 0.9},'
        f' {{"subject_id": 0, "object_id": 1, "category_id": 1, "score": {score}}}]}}]'
    )
    path = tmp_path / "preds.json"
    path.write_text(text)
    with pytest.raises(PredictionsFormatError) as e:
        load_predictions(path, COCO_IDS, verb_id_offset=1)
    field = "hoi_prediction[1].score" if where == "score" else "predictions[1].bbox"
    msg = str(e.value)
    assert "preds.json" in msg and "record 1" in msg and "'img2.jpg'" in msg and field in msg
    assert "finite" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_evaluators_refuse_non_finite_scores(bad):
    meta, test, preds = _preds()
    preds[1].scores[2] = bad
    ev = build_evaluator("hico_det", meta, test, None)
    with pytest.raises(ValueError, match=rf"image '{preds[1].file_name}': triplet 2 has score {bad}"):
        ev.process(preds)


def test_export_hico_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    meta, test, preds = _preds(1)
    verbs, objs = np.nonzero(meta.correct_mat)
    hoi_classes = sorted(zip(verbs.tolist(), objs.tolist()), key=lambda vo: (vo[1], vo[0]))
    paths = export_hico_mat(preds, tmp_path, meta, [t.file_name for t in test], hoi_classes, max_dets=5)
    assert len(paths) == 6
    total = 0
    for o, path in enumerate(paths):
        cells = scipy_io.loadmat(path)["all_boxes"]
        assert cells.shape == (sum(1 for _, oo in hoi_classes if oo == o), len(test))
        for c in cells.ravel():
            assert c.shape[1] == 9 or c.size == 0
            total += c.shape[0] if c.size else 0
    assert total == 5 * len(test)


def test_export_vcoco_pickle(tmp_path):
    meta = DatasetMeta("vcoco", ["person", "cup", "none"], ["hold_obj", "stand"], np.ones((2, 3), bool), 2)
    p = HOIPredictions(
        "a.jpg",
        np.array([[0, 0, 10, 10]] * 2, np.float32),
        np.array([[5, 5, 9, 9], [0, 0, 0, 0]], np.float32),
        np.array([1, 2]),
        np.array([0, 1]),
        np.array([0.9, 0.8], np.float32),
    )
    n = export_vcoco_pickle([p], tmp_path / "d.pkl", meta, {"a.jpg": 42})
    dets = pickle.loads((tmp_path / "d.pkl").read_bytes())
    assert n == 1 and dets[0]["image_id"] == 42
    assert dets[0]["hold_obj"] == pytest.approx([5, 5, 9, 9, 0.9]) and dets[0][
        "stand_agent"
    ] == pytest.approx(0.8)
    assert dets[0]["hold_agent"] == pytest.approx(0.9)

    # an existing file is the user's: refused (unchanged) unless overwrite=True
    (tmp_path / "d.pkl").write_bytes(b"mine")
    with pytest.raises(UsageError, match="d.pkl already exists.*call with overwrite=True"):
        export_vcoco_pickle([p], tmp_path / "d.pkl", meta, {"a.jpg": 42})
    assert (tmp_path / "d.pkl").read_bytes() == b"mine"
    assert export_vcoco_pickle([p], tmp_path / "d.pkl", meta, {"a.jpg": 42}, overwrite=True) == 1
    assert pickle.loads((tmp_path / "d.pkl").read_bytes()) == dets


def test_export_hico_mat_refuses_existing_files(tmp_path):
    pytest.importorskip("scipy.io")
    meta, test, preds = _preds(1)
    verbs, objs = np.nonzero(meta.correct_mat)
    hoi_classes = sorted(zip(verbs.tolist(), objs.tolist()), key=lambda vo: (vo[1], vo[0]))
    names = [t.file_name for t in test]
    (tmp_path / "detections_03.mat").write_bytes(b"mine")
    with pytest.raises(UsageError, match="detections_03.mat"):
        export_hico_mat(preds, tmp_path, meta, names, hoi_classes)
    # nothing written: the check comes before the first file
    assert sorted(f.name for f in tmp_path.iterdir()) == ["detections_03.mat"]
    assert (tmp_path / "detections_03.mat").read_bytes() == b"mine"
    paths = export_hico_mat(preds, tmp_path, meta, names, hoi_classes, overwrite=True)
    assert len(paths) == 6 and (tmp_path / "detections_03.mat").read_bytes()[:6] == b"MATLAB"


def _dist_worker(rank, world, port, preds, meta, test, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ev = build_evaluator("hico_det", meta, test, None, mode="both")
    padded = preds + preds[: (-len(preds)) % world]
    ev.process(padded[rank::world])
    out[rank] = ev.evaluate()
    dist.destroy_process_group()


def test_torch_distributed_gather_two_ranks():
    import socket

    pytest.importorskip("torch.distributed")
    meta, test, preds = _preds(2)
    single = build_evaluator("hico_det", meta, test, None, mode="both")
    single.process(preds)
    expect = single.evaluate()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    import torch.multiprocessing as mp  # two real processes: one gloo default group per process

    ctx = mp.get_context("fork")  # the ranks inherit the imported modules (a spawned one imports ~6 s)
    manager = ctx.Manager()
    out = manager.dict()
    procs = [ctx.Process(target=_dist_worker, args=(r, 2, port, preds, meta, test, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    assert out[0] == expect and out[1] == expect
