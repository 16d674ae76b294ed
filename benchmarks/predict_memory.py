"""Peak memory of ``hqm predict`` on large photos, with and without ``--attn``.

Each measurement is one fresh ``python -m hqm predict`` process (peak resident set size from
``os.wait4``, i.e. the kernel's ``ru_maxrss`` of that child alone), on a generated JPEG of the given
size (smooth colour noise, so it compresses like a photo), with a randomly initialised detector of
``--config`` saved as a checkpoint. Defaults mirror a plain call: threshold 0 (up to
``eval.max_dets`` = 100 triplets kept), top_k 10 pairs drawn.

    python benchmarks/predict_memory.py                       # demo model (QPIC-R18), 12 and 64 MP
    python benchmarks/predict_memory.py --config qpic_r50_hico --megapixels 12
    python benchmarks/predict_memory.py --compare-src OLD/src --megapixels 12   # another checkout too

Prints one table row per (input, --attn); "import only" is the interpreter + torch + hqm baseline.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hqm.config import config_to_dict, load_config
from hqm.detectors import build_model
from hqm.engine.checkpoint import save_checkpoint
from hqm.structures import DatasetMeta

SIZES = {12: (4000, 3000), 64: (8000, 8000)}  # megapixels -> (width, height)


def make_meta(cfg) -> DatasetMeta:
    """The vocabulary the config trains on, without any dataset on disk."""
    if cfg.data.dataset == "synthetic":
        from hqm.data.synthetic import PRESETS, correct_matrix, vocabulary

        synth = PRESETS[cfg.data.synth_preset]
        voc = vocabulary(synth)
        return DatasetMeta("synthetic", voc["object_names"], voc["verb_names"], correct_matrix(synth))
    from hqm.data import load_meta

    return load_meta(cfg.data.dataset, "/nonexistent")  # the packaged vocabulary


def make_checkpoint(config: str, folder: Path) -> Path:
    cfg = load_config(config, ["device=cpu", "model.pretrained="])
    meta = make_meta(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
    config_dict = config_to_dict(cfg)
    config_dict["data"].pop("generate")  # a default value: lets an older checkout (--compare-src) read it
    path = folder / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_dict, "meta": meta.to_dict()})
    return path


def make_photo(path: Path, width: int, height: int) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (max(2, height // 100), max(2, width // 100), 3))
    Image.fromarray(noise.astype(np.uint8)).resize((width, height), Image.BICUBIC).save(path, quality=90)


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one child process; raises if it fails."""
    start = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... failed ({proc.returncode}): {err[-2000:]}")
    return usage.ru_maxrss / 1024, time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="qpic_r18_synthetic")
    p.add_argument("--megapixels", type=int, nargs="+", default=[12, 64], choices=sorted(SIZES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--compare-src", default="", help="also run this checkout's src/ (PYTHONPATH) for comparison"
    )
    p.add_argument("--compare-max-mp", type=int, default=12, help="largest input for --compare-src")
    args = p.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    builds = [("this checkout", env)]
    if args.compare_src:
        builds.append((args.compare_src, {**env, "PYTHONPATH": str(Path(args.compare_src).resolve())}))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(args.config, tmp)
        code = "import torch, hqm.api, hqm.viz.predict_files"
        rows.append(("this checkout", "import only", "-", *peak_rss([sys.executable, "-c", code], env)))
        for mp in args.megapixels:
            w, h = SIZES[mp]
            photo = tmp / f"photo_{mp}mp.jpg"
            make_photo(photo, w, h)
            for name, build_env in builds:
                if name != "this checkout" and mp > args.compare_max_mp:
                    continue
                for attn in (False, True):
                    out = tmp / f"out_{mp}_{attn}_{len(rows)}"
                    argv = [
                        sys.executable,
                        "-m",
                        "hqm",
                        "predict",
                        str(ckpt),
                        f"source={photo}",
                        f"out={out}",
                    ]
                    argv += ["device=cpu", *(["--attn"] if attn else []), "--quiet"]
                    rss, wall = peak_rss(argv, build_env)
                    rows.append((name, f"{w} x {h} ({mp} MP)", "yes" if attn else "no", rss, wall))
                    print(f"  {name}: {mp} MP, attn={attn}: {rss:.0f} MiB, {wall:.1f} s", file=sys.stderr)
    print(f"hqm predict peak memory, config {args.config}, {args.threads} threads, random weights")
    print("| code | input | --attn | peak RSS (MiB) | wall (s) |")
    print("|---|---|---|---|---|")
    for name, inp, attn, rss, wall in rows:
        print(f"| {name} | {inp} | {attn} | {rss:.0f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
