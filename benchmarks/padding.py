"""What padding does and costs, printed as tables: how much padding moves a detector's outputs
(``effect``), training steps with ``train.size_divisibility`` 1 vs 32 (``train``), and prediction with
``eval.batching`` same_size vs padded vs one image per forward pass (``predict``).

effect: a randomly initialised R50 QPIC (frozen BN) on one random ``--size`` x 4/3 input, alone and
zero-padded (with its mask) to larger canvases as batch-mates would pad it; the largest change of the
object / verb logits and of the subject boxes (normalised cxcywh).

train: the real trainer (``Trainer.train_step``: forward, criterion, backward, clipping, AdamW) on the
config's multi-scale, randomly cropped training batches (default: the demo config on the synthetic
benchmark). Two trainers with the same weights, one per setting, take the same batches in turn (step
by step, alternating which goes first), so a load change on the machine hits both alike; only the
padding differs: to the largest image of the batch (1, the released QPIC code) or up to a multiple
of 32. The table gives median wall-clock and process-CPU step times (data loading excluded), the
mean padded area and the number of distinct batch shapes.

predict: ``HOIDetector.predict`` on ``--images`` random images of ``--sizes`` distinct sizes (in mixed
order) with a randomly initialised R50 QPIC; ``same_size`` (the default: only images of one size
share a forward pass), ``padded`` (each chunk padded to its largest image) and ``batch 1``.

    .venv/bin/python benchmarks/padding.py effect --size 512
    .venv/bin/python benchmarks/padding.py train --steps 40 data.root=data/synthetic
    .venv/bin/python benchmarks/padding.py predict --images 16 --size 512
    .venv/bin/python benchmarks/padding.py train --config qpic_r50_hico --steps 20 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_train(args) -> None:
    from hqm.config import load_config
    from hqm.data import collate_fn
    from hqm.engine.trainer import Trainer

    settings = (1, 32)
    trainers = {}
    for d in settings:
        overrides = [
            f"train.size_divisibility={d}",
            f"train.output_dir={tempfile.mkdtemp(prefix='pad_bench_')}",
            f"device={args.device}",
            "data.num_workers=0",
            "eval.every=0",
            *args.overrides,
        ]
        trainers[d] = Trainer(load_config(args.config, overrides))  # same seed: same initial weights
        trainers[d].train_model.train()
    first = trainers[settings[0]]
    first.sampler.set_epoch(0)
    loader = torch.utils.data.DataLoader(  # the trainer's samples, collated once per setting below
        first.train_loader.dataset,
        batch_size=first.cfg.train.batch_size,
        sampler=first.sampler,
        collate_fn=list,
        drop_last=True,
    )
    wall: dict[int, list[float]] = {d: [] for d in settings}
    cpu: dict[int, list[float]] = {d: [] for d in settings}
    area: dict[int, list[float]] = {d: [] for d in settings}
    shapes: dict[int, set] = {d: set() for d in settings}
    for step, samples in enumerate(loader):
        if step == args.warmup + args.steps:
            break
        for d in settings if step % 2 == 0 else settings[::-1]:
            images, masks, targets = collate_fn(samples, size_divisibility=d)
            shapes[d].add(tuple(images.shape[-2:]))
            area[d].append(float(masks.float().mean()))
            trainer = trainers[d]
            sync(trainer.device)
            t0, c0 = time.perf_counter(), time.process_time()
            trainer.train_step([(images, masks, targets)], trainer.schedule.active(step))
            sync(trainer.device)
            if step >= args.warmup:
                wall[d].append(time.perf_counter() - t0)
                cpu[d].append(time.process_time() - c0)
        print(f"  step {step + 1}/{args.warmup + args.steps}", file=sys.stderr)
    base_wall, base_cpu = statistics.median(wall[1]), statistics.median(cpu[1])
    print(f"\n{args.config}, {args.steps} timed steps per setting, interleaved, {args.device}")
    print("| train.size_divisibility | wall ms / step | x 1 | CPU ms / step | x 1 | padded area | shapes |")
    print("|---|---|---|---|---|---|---|")
    for d in settings:
        w, c = statistics.median(wall[d]), statistics.median(cpu[d])
        print(
            f"| {d} | {1000 * w:.0f} | {w / base_wall:.2f} | {1000 * c:.0f} | {c / base_cpu:.2f} "
            f"| {100 * statistics.mean(area[d]):.1f}% | {len(shapes[d])} |"
        )


def run_effect(args) -> None:
    from hqm.config import load_config
    from hqm.detectors import build_model

    cfg = load_config(None, ["model.backbone_norm=frozen", f"device={args.device}"])
    torch.manual_seed(0)
    model = build_model(cfg, 80, 117).to(args.device).eval()
    h, w = args.size, round(args.size * 4 / 3)
    x = torch.randn(1, 3, h, w, device=args.device)
    canvases = [(h, -(-w // 32) * 32), (-(-h // 32) * 32 + 32, -(-w // 32) * 32), (w, w)]
    print(f"\nR50 QPIC (random weights), one {h} x {w} input alone vs padded, {args.device}")
    print("| padded to | max change, object logits | verb logits | subject boxes (normalised) |")
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
    from hqm.detectors import build_model

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
    p.add_argument("--config", default="qpic_r18_synthetic", help="train: the config to time")
    p.add_argument("--steps", type=int, default=40, help="train: timed steps per setting")
    p.add_argument("--warmup", type=int, default=5, help="train: untimed first steps")
    p.add_argument("--images", type=int, default=16, help="predict: number of images")
    p.add_argument("--sizes", type=int, default=4, help="predict: distinct image sizes (<= 6)")
    p.add_argument("--size", type=int, default=512, help="effect, predict: input short side")
    p.add_argument("--batch", type=int, default=4, help="predict: chunk size")
    p.add_argument("--repeat", type=int, default=2, help="predict: timed rounds")
    p.add_argument("overrides", nargs="*", help="train: section.key=value overrides")
    args = p.parse_intermixed_args()
    {"effect": run_effect, "train": run_train, "predict": run_predict}[args.what](args)


if __name__ == "__main__":
    main()
