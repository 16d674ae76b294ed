"""The synthetic benchmark: determinism, HICO-DET format, geometric label consistency, long tail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hqm.config import ConfigError
from hqm.data import DatasetError, ensure_synthetic, load_annotations, load_meta
from hqm.data import synthetic_rules as R
from hqm.data.build import synthetic_ready
from hqm.data.synthetic import (
    MARKER,
    PRESETS,
    apply_overrides,
    class_probabilities,
    generate,
    interaction_classes,
    read_marker,
    statistics,
)
from hqm.data.synthetic_rules import point_box_distance
from hqm.data.synthetic_scene import sample_scene
from hqm.errors import UsageError


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("synth") / "tiny", "tiny")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic(tiny_root, tmp_path):
    again = generate(tmp_path / "again", "tiny")
    a, b = _files(tiny_root), _files(again)
    assert a.keys() == b.keys() and len([k for k in a if k.endswith(".jpg")]) == 24
    assert all(a[k] == b[k] for k in a)
    other = generate(tmp_path / "other", "tiny", ["seed=1"])
    assert _files(other)["annotations/trainval_hico.json"] != a["annotations/trainval_hico.json"]


def test_hico_format_round_trip(tiny_root):
    meta = load_meta("synthetic", tiny_root)
    voc = json.loads((tiny_root / "annotations" / "meta.json").read_text())
    assert meta.object_names == voc["object_names"] and meta.object_names[0] == "person"
    assert meta.num_obj_classes == 11 and meta.num_verb_classes == 12
    mat = np.load(tiny_root / "annotations" / "corre_hico.npy")
    assert mat.shape == (12, 11) and mat.dtype == bool and not mat[:, 0].any()
    assert (tiny_root / "README.txt").read_text().startswith("hqm synthetic HOI benchmark")
    for split, n in (("train", 16), ("test", 8)):
        anns = load_annotations("synthetic", tiny_root, split, on_bad_record="error")
        assert len(anns) == n
        for ann in anns:
            assert ann.width >= 64 and ann.height >= 64
            for s, o, v in ann.hois.tolist():
                assert ann.labels[s] == 0 and ann.labels[o] > 0 and mat[v, ann.labels[o]]
    raw = json.loads((tiny_root / "annotations" / "trainval_hico.json").read_text())
    hoi_ids = {}
    for r in raw:
        for h in r["hoi_annotation"]:
            key = (h["category_id"], r["annotations"][h["object_id"]]["category_id"])
            assert hoi_ids.setdefault(key, h["hoi_category_id"]) == h["hoi_category_id"]
    assert 1 <= min(hoi_ids.values()) and max(hoi_ids.values()) <= int(mat.sum())


def _geometry_holds(verb: str, p, box: np.ndarray, pbox: np.ndarray) -> bool:
    """Necessary conditions of each verb, written independently of the rule code."""
    u = p.height
    hx, hy = p.kp[R.HEAD]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    near = lambda pt, tol: point_box_distance(pt, box) <= tol * u + 1e-6  # noqa: E731
    if verb == "hold":
        return any(near(p.kp[w], 0.04) for w in R.WRIST)
    if verb == "carry":
        return box[3] < hy and any(near(p.kp[w], 0.04) for w in R.WRIST)
    if verb == "kick":
        return any(near(p.kp[a], 0.04) for a in R.ANKLE) and cy > p.kp[R.PELVIS, 1]
    if verb in ("ride", "sit_on"):
        px, py = p.kp[R.PELVIS]
        return box[0] < px < box[2] and box[1] - 0.06 * u <= py < box[3]
    if verb == "stand_on":
        return all(box[0] <= p.kp[a, 0] <= box[2] for a in R.ANKLE) and p.kp[R.PELVIS, 1] < box[1]
    if verb == "look_at":
        return abs(cy - hy) < 0.15 * u and p.facing * (cx - hx) > 0
    if verb == "throw":
        return any(box[3] < p.kp[w, 1] and not near(p.kp[w], 0.04) for w in R.WRIST)
    if verb in ("drink_with", "talk_on"):
        return point_box_distance(p.kp[R.HEAD], box) <= 0.15 * u
    if verb == "stand_under":
        return box[0] < hx < box[2] and box[3] < hy
    if verb == "no_interaction":
        return pbox[0] <= cx <= pbox[2] and pbox[1] <= cy <= pbox[3]
    raise AssertionError(verb)


def test_labels_follow_the_geometry():
    cfg = PRESETS["default"]
    classes, probs = interaction_classes(cfg), class_probabilities(cfg)
    verbs = tuple(R.VERBS)
    seen = set()
    for k in range(250):
        rng = np.random.default_rng([123, 0, k])
        force = k if k < len(classes) else None  # every class at least once
        scene = sample_scene(rng, cfg, classes, probs, force)
        labels = set(scene.labels)
        for j, i, v in scene.intended:  # the sampled interaction is realised by the pose
            assert (j, i, v) in labels, (k, v, scene.objects[i].name)
        for j, p in enumerate(scene.people):
            pb = scene.person_boxes[j]
            assert 0 <= pb[0] < pb[2] <= scene.width and 0 <= pb[1] < pb[3] <= scene.height
            for i, o in enumerate(scene.objects):
                got = sorted(v for jj, ii, v in labels if (jj, ii) == (j, i))
                assert got == sorted(R.label_pair(p, pb, o.name, o.box, verbs))  # every pair is labelled
                for v in got:
                    seen.add(v)
                    assert (v, o.name) in R.VALID_PAIRS
                    assert _geometry_holds(v, p, o.box, pb), (k, v, o.name)
                if "no_interaction" in got:
                    assert got == ["no_interaction"]
    assert seen == set(R.VERBS)


def test_long_tail_has_rare_and_frequent_classes(tmp_path):
    root = generate(tmp_path / "tail", "tiny", ["train_size=400", "test_size=40"])
    cfg = apply_overrides(PRESETS["tiny"], ["train_size=400", "test_size=40"])
    stats = statistics(json.loads((root / "annotations" / "trainval_hico.json").read_text()), cfg)
    counts = stats["per_class"]
    assert stats["rare_classes"] >= 3 and max(counts.values()) >= 50
    assert sum(c >= 10 for c in counts.values()) >= 10
    test_stats = statistics(json.loads((root / "annotations" / "test_hico.json").read_text()), cfg)
    assert min(test_stats["per_class"].values()) >= 1  # every class has a test instance
    anns = load_annotations("synthetic", root, "train")  # > 64 images: threaded header reads
    assert len(anns) == 400 and sum(len(a.hois) for a in anns) == stats["hois"]


def test_overrides_and_presets():
    cfg = apply_overrides(PRESETS["tiny"], ["train_size=5", "tail_ratio=10", "num_verbs=4"])
    assert cfg.train_size == 5 and cfg.tail_ratio == 10.0 and PRESETS["tiny"].train_size == 16
    assert {v for v, _ in interaction_classes(cfg)} <= set(R.VERBS[:4])
    with pytest.raises(ConfigError, match="Did you mean 'train_size'"):
        apply_overrides(PRESETS["tiny"], ["train_sise=3"])
    with pytest.raises(
        ConfigError, match="preset=tiny is not a generator key: write it as the option --preset tiny"
    ):
        apply_overrides(PRESETS["default"], ["preset=tiny"])  # hqm synth --out d preset=tiny
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(PRESETS["tiny"], ["train_size=abc"])
    with pytest.raises(ConfigError, match="image_min"):
        apply_overrides(PRESETS["tiny"], ["image_min=200"])
    # these reached NumPy's samplers (a traceback, a half-written folder) or passed unchecked
    for bad, needle in [("noise=-1", "noise"), ("noise=.nan", "noise"), ("clutter=-1", "clutter"),
                        ("seed=-3", "seed"), ("tail_ratio=.inf", "tail_ratio")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"synthetic config: {needle} .*must be"):
            apply_overrides(PRESETS["tiny"], [bad])
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        generate("/nonexistent", "tiny_")
    assert set(PRESETS) == {"tiny", "default"}


def test_synthetic_meta_needs_a_generated_root(tmp_path):
    with pytest.raises(DatasetError, match="no synthetic benchmark"):
        load_meta("synthetic", tmp_path)


def test_generator_refuses_a_folder_it_did_not_make(tmp_path):
    """A user's README.txt and annotations/test_hico.json are never overwritten."""
    user = tmp_path / "mine"
    (user / "annotations").mkdir(parents=True)
    (user / "README.txt").write_text("my notes")
    (user / "annotations" / "test_hico.json").write_text("[]")
    for make in (lambda: generate(user, "tiny"), lambda: ensure_synthetic(user, "tiny")):
        with pytest.raises(DatasetError, match="did not write.*README.txt"):
            make()
    assert sorted(str(p.relative_to(user)) for p in user.rglob("*")) == [
        "README.txt",
        "annotations",
        "annotations/test_hico.json",
    ]
    assert (user / "README.txt").read_text() == "my notes"
    with pytest.raises(DatasetError, match="is a file"):
        generate(user / "README.txt", "tiny")


def test_generator_rewrites_only_its_own_folder(tmp_path):
    root = generate(tmp_path / "own", "tiny", ["train_size=6", "test_size=3"])
    (root / "notes.txt").write_text("kept")
    mark = read_marker(root)
    assert mark["complete"] and mark["preset"] == "tiny" and mark["train_size"] == 6
    before = (root / "annotations" / "trainval_hico.json").read_bytes()
    with pytest.raises(
        UsageError, match=r"own holds a synthetic benchmark of another config \(train_size 6 -> 4\)"
    ):
        generate(root, "tiny", ["train_size=4", "test_size=3"])  # silently swapped the data set
    assert (root / "annotations" / "trainval_hico.json").read_bytes() == before
    generate(root, "tiny", ["train_size=6", "test_size=3"])  # the same config: the same bytes
    assert (root / "annotations" / "trainval_hico.json").read_bytes() == before
    generate(root, "tiny", ["train_size=4", "test_size=3"], overwrite=True)  # asked for: regenerated in place
    assert len(list((root / "images" / "train2015").iterdir())) == 4  # no stale images left behind
    assert (root / "notes.txt").read_text() == "kept" and read_marker(root)["train_size"] == 4
    # an interrupted generation (mark not complete) is not ready, and ensure_synthetic finishes it
    mark = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**mark, "complete": False}))
    assert not synthetic_ready(root)
    ensure_synthetic(root, "tiny")
    assert synthetic_ready(root) and read_marker(root)["train_size"] == 16


def test_loading_never_generates(tmp_path):
    from hqm.config import DataConfig
    from hqm.data import build_dataset, build_meta

    missing = tmp_path / "typo"
    cfg = DataConfig(dataset="synthetic", root=str(missing), synth_preset="tiny")
    for load in (lambda: build_meta(cfg), lambda: build_dataset(cfg, "train", train=True)):
        with pytest.raises(DatasetError, match="annotations/meta.json not found"):
            load()
    hico = DataConfig(dataset="hico_det", root=str(missing))
    with pytest.raises(DatasetError, match="no hico_det dataset.*annotations/test_hico.json not found"):
        build_dataset(hico, "test", train=False)
    assert not missing.exists()
    assert ensure_synthetic(missing, "tiny") == missing and synthetic_ready(missing)  # asked for: made


def test_ensure_synthetic_refuses_a_root_of_another_preset(tmp_path):
    # a demo (data.generate) pointed at a folder holding the tiny preset would report on 16 images
    root = tmp_path / "data"
    ensure_synthetic(root, "tiny")
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(
        DatasetError, match=r"preset 'tiny' \(16 training / 8 test images\), not data.synth_preset=default"
    ):
        ensure_synthetic(root, "default")
    assert sorted(p.name for p in root.rglob("*")) == before  # nothing regenerated or removed
    assert ensure_synthetic(root, "tiny") == root


def test_demo_on_a_root_of_another_preset_is_refused_before_the_run_folder(tmp_path, capsys):
    from hqm.cli import main

    root, out = tmp_path / "data", tmp_path / "run"
    ensure_synthetic(root, "tiny")
    assert main(["demo", f"data.root={root}", f"train.output_dir={out}"]) == 1
    assert "holds the synthetic benchmark of preset 'tiny'" in capsys.readouterr().err
    assert not out.exists()
