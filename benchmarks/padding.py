"""What padding does and costs, printed as tables: how much padding moves a detector's outputs
(``effect``), training steps with ``train.size_divisibility`` and ``train.size_grouping``
(``train``), and prediction with ``eval.batching`` same_size vs padded vs one image per forward
pass (``predict``).

effect: a randomly initialised R50 QPIC (frozen BN) on one random ``--size`` x 4/3 input, alone and
zero-padded (with its mask) to larger canvases as batch-mates would pad it; the largest change of the
object / verb logits and of the subject boxes (normalised cxcywh).

train: the real trainer (``Trainer.train_step``: forward, criterion, backward, clipping, AdamW) on the
config's multi-scale, randomly cropped training batches (default: the demo config on the synthetic
benchmark). One trainer per setting ``DxP`` (``train.size_divisibility`` D, ``train.size_grouping``
P), all with the same initial weights, trains on the same pools of images in turn (pool by pool,
alternating which setting goes first), so a load change on the machine hits all alike: P = 1 cuts a
pool into consecutive (random) batches padded to their largest image rounded up to D (1: the released
QPIC code), P > 1 into batches of similar size (``hqm.data.batching.size_grouped_batches``). The
table gives median wall-clock and process-CPU step times (data loading excluded), the mean padded
area and the number of distinct batch shapes.

predict: ``HOIDetector.predict`` on ``--images`` random images of ``--sizes`` distinct sizes (in mixed
order) with a randomly initialised R50 QPIC; ``same_size`` (the default: only images of one size
share a forward pass), ``padded`` (each chunk padded to its largest image) and ``batch 1``.

    .venv/bin/python benchmarks/padding.py effect --size 512
    .venv/bin/python benchmarks/padding.py train --steps 40 data.root=data/synthetic
    .venv/bin/python benchmarks/padding.py train --settings 32x1 16x8 32x8 --steps 48 data.root=data/synthetic
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
    from hqm.data.dataset import collate_size_grouped
    from hqm.engine.trainer import Trainer

    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings]  # (divisibility, grouping)
    pool = max(g for _, g in settings)
    trainers = {}
    for d, g in settings:
        overrides = [
            f"train.size_divisibility={d}",
            f"train.output_dir={tempfile.mkdtemp(prefix='pad_bench_')}",
            f"device={args.device}",
            "data.num_workers=0",
            "eval.every=0",
            *args.overrides,
        ]
        trainers[d, g] = Trainer(load_config(args.config, overrides))  # same seed: same initial weights
        trainers[d, g].train_model.train()
    first = trainers[settings[0]]
    bs = first.cfg.train.batch_size
    first.sampler.set_epoch(0)
    loader = torch.utils.data.DataLoader(  # pools of the trainer's samples, batched per setting below
        first.train_loader.dataset,
        batch_size=bs * pool,
        sampler=first.sampler,
        collate_fn=list,
        drop_last=True,
    )

    def batches(samples: list, d: int, g: int) -> list[tuple]:
        """Collated random batches (g = 1: consecutive samples) or batches cut by size from sub-pools
        of g batches, as the trainer's loader makes them (``collate_size_grouped``)."""
        if g == 1:
            return [collate_fn(samples[i : i + bs], size_divisibility=d) for i in range(0, len(samples), bs)]
        return [
            b
            for s in range(0, len(samples), g * bs)
            for b in collate_size_grouped(samples[s : s + g * bs], bs, d)
        ]

    wall: dict[tuple, list[float]] = {k: [] for k in settings}
    cpu: dict[tuple, list[float]] = {k: [] for k in settings}
    area: dict[tuple, list[float]] = {k: [] for k in settings}
    shapes: dict[tuple, set] = {k: set() for k in settings}
    step = 0
    for round_, samples in enumerate(loader):
        if step >= args.warmup + args.steps:
            break
        for key in settings if round_ % 2 == 0 else settings[::-1]:
            trainer = trainers[key]
            for k, (images, masks, targets) in enumerate(batches(samples, *key)):
                shapes[key].add(tuple(images.shape[-2:]))
                area[key].append(float(masks.float().mean()))
                sync(trainer.device)
                t0, c0 = time.perf_counter(), time.process_time()
                trainer.train_step([(images, masks, targets)], trainer.schedule.active(step + k))
                sync(trainer.device)
                if step + k >= args.warmup:
                    wall[key].append(time.perf_counter() - t0)
                    cpu[key].append(time.process_time() - c0)
        step += pool
        print(f"  step {step}/{args.warmup + args.steps}", file=sys.stderr)
    base_wall, base_cpu = statistics.median(wall[settings[0]]), statistics.median(cpu[settings[0]])
    print(
        f"\n{args.config}, {len(wall[settings[0]])} timed steps per setting, pools interleaved, {args.device}"
    )
    print(
        "| train.size_divisibility | train.size_grouping | wall ms / step | x first | CPU ms / step "
        "| x first | padded area | shapes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for key in settings:
        w, c = statistics.median(wall[key]), statistics.median(cpu[key])
        print(
            f"| {key[0]} | {key[1]} | {1000 * w:.0f} | {w / base_wall:.2f} | {1000 * c:.0f} "
            f"| {c / base_cpu:.2f} | {100 * statistics.mean(area[key]):.1f}% | {len(shapes[key])} |"
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
    p.add_argument(
        "--settings",
        nargs="+",
        default=["1x1", "32x1"],
        help="train: DxP = train.size_divisibility D with train.size_grouping P (first = reference)",
    )
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
