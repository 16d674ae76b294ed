"""Where a trained detector loses the ground-truth pairs, and what its top-ranked false positives are.

For every ground-truth <human, verb, object> of a split, over the checkpoint's top ``eval.max_dets``
triplets of its image, the share of pairs for which some triplet has

    sub    the subject box at IoU >= 0.5
    obj    the object box at IoU >= 0.5
    both   both boxes (one triplet)
    +cls   both boxes and the object class
    +verb  both boxes, the object class and the verb (the HICO-DET recall at max_dets)

and the mean over pairs of the best min(subject IoU, object IoU) of any triplet (``pair IoU``), next
to the split's Full / Rare / Non-rare mAP. Read the columns left to right: the first big drop is what
limits the detector (early in the demo's training: the object box of small objects).

    python benchmarks/pair_recall.py runs/demo/checkpoints/last.pt [--root data/synthetic] [--splits test]

The second table is the precision side: per HOI class, the top 2 x (its number of ground-truth
pairs) triplets by score, each put in the first matching category: ``TP``; ``duplicate`` (a pair
already found by a higher-scoring triplet); ``wrong verb`` (both boxes and the object class of a pair
with another verb); ``wrong object class`` (both boxes of a pair); ``object box off`` / ``subject box
off`` (the other box of a pair of this class is right); ``background`` (none of these). With a
detector that ranks well most of these are TP.

Boxes are compared in original-image pixels (xyxy) with the HICO-DET evaluator's +1-pixel IoU; the
training split is evaluated whole, with the test transform (the synthetic default: 2,000 images,
about 30 s here).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from hqm.data import load_annotations
from hqm.detectors import build_model
from hqm.engine.evaluate import build_eval_setup
from hqm.errors import UserError
from hqm.evaluation.ap import box_iou_pairs
from hqm.zoo import load_weights, read_state_dict, resolve_model_config

COLUMNS = ("sub", "obj", "both", "+cls", "+verb")


def _ious(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) IoU of one xyxy ``box`` (4,) with every row of ``boxes`` (N, 4), with the HICO-DET
    evaluator's +1-pixel convention (``hqm.evaluation.ap.box_iou_pairs``)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return box_iou_pairs(np.broadcast_to(np.asarray(box).reshape(1, 4), boxes.shape), boxes, plus_one=True)


def breakdown(annotations, predictions) -> dict[str, float]:
    """Shares (in [0, 1]) of the ground-truth pairs of ``annotations`` (ImageAnnotation) found by
    ``predictions`` (HOIPredictions, matched by file name) at each level of :data:`COLUMNS`, and the
    mean best pair IoU. Pairs without an object (V-COCO roles) are skipped."""
    by_name = {p.file_name: p for p in predictions}
    hits = {k: 0 for k in COLUMNS}
    pair_iou, total = 0.0, 0
    for ann in annotations:
        pred = by_name.get(ann.file_name)
        for s, o, verb in ann.hois:
            if o < 0:
                continue
            total += 1
            if pred is None or len(pred) == 0:
                continue
            iou_s, iou_o = _ious(ann.boxes[s], pred.sub_boxes), _ious(ann.boxes[o], pred.obj_boxes)
            both = (iou_s >= 0.5) & (iou_o >= 0.5)
            cls = both & (pred.obj_labels == ann.labels[o])
            levels = (iou_s >= 0.5, iou_o >= 0.5, both, cls, cls & (pred.verb_labels == verb))
            for k, hit in zip(COLUMNS, levels):
                hits[k] += bool(hit.any())
            pair_iou += float(np.minimum(iou_s, iou_o).max())
    out = {k: v / total if total else float("nan") for k, v in hits.items()}
    out["pair IoU"] = pair_iou / total if total else float("nan")
    out["pairs"] = total
    return out


CATEGORIES = (
    "TP",
    "duplicate",
    "wrong verb",
    "wrong object class",
    "object box off",
    "subject box off",
    "background",
)


def _category(ann, hoi_class, sub_iou, obj_iou, found: set, file_name: str) -> str:
    """The :data:`CATEGORIES` entry of one triplet of class ``hoi_class`` (verb, object class) with
    IoUs ``sub_iou`` / ``obj_iou`` (N,) against every box of its image; ``found`` holds the
    (file, pair) already matched and is updated."""
    pairs = [(j, int(s), int(o), int(v)) for j, (s, o, v) in enumerate(ann.hois) if o >= 0]
    same = [(j, s, o) for j, s, o, v in pairs if (v, int(ann.labels[o])) == hoi_class]
    for j, s, o in same:
        if sub_iou[s] >= 0.5 and obj_iou[o] >= 0.5:
            if (file_name, j) in found:
                return "duplicate"
            found.add((file_name, j))
            return "TP"
    for _, s, o, _ in pairs:
        if sub_iou[s] >= 0.5 and obj_iou[o] >= 0.5:
            return "wrong verb" if int(ann.labels[o]) == hoi_class[1] else "wrong object class"
    for _, s, o in same:
        if sub_iou[s] >= 0.5:
            return "object box off"
        if obj_iou[o] >= 0.5:
            return "subject box off"
    return "background"


def top_ranked(annotations, predictions) -> dict[str, float]:
    """Shares (in [0, 1]) of :data:`CATEGORIES` among each HOI class's top 2 x (its ground-truth
    count) triplets by score, pooled over classes (the module docstring)."""
    by_name = {a.file_name: a for a in annotations}
    counts: dict[tuple[int, int], int] = {}
    for ann in annotations:
        for _, o, v in ann.hois:
            if o >= 0:
                key = (int(v), int(ann.labels[o]))
                counts[key] = counts.get(key, 0) + 1
    ranked: dict[tuple[int, int], list] = {}
    for p in predictions:
        for k in range(len(p)):
            key = (int(p.verb_labels[k]), int(p.obj_labels[k]))
            if key in counts:
                ranked.setdefault(key, []).append((float(p.scores[k]), p.file_name, k, p))
    tally = dict.fromkeys(CATEGORIES, 0)
    for key, items in ranked.items():
        items.sort(key=lambda t: -t[0])
        found: set = set()
        for _, name, k, p in items[: 2 * counts[key]]:
            ann = by_name[name]
            sub_iou, obj_iou = _ious(p.sub_boxes[k], ann.boxes), _ious(p.obj_boxes[k], ann.boxes)
            tally[_category(ann, key, sub_iou, obj_iou, found, name)] += 1
    total = sum(tally.values())
    return {k: v / total if total else float("nan") for k, v in tally.items()}


def _pct(value: float | None, width: int, digits: int) -> str:
    """``value`` (a fraction) as a right-aligned percentage; n/a when undefined (no pairs, no class)."""
    if value is None or value != value:
        return f"{'n/a':>{width + 1}}"
    return f"{100 * value:>{width}.{digits}f}%"


def report(checkpoint: str, root: str | None, splits: list[str]) -> None:
    """Print both tables for ``checkpoint`` on ``splits`` of ``root`` (None: the checkpoint's own
    ``data.root``). Raises the package's one-line errors (``hqm.errors.UserError``) on bad input."""
    torch.set_grad_enabled(False)
    state, info = read_state_dict(checkpoint)
    base = ["device=cpu", "data.num_workers=0"] + ([f"data.root={root}"] if root else [])
    cfg = resolve_model_config(info, checkpoint, None, base).cfg
    cfg.mining.strategy = "none"
    train_ann = load_annotations(cfg.data.dataset, cfg.data.root, "train", check_images=False)
    print(f"{cfg.data.dataset} at {cfg.data.root}, {checkpoint}")
    header = (*COLUMNS, "pair IoU", "Full", "Rare", "Non-rare")
    print(f"{'split':<6}{'pairs':>7}" + "".join(f"{k:>9}" for k in header))
    ranked, model = {}, None
    for split in splits:
        cfg.eval.split = split
        ev = build_eval_setup(cfg, train_ann, torch.device("cpu"))
        if model is None:  # the splits share the vocabulary: one model
            meta = ev.dataset.meta
            model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
            names = list(meta.object_names)
            load_weights(model, checkpoint, names, cfg.model.detector, checkpoint=(state, info))
        metrics, preds = ev.run(model, torch.device("cpu"), cfg.train.amp, cfg.eval.batching)
        b = breakdown(ev.dataset.annotations, preds)
        row = [b[k] for k in (*COLUMNS, "pair IoU")]
        row += [metrics.get(k) for k in ("mAP_full", "mAP_rare", "mAP_nonrare")]
        print(f"{split:<6}{b['pairs']:>7}" + "".join(_pct(v, 8, 2) for v in row))
        ranked[split] = top_ranked(ev.dataset.annotations, preds)
    print("\ntop-ranked triplets (per class, the top 2 x its ground-truth pairs):")
    print(f"{'split':<6}" + "".join(f"{k:>20}" for k in CATEGORIES))
    for split, shares in ranked.items():
        print(f"{split:<6}" + "".join(_pct(shares[k], 19, 1) for k in CATEGORIES))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a training checkpoint (.pt) written by hqm train / hqm demo")
    p.add_argument("--root", default=None, help="dataset folder (default: the checkpoint's own data.root)")
    p.add_argument(
        "--splits",
        nargs="+",
        default=["test", "train"],
        choices=["test", "train"],
        help="default: test train",
    )
    args = p.parse_args()
    try:
        report(args.checkpoint, args.root, args.splits)
    except UserError as e:
        print(f"pair_recall.py: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
