"""Training-step time and peak memory of a detector (QPIC by default) with each HQM strategy, on the same
model and batch.

Every strategy (none / gbs / amm / ajl / pjl / cjl) trains the same detector (same seed, same weights)
on the same random batch (images plus ``--pairs`` GT pairs per image) with full optimiser steps as the
trainer runs them (channels_last backbone, fused AdamW): mining schedule -> forward -> criterion ->
backward -> gradient clipping -> AdamW step. Timing is interleaved: round r runs step r of every
strategy in turn, so a load change on the machine hits all strategies alike. The miners a strategy does
not own are detached during its steps. A strategy's step time is the median over its steps of the same
kind (AJL alternates GBS and AMM steps: the table shows the mean of the two medians, i.e. the average
AJL step). Peak memory comes from a separate short run per strategy in a fresh process:
``torch.cuda.max_memory_allocated`` on a GPU, the peak resident set size on the CPU (model, optimiser
state and activations included).

    .venv/bin/python benchmarks/train_step.py                 # R50, 512 px, batch 2, 100 queries, CPU
    .venv/bin/python benchmarks/train_step.py --quick         # small model, for a smoke run
    .venv/bin/python benchmarks/train_step.py --device cuda --size 800 --steps 20
    .venv/bin/python benchmarks/train_step.py --detector hotr --quick
    .venv/bin/python benchmarks/train_step.py --config qpic_r18_synthetic --size 128 --batch 8 --amp bf16

``--config`` takes the model from a config (the demo's above: the study recipe), ``--amp bf16`` runs
the forward under bf16 autocast as the trainer does (``train.amp``), and ``--separate`` decodes every
mined group in a decoder call of its own (``shares_decoder_calls`` off: the code before mined groups
shared the learnable queries' call), to measure what sharing the call saves.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from hqm.data.dataset import pair_instances
from hqm.detectors import DETECTORS
from hqm.engine.evaluate import autocast_context
from hqm.engine.trainer import use_channels_last

STRATEGIES = ("none", "gbs", "amm", "ajl", "pjl", "cjl")


def model_overrides(args) -> list[str]:
    if args.config:
        return []
    detector = [f"model.detector={args.detector}"]
    if args.quick:
        return detector + [
            "model.backbone=resnet18",
            "model.backbone_out=layer3",
            "model.hidden_dim=64",
            "model.nheads=4",
            "model.enc_layers=2",
            "model.dec_layers=2",
            "model.dim_feedforward=128",
            "model.num_queries=20",
        ]
    return detector + [
        f"model.backbone={args.backbone}",
        "model.backbone_norm=frozen",
        f"model.num_queries={args.queries}",
        f"model.hidden_dim={args.hidden}",
        f"model.enc_layers={args.enc_layers}",
        f"model.dec_layers={args.dec_layers}",
    ]


def make_batch(args, num_obj: int, num_verb: int, device: torch.device):
    """Images (B, 3, S, S), no padding, and B targets of ``--pairs`` random pairs (normalised cxcywh)."""
    g = torch.Generator().manual_seed(0)
    size = args.size
    images = torch.randn(args.batch, 3, size, size, generator=g)
    masks = torch.zeros(args.batch, size, size, dtype=torch.bool)
    targets = []
    for _ in range(args.batch):
        n = args.pairs
        wh = torch.rand(n, 2, generator=g) * 0.4 + 0.1
        pairs = {
            "obj_labels": torch.randint(0, num_obj, (n,), generator=g),
            "sub_boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.5 + 0.25, wh], 1),
            "obj_boxes": torch.cat([torch.rand(n, 2, generator=g) * 0.5 + 0.25, wh * 0.7], 1),
            "has_obj": torch.ones(n, dtype=torch.bool),
        }
        targets.append(
            {
                **pairs,
                **pair_instances(pairs),
                "verb_labels": (torch.rand(n, num_verb, generator=g) > 0.95).float(),
                "size": torch.tensor([size, size]),
            }
        )
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    images = images.to(device)
    if use_channels_last(device, None):  # as the trainer (and the backbone in build)
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device), targets


def build(args, device: torch.device):
    """One detector holding every miner (GBS, AMM, CJL), its criterion and optimiser, and per strategy
    (schedule, miners it owns)."""
    from torch import nn

    from hqm.config import load_config
    from hqm.detectors import build_criterion, build_matcher, build_model
    from hqm.engine.trainer import build_optimizer
    from hqm.mining import build_miners
    from hqm.mining.schedule import build_schedule

    cfgs = {
        s: load_config(args.config, model_overrides(args) + [f"mining.strategy={s}", f"device={args.device}"])
        for s in STRATEGIES
    }
    torch.manual_seed(0)
    model = build_model(cfgs["none"], 80, 117)
    torch.manual_seed(1)
    miners = {
        **build_miners(cfgs["pjl"], model, lambda: build_matcher(cfgs["pjl"])),
        **build_miners(cfgs["cjl"], model, lambda: build_matcher(cfgs["cjl"])),
    }
    model.attach_miners(miners)
    model.shares_decoder_calls = model.shares_decoder_calls and not args.separate
    model.to(device).train()
    if use_channels_last(device, None):
        model.backbone.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfgs["none"], 80).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, cfgs["none"].train, device)
    plans = {
        s: (
            build_schedule(c.mining),
            nn.ModuleDict({n: model.miners[n] for n in build_schedule(c.mining).miner_names}),
        )
        for s, c in cfgs.items()
    }
    return model, criterion, optimizer, params, plans


def train_step(setup: tuple, schedule, batch, step: int, device, clock_wall: bool = True, amp="fp32"):
    """One optimiser step of ``setup`` = (model, criterion, optimizer, params), the forward under
    ``amp`` autocast (fp32 | bf16); returns (step kind, seconds of wall clock or process CPU time)."""
    model, criterion, optimizer, params = setup
    images, masks, targets = batch
    active = schedule.active(step)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with autocast_context(device, "off" if amp == "fp32" else amp):
        outputs = model(images, masks, targets, mining=active)
    loss, _ = criterion(outputs, targets, 1.0, schedule.weights(active))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 0.1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync(device)
    clock = time.perf_counter() - t0 if clock_wall else time.process_time() - c0
    return ",".join(active) or "none", clock


def time_interleaved(args, strategies: list[str]) -> dict[str, dict[str, list[float]]]:
    """strategy -> step kind -> timed seconds."""
    device = torch.device(args.device)
    model, criterion, optimizer, params, plans = build(args, device)
    setup = (model, criterion, optimizer, params)
    all_miners = model.miners
    batch = make_batch(args, 80, 117, device)
    times: dict[str, dict[str, list[float]]] = {s: {} for s in strategies}
    for step in range(args.warmup + args.steps):
        for s in strategies:
            schedule, owned = plans[s]
            model.miners = owned  # a strategy sees only its own miners (idle ones get the zero touch)
            kind, seconds = train_step(setup, schedule, batch, step, device, args.clock == "wall", args.amp)
            if step >= args.warmup:
                times[s].setdefault(kind, []).append(seconds)
        print(f"  round {step + 1}/{args.warmup + args.steps}", file=sys.stderr)
    model.miners = all_miners
    return times


def peak_memory(args, strategy: str) -> float:
    """MiB: a fresh process (``--only``) runs two steps of ``strategy`` alone."""
    device = torch.device(args.device)
    model, criterion, optimizer, params, plans = build(args, device)
    schedule, owned = plans[strategy]
    model.miners = owned
    batch = make_batch(args, 80, 117, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(2):
        train_step((model, criterion, optimizer, params), schedule, batch, step, device, amp=args.amp)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarise(kinds: dict[str, list[float]]) -> tuple[float, str]:
    """Average over the step kinds of the per-kind median (one kind except for AJL)."""
    medians = {k: statistics.median(v) for k, v in kinds.items()}
    detail = ", ".join(f"{k} {1000 * v:.0f}" for k, v in medians.items()) if len(medians) > 1 else ""
    return statistics.mean(medians.values()), detail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--detector", default="qpic", choices=sorted(DETECTORS))
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, help="square image side in pixels (default 512; 256 with --quick)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--pairs", type=int, default=3, help="GT pairs per image")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--enc-layers", type=int, default=6)
    p.add_argument("--dec-layers", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=6, help="timed steps (even, so AJL has both kinds)")
    p.add_argument("--quick", action="store_true", help="ResNet-18 C4, 256 px, D 64, 2+2 layers, 20 queries")
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: process CPU time (all threads), robust when other jobs share the CPU",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the per-strategy peak-memory runs")
    p.add_argument("--config", help="take the model from this config (name or path; model flags ignored)")
    p.add_argument("--amp", choices=("fp32", "bf16"), default="fp32", help="forward under bf16 autocast")
    p.add_argument(
        "--separate",
        action="store_true",
        help="every mined group in a decoder call of its own (the code before)",
    )
    p.add_argument("--only", help=argparse.SUPPRESS)  # internal: peak memory of one strategy, as JSON
    args = p.parse_args()
    if args.size is None:
        args.size = 256 if args.quick else 512
    for name, low in (("size", 32), ("batch", 1), ("pairs", 1), ("steps", 1), ("warmup", 0), ("threads", 0)):
        if getattr(args, name) < low:
            p.error(f"--{name} must be >= {low}")
    from hqm.config import load_config
    from hqm.errors import UsageError

    try:  # the model options and the device, checked as the package checks a config: one line
        load_config(args.config, model_overrides(args) + [f"device={args.device}"])
    except UsageError as e:
        p.error(str(e))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only:
        print(json.dumps({"peak_mib": peak_memory(args, args.only)}))
        return
    times = time_interleaved(args, args.strategies)
    peaks = {}
    if not args.no_memory:
        for strategy in args.strategies:
            cmd = [sys.executable, __file__, *sys.argv[1:], "--only", strategy]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
            peaks[strategy] = json.loads(out[-1])["peak_mib"]
    base = summarise(times["none"])[0] if "none" in times else None
    if args.config:
        desc = f"the model of {args.config}, {args.size} px"
    elif args.quick:
        desc = f"{args.detector}, quick model, {args.size} px"
    else:
        desc = (
            f"{args.detector}, {args.backbone}, {args.size} px, {args.queries} queries, "
            f"{args.enc_layers}+{args.dec_layers} layers, D {args.hidden}"
        )
    desc += f", {args.amp}" + (", mined groups in calls of their own" if args.separate else "")
    print(
        f"training step, {desc}, batch {args.batch}, {args.pairs} pairs/image, {args.device}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock; median of {args.steps} interleaved "
        f"steps after {args.warmup} warm-up"
    )
    print("| strategy | step ms | x none | peak MiB | per kind (ms) |")
    print("|---|---:|---:|---:|---|")
    for s, kinds in times.items():
        t, detail = summarise(kinds)
        ratio = f"{t / base:.2f}" if base else "-"
        peak = f"{peaks[s]:.0f}" if s in peaks else "-"
        print(f"| {s} | {1000 * t:.0f} | {ratio} | {peak} | {detail} |")


if __name__ == "__main__":
    main()
