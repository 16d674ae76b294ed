"""Inference speed of every registered detector: per-image latency, images/s and peak memory.

For each detector (its paper config, ``<detector>_r50_hico.yaml``, CDN-S for CDN: R50, HICO-DET's 80
objects and 117 verbs, random weights: speed does not depend on them),
precision (fp32, bf16 autocast; bf16 only when asked for on a CPU without native bf16), input
size (short side 512 and 800 px of a 4:3 image: 512 x 683, 800 x 1067, unpadded) and batch size (1,
8), a fresh process times what ``hqm predict`` / evaluation run per batch: ``model(images, masks)``
then the detector's post-processor (top-100 triplets per image, boxes back to the original size),
under ``torch.inference_mode``. Image decoding and resizing are not timed. After ``--warmup``
batches, ``--iters`` batches are timed (CUDA: synchronised); the table gives the median and p90 of
the per-image latency (batch time / batch size), images/s (batch size / median batch time) and the
peak memory (CUDA: ``max_memory_allocated``; CPU: peak resident set size of the process, the model
included).

Mining costs nothing at inference (the paper's claim): the same model with ``mining.strategy=ajl``
configured (the miners attached, as a trained HQM checkpoint builds it) is timed beside the plain one
(rows ``+ajl``), and its outputs are checked to be identical.

    .venv/bin/python benchmarks/infer_speed.py                       # CPU: all detectors (minutes)
    .venv/bin/python benchmarks/infer_speed.py --quick               # 512 px, batch 1, fp32 only
    .venv/bin/python benchmarks/infer_speed.py --device cuda --iters 20
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import hqm
from hqm.config import load_config
from hqm.detectors import build_model, build_postprocessor, detector_names

SIZES = {512: (512, 683), 800: (800, 1067)}


# the variant the HQM paper plugs into where a detector has several (CDN-S, not CDN-B / CDN-L)
PAPER_VARIANT = {"cdn": "cdn_s_r50_hico"}


def paper_config(detector: str) -> str:
    folder = Path(hqm.__file__).parent / "configs"
    if detector in PAPER_VARIANT:
        return str(folder / f"{PAPER_VARIANT[detector]}.yaml")
    plain = sorted(c for c in folder.glob(f"{detector}*_r50_hico.yaml") if c.stem.endswith("_r50_hico"))
    if not plain:
        raise SystemExit(f"no {detector}*_r50_hico.yaml config packaged")
    return str(plain[0])


def build(detector: str, mining: str, device: torch.device):
    from hqm.data import load_meta

    cfg = load_config(
        paper_config(detector), [f"mining.strategy={mining}", "model.pretrained=", f"device={device}"]
    )
    meta = load_meta(cfg.data.dataset, "/nonexistent")  # the packaged HICO-DET vocabulary
    torch.manual_seed(0)
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes).to(device).eval()
    return model, build_postprocessor(cfg, meta).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setting(spec: dict) -> list[dict]:
    """Times one (detector, precision, size, batch) setting in this process: the plain model, and with
    ``spec["mining"] == "ajl"`` also the same weights with AJL's miners attached, batch by batch in
    turn (a load change on the machine hits both alike). One row per model."""
    device = torch.device(spec["device"])
    variants = ["none", "ajl"] if spec["mining"] == "ajl" else ["none"]
    models = [build(spec["detector"], m, device) for m in variants]
    if len(models) == 2:
        # same detector weights; the miners (GBS query encoder) have weights of their own
        models[1][0].load_state_dict(models[0][0].state_dict(), strict=False)
    h, w = SIZES[spec["size"]]
    b = spec["batch"]
    g = torch.Generator().manual_seed(0)
    images = torch.rand(b, 3, h, w, generator=g).to(device)
    masks = torch.zeros(b, h, w, dtype=torch.bool, device=device)
    orig = torch.tensor([[h, w]] * b, device=device)
    names = [f"{i}.jpg" for i in range(b)]
    dtype = torch.bfloat16 if spec["precision"] == "bf16" else None
    times: list[list[float]] = [[] for _ in models]
    checks = [0.0 for _ in models]
    with torch.inference_mode():
        for i in range(spec["warmup"] + spec["iters"]):
            for k, (model, post) in enumerate(models):
                sync(device)
                t = time.perf_counter()
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out = model(images, masks)
                preds = post(out, orig, names)
                sync(device)
                if i >= spec["warmup"]:
                    times[k].append(time.perf_counter() - t)
                checks[k] = float(sum(float(s) for p in preds for s in p.scores[:10]))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = []
    for k, mining in enumerate(variants):
        per_image = sorted(t / b for t in times[k])
        p90 = per_image[min(len(per_image) - 1, int(round(0.9 * (len(per_image) - 1))))]
        rows.append(
            {
                **spec,
                "mining": mining,
                "paired": len(models) == 2,
                "median_ms": 1000 * statistics.median(per_image),
                "p90_ms": 1000 * p90,
                "images_per_s": b / statistics.median(times[k]),
                "peak_mib": peak if len(models) == 1 else float("nan"),
                "check": checks[k],
            }
        )
    return rows


def default_precisions(device: str) -> list[str]:
    """fp32 and bf16, or fp32 alone (said on stderr) where bf16 would run on a slow fallback path
    (an AVX2-only CPU: about 100x slower matmuls; ``hqm.device.native_bf16``)."""
    from hqm.device import native_bf16, resolve_device

    dev = resolve_device(device)
    if native_bf16(dev):
        return ["fp32", "bf16"]
    print(
        f"bf16 left out: {dev} has no native bf16 kernels (--precisions bf16 times it anyway)",
        file=sys.stderr,
    )
    return ["fp32"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--detectors", nargs="+", default=list(detector_names()))
    ap.add_argument("--sizes", nargs="+", type=int, default=[512, 800], choices=sorted(SIZES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        choices=["fp32", "bf16"],
        help="default: fp32 and bf16, fp32 only where the device has no native bf16 kernels",
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed batches (default: 1 on CPU, 5 on CUDA)")
    ap.add_argument("--iters", type=int, default=None, help="timed batches (default: 3 on CPU, 20 on CUDA)")
    ap.add_argument("--quick", action="store_true", help="512 px, batch 1, fp32 only")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(time_setting(json.loads(args.worker))))
        return
    cuda = args.device.startswith("cuda")
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    iters = args.iters if args.iters is not None else (20 if cuda else 3)
    if iters < 1 or warmup < 0:
        sys.exit(f"--iters must be >= 1 and --warmup >= 0 (got {iters}, {warmup})")
    if args.quick:
        args.sizes, args.batches, args.precisions = [512], [1], ["fp32"]
    if args.precisions is None:
        args.precisions = default_precisions(args.device)
    settings = []
    for det in args.detectors:
        for mining in ("none", "ajl"):
            for prec in args.precisions:
                for size in args.sizes:
                    for b in args.batches:
                        if mining == "ajl" and (size != args.sizes[0] or b != args.batches[0]):
                            continue  # the mining check: one size and batch per precision
                        settings.append(
                            {
                                "detector": det,
                                "mining": mining,
                                "precision": prec,
                                "size": size,
                                "batch": b,
                                "device": args.device,
                                "warmup": warmup,
                                "iters": iters,
                            }
                        )
    rows = []
    head = f"{'detector':<10}{'precision':<10}{'size':>6}{'batch':>6}{'median ms/img':>15}{'p90 ms/img':>12}"
    head += f"{'images/s':>10}{'peak MiB':>10}"
    print(
        f"inference speed on {args.device} (torch {torch.__version__}), "
        f"{warmup} warm-up + {iters} timed batches"
    )
    print(head)
    for spec in settings:
        res = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
        )
        if res.returncode != 0:
            what = f"{spec['detector']} {spec['precision']} {spec['size']} b{spec['batch']}"
            print(f"{what}: failed\n{res.stderr[-2000:]}")
            continue
        for r in json.loads(res.stdout.strip().splitlines()[-1]):
            rows.append(r)
            if r["paired"]:
                continue  # printed in the mining table
            print(
                f"{r['detector']:<10}{r['precision']:<10}{r['size']:>6}{r['batch']:>6}{r['median_ms']:>15.1f}"
                f"{r['p90_ms']:>12.1f}{r['images_per_s']:>10.2f}{r['peak_mib']:>10.0f}",
                flush=True,
            )
    print(
        "\nmining at inference: the same weights with mining.strategy=ajl configured vs plain, timed in turn"
    )
    cols = f"{'detector':<10}{'precision':<10}{'size':>6}{'batch':>6}"
    print(cols + f"{'plain ms/img':>14}{'ajl ms/img':>12}{'ratio':>8}")
    paired = [r for r in rows if r["paired"]]
    for plain, ajl in zip(paired[0::2], paired[1::2]):
        same = (
            "identical" if plain["check"] == ajl["check"] else f"DIFFER ({plain['check']} vs {ajl['check']})"
        )
        print(
            f"{plain['detector']:<10}{plain['precision']:<10}{plain['size']:>6}{plain['batch']:>6}"
            f"{plain['median_ms']:>14.1f}{ajl['median_ms']:>12.1f}"
            f"{ajl['median_ms'] / plain['median_ms']:>8.3f}"
            f"  outputs {same}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
