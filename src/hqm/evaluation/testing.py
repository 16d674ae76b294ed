"""Seeded random HOI cases for evaluator tests and the evaluation benchmark.

The cases look like a HICO-DET test set: images with a few people and objects, ground-truth HOI rows
of valid (verb, object) pairs, and predictions shaped like a QPIC postprocessor output (``n_pairs``
subject/object box pairs per image, each with a score for every verb, i.e. ``n_pairs * V`` triplets).
Some predicted pairs are jittered copies of ground-truth pairs so the metrics are far from 0 and 1.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from hqm.structures import DatasetMeta, HOIPredictions, ImageAnnotation


def make_annotation(name: str, boxes: list, labels: list, hois: list) -> ImageAnnotation:
    """A hand-written ground-truth record: xyxy boxes, contiguous labels, [subject, object, verb] rows."""
    return ImageAnnotation(
        name, np.array(boxes, np.float32), np.array(labels, np.int64), np.array(hois, np.int64).reshape(-1, 3)
    )


def make_predictions(name: str, rows: list) -> HOIPredictions:
    """Hand-written triplets; rows: (sub_box, obj_box, obj_label, verb or role class, score)."""
    return HOIPredictions(
        name,
        np.array([r[0] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[1] for r in rows], np.float32).reshape(-1, 4),
        np.array([r[2] for r in rows], np.int64),
        np.array([r[3] for r in rows], np.int64),
        np.array([r[4] for r in rows], np.float32),
    )


def random_correct_mat(n_verb: int, n_obj: int, n_valid: int, rng: np.random.Generator) -> np.ndarray:
    """(V, C) bool with exactly ``n_valid`` true entries and every object column used at least once."""
    if not n_obj <= n_valid <= n_verb * n_obj:
        raise ValueError("need n_obj <= n_valid <= n_verb * n_obj")
    mat = np.zeros((n_verb, n_obj), dtype=bool)
    mat[rng.integers(0, n_verb, n_obj), np.arange(n_obj)] = True
    free = np.flatnonzero(~mat.ravel())
    extra = rng.choice(free, n_valid - int(mat.sum()), replace=False)
    mat.ravel()[extra] = True
    return mat


def random_meta(n_verb: int, n_obj: int, n_valid: int, seed: int = 0, name: str = "synthetic") -> DatasetMeta:
    """A vocabulary with a random validity matrix (``n_valid`` valid pairs)."""
    mat = random_correct_mat(n_verb, n_obj, n_valid, np.random.default_rng(seed))
    return DatasetMeta(
        name=name,
        object_names=["person"] + [f"obj{i}" for i in range(1, n_obj)],
        verb_names=[f"verb{i}" for i in range(n_verb)],
        correct_mat=mat,
    )


def _boxes(rng: np.random.Generator, n: int, w: float = 640.0, h: float = 480.0) -> np.ndarray:
    x1 = rng.uniform(0, w * 0.7, n)
    y1 = rng.uniform(0, h * 0.7, n)
    bw = rng.uniform(20, w * 0.3, n)
    bh = rng.uniform(20, h * 0.3, n)
    return np.stack([x1, y1, x1 + bw, y1 + bh], axis=1).astype(np.float32)


def random_annotations(
    meta: DatasetMeta, n_images: int, seed: int = 0, mean_rows: float = 3.4, prefix: str = "img"
) -> list[ImageAnnotation]:
    """Ground truth: per image 1-3 people, 1-4 objects, ~``mean_rows`` HOI rows of valid pairs."""
    rng = np.random.default_rng(seed)
    valid_verbs = [np.flatnonzero(meta.correct_mat[:, o]) for o in range(meta.num_obj_classes)]
    out = []
    for i in range(n_images):
        n_h, n_o = int(rng.integers(1, 4)), int(rng.integers(1, 5))
        labels = np.concatenate([np.zeros(n_h, np.int64), rng.integers(0, meta.num_obj_classes, n_o)])
        boxes = _boxes(rng, n_h + n_o)
        rows = []
        for _ in range(max(1, int(rng.poisson(mean_rows / 1.7)))):
            s, o = int(rng.integers(0, n_h)), int(rng.integers(0, n_h + n_o))
            cand = valid_verbs[int(labels[o])]
            for v in rng.choice(cand, min(len(cand), int(rng.integers(1, 3))), replace=False):
                rows.append((s, o, int(v)))
        out.append(
            ImageAnnotation(
                file_name=f"{prefix}_{i:06d}.jpg",
                boxes=boxes,
                labels=labels,
                hois=np.asarray(rows, dtype=np.int64).reshape(-1, 3),
                width=640,
                height=480,
            )
        )
    return out


def random_predictions(
    meta: DatasetMeta, ann: ImageAnnotation, rng: np.random.Generator, n_pairs: int = 100, jitter: float = 8.0
) -> HOIPredictions:
    """``n_pairs * V`` triplets for one image: every pair scored for every verb (validity not applied)."""
    n_verb = meta.num_verb_classes
    h = ann.hois[ann.hois[:, 1] >= 0]
    pairs = np.unique(h[:, :2], axis=0) if h.shape[0] else np.zeros((0, 2), np.int64)
    n_true = min(len(pairs), n_pairs)
    sub = _boxes(rng, n_pairs)
    obj = _boxes(rng, n_pairs)
    obj_lab = rng.integers(0, meta.num_obj_classes, n_pairs)
    true_verb = np.zeros((n_pairs, n_verb), dtype=bool)
    if n_true:
        p = pairs[:n_true]
        sub[:n_true] = ann.boxes[p[:, 0]] + rng.normal(0, jitter, (n_true, 4))
        obj[:n_true] = ann.boxes[p[:, 1]] + rng.normal(0, jitter, (n_true, 4))
        wrong = rng.random(n_true) < 0.15
        obj_lab[:n_true] = np.where(wrong, obj_lab[:n_true], ann.labels[p[:, 1]])
        for k, (s, o) in enumerate(p):
            true_verb[k, h[(h[:, 0] == s) & (h[:, 1] == o), 2]] = True
    logits = rng.normal(-3.0, 1.5, (n_pairs, n_verb)) + 5.0 * true_verb
    obj_prob = rng.uniform(0.3, 1.0, (n_pairs, 1))
    scores = (obj_prob / (1.0 + np.exp(-logits))).astype(np.float32).ravel()
    order = np.argsort(-scores, kind="stable")
    pair_idx = np.repeat(np.arange(n_pairs), n_verb)[order]
    return HOIPredictions(
        file_name=ann.file_name,
        sub_boxes=sub[pair_idx],
        obj_boxes=obj[pair_idx],
        obj_labels=obj_lab[pair_idx].astype(np.int64),
        verb_labels=np.tile(np.arange(n_verb), n_pairs)[order].astype(np.int64),
        scores=scores[order],
        image_size=(ann.height, ann.width),
    )


def iter_random_predictions(
    meta: DatasetMeta, anns: list[ImageAnnotation], seed: int = 0, n_pairs: int = 100, batch_size: int = 64
) -> Iterator[list[HOIPredictions]]:
    """Batches of predictions for ``anns``, generated lazily (a HICO-sized set does not fit in memory)."""
    for start in range(0, len(anns), batch_size):
        rng = np.random.default_rng([seed, start])
        yield [random_predictions(meta, a, rng, n_pairs) for a in anns[start : start + batch_size]]
