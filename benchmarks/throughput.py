"""Training throughput (images/s, s/step) and peak memory of QPIC: fp32 vs bf16 (vs torch.compile,
vs channels_last, vs the released QPIC code) on the current device, printed as a table.

One step is what the trainer runs per optimiser step: forward under autocast -> criterion in fp32
(Hungarian matching included) -> backward -> gradient clipping -> AdamW step. Input: a fixed random
batch (default 2 x 512 x 683, the 512 px short side of a 4:3 image, as the released code and hqm's
default ``train.size_divisibility=1`` pad it; ``--pad32``: 512 x 704, a multiple of 32) with random
targets (``--pairs`` GT pairs per image),
HICO-DET class counts (80 objects, 117 verbs), R50 with frozen BN trained from layer2, 100 queries,
6 + 6 layers. Each mode runs in a fresh process (clean peak memory); the first ``--warmup`` steps are
excluded and the table reports the median and the spread (min, max) of the remaining steps.

    .venv/bin/python benchmarks/throughput.py                      # CPU: fp32 and bf16, 512 px
    .venv/bin/python benchmarks/throughput.py --modes released,fp32,cl --qpic-root ~/src/qpic --repeat 2
    .venv/bin/python benchmarks/throughput.py --device cuda --size 800 --modes fp32,bf16,fp16,compile,cl

Modes: fp32, bf16, fp16 (GradScaler), compile (fp32 + torch.compile), cl (fp32, channels_last
backbone: what the trainer runs by default), bf16-cl, and released: the same step of the released
QPIC code from a checkout given by ``--qpic-root`` (see released_qpic.py; the speed-up column is then
relative to it). On a GPU the defaults give the per-GPU numbers of the paper's recipe (800 px,
batch 2). The optimiser is the trainer's (fused AdamW on CUDA and CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from hqm.data.dataset import pair_instances


def make_batch(args, device: torch.device):
    g = torch.Generator().manual_seed(0)
    h = args.size
    w = round(args.size * 4 / 3)
    if args.pad32:  # as hqm's collate function with train.size_divisibility=32
        h, w = -(-h // 32) * 32, -(-w // 32) * 32
    images = torch.randn(args.batch, 3, h, w, generator=g).to(device)
    masks = torch.zeros(args.batch, h, w, dtype=torch.bool, device=device)
    targets = []
    for _ in range(args.batch):
        n = args.pairs
        cxcy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
        verbs = (torch.rand(n, 117, generator=g) > 0.98).float()
        verbs[torch.arange(n), torch.randint(0, 117, (n,), generator=g)] = 1.0
        pairs = {
            "obj_labels": torch.randint(0, 80, (n,), generator=g),
            "verb_labels": verbs,
            "sub_boxes": torch.cat([cxcy, wh], 1),
            "obj_boxes": torch.cat([cxcy.flip(1), wh * 0.8], 1),
            "has_obj": torch.ones(n, dtype=torch.bool),
        }
        pairs.update(pair_instances(pairs))
        targets.append({k: v.to(device) for k, v in pairs.items()})
    return images, masks, targets


def build_hqm_step(args, mode: str, device: torch.device):
    """-> (step(): one optimiser step of hqm's trainer, input shape)."""
    from hqm.config import load_config
    from hqm.detectors import build_model
    from hqm.engine.evaluate import autocast_context
    from hqm.engine.trainer import build_optimizer
    from hqm.models import build_criterion, build_matcher

    amp = {"bf16": "bf16", "bf16-cl": "bf16", "fp16": "fp16"}.get(mode, "off")
    cfg = load_config(
        None,
        [
            f"model.backbone={args.backbone}",
            "model.backbone_norm=frozen",
            f"model.num_queries={args.queries}",
            f"device={args.device}",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg, 80, 117).to(device).train()
    channels_last = mode in ("cl", "bf16-cl")
    if channels_last:
        model.backbone.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, 80, build_matcher(cfg.loss)).to(device)
    opt = build_optimizer(model, cfg.train, device)  # as the trainer: lr 1e-4 / 1e-5, wd 1e-4, fused
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    fwd = torch.compile(model) if mode == "compile" else model
    images, masks, targets = make_batch(args, device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast_context(device, amp):
            out = fwd(images, masks)
        with torch.autocast(device.type, enabled=False):
            loss, _ = criterion(out, targets)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)

    return step, tuple(images.shape)


def worker(args) -> dict:
    """Run one mode in this process; returns the step times and peak memory."""
    from hqm.engine.logging import peak_memory_mb

    mode = args.worker
    device = torch.device(args.device)
    if mode == "released":
        from released_qpic import build_released_step

        if not args.qpic_root:
            raise SystemExit("mode 'released' needs --qpic-root (a checkout of hitachi-rd-cv/qpic)")
        step, shape = build_released_step(args, device)
    else:
        step, shape = build_hqm_step(args, mode, device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times, cpu = [], []
    for _ in range(args.warmup + args.steps):
        sync()
        t, c = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {
        "mode": mode,
        "shape": "x".join(map(str, shape)),
        "times": times[args.warmup :],
        "cpu": cpu[args.warmup :],
        "peak_mb": peak_memory_mb(device),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda, cuda:N (default: cuda if available)",
    )
    p.add_argument(
        "--modes",
        default=None,
        help="comma list: fp32,bf16,fp16,compile,cl,bf16-cl,released (default: fp32,bf16, or fp32 alone "
        "where the device has no native bf16 kernels)",
    )
    p.add_argument("--qpic-root", help="checkout of hitachi-rd-cv/qpic, for mode 'released'")
    p.add_argument(
        "--pad32",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="pad hqm's input to a multiple of 32 as train.size_divisibility=32 does (default: the exact "
        "size, as the released code and train.size_divisibility=1 batch it)",
    )
    p.add_argument("--size", type=int, default=None, help="short side (default 512 on CPU, 800 on GPU)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--pairs", type=int, default=3, help="GT pairs per image")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeat", type=int, default=1, help="fresh processes per mode (interleaved)")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.size = args.size or (800 if args.device.startswith("cuda") else 512)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if args.modes is None:
        from hqm.device import native_bf16, resolve_device

        dev = resolve_device(args.device)
        args.modes = "fp32,bf16" if native_bf16(dev) else "fp32"
        if args.modes == "fp32":
            print(f"bf16 left out: {dev} has no native bf16 kernels (--modes fp32,bf16 times it anyway)")
    modes = args.modes.split(",")
    results: dict[str, dict] = {m: {"times": [], "cpu": [], "peak_mb": 0.0} for m in modes}
    for _ in range(args.repeat):  # interleaved, so a load change on the machine hits every mode alike
        for m in modes:
            cmd = [sys.executable, __file__, "--worker", m, *sys.argv[1:]]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"mode {m} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.splitlines()[-1])
            results[m]["times"] += r["times"]
            results[m]["cpu"] += r["cpu"]
            results[m]["peak_mb"] = max(results[m]["peak_mb"], r["peak_mb"])
            results[m]["threads"] = r["threads"]
            results[m]["shape"] = r["shape"]
    print(
        f"QPIC {args.backbone}, {args.queries} queries, batch {args.batch}, {args.size} px short side, "
        f"device {args.device}, threads {results[modes[0]].get('threads')}, "
        f"{args.steps} steps x {args.repeat} after {args.warmup} warm-up"
    )
    # CPU seconds per step (all threads): on a shared machine, wall time / (CPU time / threads) shows
    # how much of the wall time was lost to other processes
    base = "released" if "released" in modes else modes[0]
    print(
        f"{'mode':<9}{'input':>16}{'median s/step':>14}{'min':>8}{'max':>8}{'images/s':>10}"
        f"{'cpu s/step':>11}{'peak MiB':>10}{'speed-up vs ' + base:>22}"
    )
    base_med = statistics.median(results[base]["times"])
    for m in modes:
        t = results[m]["times"]
        med = statistics.median(t)
        print(
            f"{m:<9}{results[m]['shape']:>16}{med:>14.3f}{min(t):>8.3f}{max(t):>8.3f}"
            f"{args.batch / med:>10.2f}{statistics.median(results[m]['cpu']):>11.3f}"
            f"{results[m]['peak_mb']:>10.0f}{base_med / med:>21.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
