"""What padding does and costs, printed as tables: how much padding moves a detector's outputs
(``effect``), training steps with ``train.size_divisibility`` 1 vs 32 (``train``), and prediction with
``eval.batching`` same_size vs padded vs one image per forward pass (``predict``).

effect: a randomly initialised R50 QPIC (frozen BN) on one random ``--size`` x 4/3 input, alone and
zero-padded (with its mask) to larger canvases as batch-mates would pad it; the largest change of the
object / verb logits and of the boxes (normalised cxcywh).

train: the real trainer (``Trainer.train_step``: forward, criterion, backward, clipping, AdamW) on the
config's multi-scale, randomly cropped training batches (default: the demo config on the synthetic
benchmark). Every setting sees the same images in the same order (same seed); only the padding
differs: to the largest image of the batch (1, the released QPIC code) or up to a multiple of 32.
Each setting runs in a fresh process (kernel caches start empty), settings interleaved ``--repeat``
times; the table gives the median step time (data loading excluded) and the mean padded area.

predict: ``HOIDetector.predict`` on ``--images`` random images of ``--sizes`` distinct sizes (in mixed
order) with a randomly initialised R50 QPIC; ``same_size`` (the default: only images of one size
share a forward pass), ``padded`` (each chunk padded to its largest image) and ``batch 1``.

    .venv/bin/python benchmarks/padding.py effect --size 512
    .venv/bin/python benchmarks/padding.py train --steps 60 --repeat 2
    .venv/bin/python benchmarks/padding.py predict --images 16 --size 512
    .venv/bin/python benchmarks/padding.py train --config qpic_r50_hico --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_worker(args) -> dict:
    """Time ``--steps`` trainer steps with one ``train.size_divisibility`` (fresh process)."""
    from hqm.config import load_config
    from hqm.engine.trainer import Trainer

    out = tempfile.mkdtemp(prefix="pad_bench_")
    overrides = [
        f"train.size_divisibility={args.divisibility}",
        f"train.output_dir={out}",
        f"device={args.device}",
        "data.num_workers=0",
        "eval.every=0",
        *args.overrides,
    ]
    trainer = Trainer(load_config(args.config, overrides))
    trainer.train_model.train()
    trainer.sampler.set_epoch(0)
    batches = iter(trainer.train_loader)
    times, area, shapes = [], [], set()
    for step in range(args.warmup + args.steps):
        images, masks, targets = next(batches)
        shapes.add(tuple(images.shape[-2:]))
        area.append(float(masks.float().mean()))
        sync(trainer.device)
        t0 = time.perf_counter()
        trainer.train_step([(images, masks, targets)], trainer.schedule.active(step))
        sync(trainer.device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    return {"times": times, "padding": statistics.mean(area), "shapes": len(shapes)}


def run_train(args) -> None:
    results: dict[int, dict] = {1: {"times": []}, 32: {"times": []}}
    for r in range(args.repeat):
        for d in (1, 32):
            cmd = [sys.executable, __file__, "train", "--worker", "--divisibility", str(d)]
            cmd += ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--device", args.device, *args.overrides]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            results[d]["times"] += res["times"]
            results[d].update(padding=res["padding"], shapes=res["shapes"])
            print(f"  repeat {r + 1}, size_divisibility={d}: done", file=sys.stderr)
    base = statistics.median(results[1]["times"])
    print(f"\n{args.config}, {args.steps} steps x {args.repeat} fresh processes per setting, {args.device}")
    print("| train.size_divisibility | step (ms, median) | x pad-to-largest | padded area | batch shapes |")
    print("|---|---|---|---|---|")
    for d, res in results.items():
        med = statistics.median(res["times"])
        print(
            f"| {d} | {1000 * med:.0f} | {med / base:.2f} | {100 * res['padding']:.1f}% | {res['shapes']} |"
        )


def run_effect(args) -> None:
    from hqm.config import load_config
    from hqm.models import build_model

    cfg = load_config(None, ["model.backbone_norm=frozen", f"device={args.device}"])
    torch.manual_seed(0)
    model = build_model(cfg, 80, 117).to(args.device).eval()
    h, w = args.size, round(args.size * 4 / 3)
    x = torch.randn(1, 3, h, w, device=args.device)
    canvases = [(h, -(-w // 32) * 32), (-(-h // 32) * 32 + 32, -(-w // 32) * 32), (w, w)]
    print(f"\nR50 QPIC (random weights), one {h} x {w} input alone vs padded, {args.device}")
    print("| padded to | max change, object logits | verb logits | boxes (normalised) |")
    print("|---|---|---|---|")
    with torch.no_grad():
        alone = model(x, torch.zeros(1, h, w, dtype=torch.bool, device=args.device))
        for ph, pw in canvases:
            xp = torch.zeros(1, 3, ph, pw, device=args.device)
            xp[..., :h, :w] = x
            mask = torch.ones(1, ph, pw, dtype=torch.bool, device=args.device)
            mask[:, :h, :w] = False
            out = model(xp, mask)
            d = [float((alone[k] - out[k]).abs().max()) for k in ("pred_obj_logits", "pred_verb_logits")]
            box = float((alone["pred_sub_boxes"] - out["pred_sub_boxes"]).abs().max())
            print(f"| {ph} x {pw} | {d[0]:.3f} | {d[1]:.3f} | {box:.4f} |")


def run_predict(args) -> None:
    import copy

    from hqm.api import HOIDetector
    from hqm.config import load_config
    from hqm.data import build_meta
    from hqm.models import build_model

    cfg = load_config(None, ["model.backbone_norm=frozen", f"device={args.device}"])
    meta = build_meta(cfg.data)  # the packaged HICO-DET vocabulary (no files needed)
    torch.manual_seed(0)
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
    rng = np.random.default_rng(0)
    shapes = [(480, 640), (640, 480), (427, 640), (500, 375), (375, 500), (512, 512)][: args.sizes]
    images = [rng.integers(0, 255, (*shapes[i % len(shapes)], 3), dtype=np.uint8) for i in range(args.images)]
    modes = {
        "same_size": ("same_size", args.batch),
        "padded": ("padded", args.batch),
        "batch 1": ("same_size", 1),
    }
    times: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeat + 1):  # the first round warms the kernels for every shape
        for name, (batching, bs) in modes.items():
            c = copy.deepcopy(cfg)
            c.eval.batching = batching
            det = HOIDetector(model, c, meta, device=args.device, size=args.size, batch_size=bs)
            sync(det.device)
            t0 = time.perf_counter()
            det.predict(images)
            sync(det.device)
            if r > 0:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["padded"])
    print(
        f"\nR50 QPIC, {args.images} images of {len(shapes)} sizes (short side {args.size}), chunks of "
        f"{args.batch}, {args.device}, median of {args.repeat}"
    )
    print("| batching | s / image | x padded |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med / args.images:.3f} | {med / base:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["effect", "train", "predict"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--config", default="qpic_r18_synthetic", help="train: the config to time")
    p.add_argument("--steps", type=int, default=60, help="train: timed steps per process")
    p.add_argument("--warmup", type=int, default=5, help="train: untimed first steps")
    p.add_argument("--images", type=int, default=16, help="predict: number of images")
    p.add_argument("--sizes", type=int, default=4, help="predict: distinct image sizes (<= 6)")
    p.add_argument("--size", type=int, default=512, help="effect, predict: input short side")
    p.add_argument("--batch", type=int, default=4, help="predict: chunk size")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--divisibility", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="train: section.key=value overrides")
    args = p.parse_intermixed_args()
    if args.what == "train" and args.worker:
        print(json.dumps(train_worker(args)))
    elif args.what == "train":
        run_train(args)
    elif args.what == "effect":
        run_effect(args)
    else:
        run_predict(args)


if __name__ == "__main__":
    main()
