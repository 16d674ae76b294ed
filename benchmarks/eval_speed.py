"""HICO-DET evaluation speed and memory on a HICO-sized random case, plus agreement with the reference.

Case: 9,658 test images, a random-but-valid 117 x 80 validity matrix with exactly 600 true entries,
~33k ground-truth HOI rows, and per image 100 predicted pairs x 117 verb scores = 11,700 candidate
triplets, which the evaluator cuts to the valid top-100 (Default) or known-object top-100 (KO).
Only ``process`` + ``evaluate`` are timed (prediction generation is excluded). Peak memory is the
tracemalloc peak of a second, traced run (numpy buffers included); it includes the input batch being
processed (64 images x 11,700 candidates, ~40 MiB) and the stored per-image top-100 records.

    .venv/bin/python benchmarks/eval_speed.py [--images 9658] [--check-images 500]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from hqm.evaluation.hico_det import HICODetEvaluator
from hqm.evaluation.reference import reference_hico_eval
from hqm.evaluation.testing import iter_random_predictions, random_annotations, random_meta
from hqm.structures import DatasetMeta, ImageAnnotation


def long_tail_train(meta: DatasetMeta, n_rare: int = 138, seed: int = 2) -> list[ImageAnnotation]:
    """Training annotations whose class counts give exactly ``n_rare`` rare classes (< 10 instances).

    The random vocabulary has no official split (``meta.rare_classes``), so the evaluator counts it from
    these annotations, like the real 138 / 462. One record per class holding ``count`` rows of it.
    """
    rng = np.random.default_rng(seed)
    verbs, objs = np.nonzero(meta.correct_mat)
    n = len(verbs)
    counts = np.where(np.arange(n) < n_rare, rng.integers(1, 10, n), rng.integers(10, 400, n))
    boxes = np.array([[10, 10, 100, 200], [50, 60, 150, 160]], dtype=np.float32)
    return [
        ImageAnnotation(f"train_{k:04d}.jpg", boxes, np.array([0, o]), np.tile([[0, 1, v]], (int(c), 1)))
        for k, (v, o, c) in enumerate(zip(verbs, objs, rng.permutation(counts)))
    ]


def run_once(meta, test, train, mode: str, n_pairs: int, trace: bool) -> tuple[float, float, float, dict]:
    """(seconds in process, seconds in evaluate, peak MiB or NaN, metrics)."""
    ev = HICODetEvaluator(meta, test, train, mode=mode, max_dets=100)
    if trace:
        tracemalloc.start()
    t_process, peak = 0.0, 0
    for batch in iter_random_predictions(meta, test, seed=1, n_pairs=n_pairs):
        if trace:
            tracemalloc.reset_peak()
        t0 = time.perf_counter()
        ev.process(batch)
        t_process += time.perf_counter() - t0
        if trace:
            peak = max(peak, tracemalloc.get_traced_memory()[1])
    t0 = time.perf_counter()
    metrics = ev.evaluate()
    t_eval = time.perf_counter() - t0
    peak_mib = float("nan")
    if trace:
        peak_mib = max(peak, tracemalloc.get_traced_memory()[1]) / 2**20
        tracemalloc.stop()
    return t_process, t_eval, peak_mib, metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=9658)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--check-images", type=int, default=500)
    ap.add_argument("--no-memory", action="store_true", help="skip the traced (slower) runs")
    args = ap.parse_args()

    meta = random_meta(117, 80, 600, seed=0, name="hico_det_like")
    test = random_annotations(meta, args.images, seed=1, mean_rows=3.7)
    train = long_tail_train(meta)
    n_gt = sum(int((a.hois[:, 1] >= 0).sum()) for a in test)
    print(
        f"images {len(test)}  classes {int(meta.correct_mat.sum())}  GT rows {n_gt}  "
        f"candidates/image {args.pairs * meta.num_verb_classes}"
    )

    rows = []
    for mode in ("default", "ko"):
        t_proc, t_eval, _, metrics = run_once(meta, test, train, mode, args.pairs, trace=False)
        peak = float("nan")
        if not args.no_memory:
            _, _, peak, _ = run_once(meta, test, train, mode, args.pairs, trace=True)
        key = "mAP_full" if mode == "default" else "mAP_full_ko"
        rows.append((mode, t_proc, t_eval, peak, metrics[key]))

    print(
        f"\n{'mode':<8} {'process s':>9} {'evaluate s':>10} {'total s':>8} {'peak MiB':>9} {'mAP full %':>11}"
    )
    for mode, t_proc, t_eval, peak, m in rows:
        total = t_proc + t_eval
        print(f"{mode:<8} {t_proc:>9.2f} {t_eval:>10.2f} {total:>8.2f} {peak:>9.1f} {100 * m:>11.3f}")

    # agreement with the loop-based reference on a subset
    sub = test[: args.check_images]
    preds = [p for b in iter_random_predictions(meta, sub, seed=1, n_pairs=args.pairs) for p in b]
    print(f"\nreference check on {len(sub)} images")
    print(f"{'mode':<10} {'fast':>12} {'reference':>12} {'|diff|':>10}")
    for mode, ko in (("default", False), ("ko", True)):
        ev = HICODetEvaluator(meta, sub, train, mode=mode, max_dets=100)
        ev.process(preds)
        fast = ev.evaluate()
        ref = reference_hico_eval(meta, sub, preds, known_object=ko, max_dets=100, train_annotations=train)
        for key in ("mAP_full", "mAP_rare", "mAP_nonrare", "mean_max_recall"):
            f = fast[key + ("_ko" if ko else "")]
            print(f"{mode + ':' + key:<28} {f:>12.8f} {ref[key]:>12.8f} {abs(f - ref[key]):>10.2e}")


if __name__ == "__main__":
    main()
