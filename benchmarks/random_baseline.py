"""Chance level of the HICO-DET metrics on a dataset: what a detector that knows nothing scores.

Two baselines, printed as a table next to an optional trained checkpoint:

* ``random boxes``: per test image ``--dets`` triplets with uniformly random subject and object boxes
  inside the image, a random valid (verb, object) class and a random score;
* ``untrained``: the config's detector with its random initialisation, post-processed as usual.

    python benchmarks/random_baseline.py --root data/synthetic [--checkpoint runs/demo/checkpoints/last.pt]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from hqm.config import load_config
from hqm.data import load_annotations
from hqm.detectors import build_model
from hqm.engine.evaluate import build_eval_setup, run_evaluation
from hqm.evaluation import format_table
from hqm.structures import HOIPredictions


def _random_boxes(rng: np.random.Generator, n: int, w: int, h: int) -> np.ndarray:
    xy = rng.uniform(0, 1, (n, 2, 2)) * [w, h]
    return np.concatenate([xy.min(1), xy.max(1)], 1).astype(np.float32)


def random_predictions(annotations, meta, dets: int, seed: int) -> list[HOIPredictions]:
    rng = np.random.default_rng(seed)
    verbs, objs = np.nonzero(np.asarray(meta.correct_mat, dtype=bool))
    out = []
    for ann in annotations:
        w, h = ann.width, ann.height
        cls = rng.integers(0, len(verbs), dets)
        out.append(
            HOIPredictions(
                ann.file_name,
                _random_boxes(rng, dets, w, h),
                _random_boxes(rng, dets, w, h),
                objs[cls],
                verbs[cls],
                rng.uniform(0, 1, dets).astype(np.float32),
                (h, w),
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="qpic_r18_synthetic")
    p.add_argument("--root", default="data/synthetic")
    p.add_argument("--checkpoint", default="", help="also evaluate this trained checkpoint")
    p.add_argument("--dets", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    cfg = load_config(args.config, [f"data.root={args.root}", "device=cpu", "data.num_workers=0"])
    train_ann = load_annotations(cfg.data.dataset, cfg.data.root, "train", check_images=False)
    ev = build_eval_setup(cfg, train_ann, torch.device("cpu"))
    rows = {}
    ev.evaluator.reset()
    ev.evaluator.process(random_predictions(ev.dataset.annotations, ev.dataset.meta, args.dets, args.seed))
    rows["random boxes"] = ev.evaluator.evaluate()
    torch.manual_seed(args.seed)
    model = build_model(cfg, ev.dataset.meta.num_obj_classes, ev.dataset.meta.num_verb_classes)
    cpu, batching = torch.device("cpu"), cfg.eval.batching
    rows["untrained"] = run_evaluation(
        model, ev.loader, ev.postprocessor, ev.evaluator, cpu, batching=batching
    )[0]
    if args.checkpoint:
        from hqm.zoo import load_weights

        load_weights(model, args.checkpoint)
        rows["trained"] = run_evaluation(
            model, ev.loader, ev.postprocessor, ev.evaluator, cpu, batching=batching
        )[0]
    keys = ["mAP_full", "mAP_rare", "mAP_nonrare", "mean_max_recall"]
    print(f"{'model':<14}" + "".join(f"{k:>17}" for k in keys))
    for name, m in rows.items():
        print(f"{name:<14}" + "".join(f"{100 * m.get(k, float('nan')):>16.3f}%" for k in keys))
    if args.checkpoint:
        print(format_table(rows["trained"], title="trained"))


if __name__ == "__main__":
    main()
