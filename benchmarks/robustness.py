"""Robustness to moved objects: mAP of trained models on test images whose content is moved.

The motivation of HQM: a DETR-style HOI detector's queries overfit the positions where humans and
objects appear in training. This evaluates trained checkpoints with ``eval.shift = m`` for several
magnitudes m (``hqm.data.shift``: each test image's content rescaled by up to (1 + m)x or 1 / (1 + m)
and translated by up to m / 2 of the image, the same draw for every model; boxes move with it, pairs
pushed out of the image are dropped from the ground truth) and reports Full mAP against m, the
mean +- std over the seeds of each variant, and that mean as a fraction of the variant's mAP at m = 0.

Checkpoints come from a convergence study (``benchmarks/convergence.py``: ``--study OUT`` takes
``OUT/runs/<variant>-s<seed>/checkpoints/last.pt`` of the finished runs of ``--variants``) or are
named one by one (``--checkpoint variant=path``, repeatable).

    .venv/bin/python benchmarks/robustness.py --study runs/convergence --variants none ajl
    .venv/bin/python benchmarks/robustness.py --checkpoint none=runs/demo/checkpoints/last.pt \\
        --checkpoint ajl=runs/demo-ajl/checkpoints/last.pt --magnitudes 0 0.2 0.4
    .venv/bin/python benchmarks/robustness.py --study runs/convergence --device cuda --jobs 6

Writes ``robustness.csv`` (variant, seed, magnitude, Full / Rare / Non-rare mAP and recall in %),
``robustness.md`` and ``robustness.png`` into ``--out`` (default: the study folder or runs/robustness).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from convergence import (
    DONE,
    METRICS,
    count,
    mean_std,
    thread_env,
    threads_per_job,
)  # benchmarks/convergence.py


def evaluate(ckpt: str, magnitudes: list[float], device: str, overrides: list[str]) -> list[dict]:
    """Metrics (fractions) of ``ckpt`` at every magnitude, in this process."""
    import logging

    from hqm.engine.evaluator_run import evaluate_checkpoint

    logging.getLogger("hqm").setLevel(logging.WARNING)
    rows = []
    for m in magnitudes:
        metrics = evaluate_checkpoint(None, ckpt, [f"eval.shift={m}", f"device={device}", *overrides])
        rows.append({"magnitude": m, **{k: metrics[k] for k in METRICS}})
    return rows


def find_checkpoints(args) -> list[tuple[str, int, str]]:
    found = []
    if args.study:
        for variant in args.variants:
            # exactly <variant>-s<seed>: the glob alone would give `ajl` the runs of `ajl-select-random`
            for run in sorted(Path(args.study, "runs").glob(f"{variant}-s*")):
                ckpt = run / "checkpoints" / "last.pt"
                seed = run.name[len(variant) + 2 :]
                if run.is_dir() and (run / DONE).is_file() and ckpt.is_file() and seed.isdigit():
                    found.append((variant, int(seed), str(ckpt)))
    for i, item in enumerate(args.checkpoint):
        variant, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--checkpoint {item!r}: expected VARIANT=PATH")
        found.append((variant, i, path))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="", help="a benchmarks/convergence.py output folder")
    ap.add_argument("--variants", nargs="+", default=["none", "ajl"], help="variants of --study to evaluate")
    ap.add_argument("--checkpoint", action="append", default=[], help="VARIANT=PATH (repeatable)")
    ap.add_argument("--magnitudes", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=count(1), default=1, help="checkpoints evaluated at once (processes)")
    ap.add_argument("--threads", type=count(0), default=0, help="CPU threads per process (0: cores / jobs)")
    ap.add_argument("--out", default="")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    ap.add_argument(
        "overrides", nargs="*", help="key=value overrides for every evaluation (e.g. data.root=...)"
    )
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(evaluate(args.worker, args.magnitudes, args.device, args.overrides)))
        return
    checkpoints = find_checkpoints(args)
    if not checkpoints:
        raise SystemExit("no checkpoints: give --study with finished runs of --variants, or --checkpoint")
    out = Path(args.out or args.study or "runs/robustness")
    out.mkdir(parents=True, exist_ok=True)
    print(f"[robustness] {len(checkpoints)} checkpoints x {len(args.magnitudes)} magnitudes", flush=True)

    env = thread_env(threads_per_job(args.threads, args.jobs))

    def one(item: tuple[str, int, str]) -> list[dict]:
        variant, seed, ckpt = item
        cmd = [sys.executable, __file__, "--worker", ckpt, "--device", args.device, "--magnitudes"]
        cmd += [str(m) for m in args.magnitudes] + ["--", *args.overrides]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            print(f"[robustness] {ckpt} failed:\n{res.stderr[-2000:]}", flush=True)
            return []
        rows = json.loads(res.stdout.strip().splitlines()[-1])
        print(
            f"[robustness] {variant} seed {seed}: "
            + ", ".join(f"m={r['magnitude']:g} {100 * r['mAP_full']:.2f}" for r in rows),
            flush=True,
        )
        return [{"variant": variant, "seed": seed, **r} for r in rows]

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = [r for batch in pool.map(one, checkpoints) for r in batch]
    for r in rows:
        for k in METRICS:
            r[k] = round(100 * r[k], 3)
    with open(out / "robustness.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["variant", "seed", "magnitude", *METRICS])
        w.writeheader()
        w.writerows(rows)
    print(table(rows, args.magnitudes, out))
    plot(rows, out)
    print(f"[robustness] {out / 'robustness.csv'}, {out / 'robustness.md'}, {out / 'robustness.png'}")


def grouped(rows: list[dict]) -> dict[str, dict[float, list[float]]]:
    by: dict[str, dict[float, list[float]]] = {}
    for r in rows:
        by.setdefault(r["variant"], {}).setdefault(r["magnitude"], []).append(r["mAP_full"])
    return by


def table(rows: list[dict], magnitudes: list[float], out: Path) -> str:
    by = grouped(rows)
    lines = [
        "Full mAP (%) on moved test content, mean ± std over seeds (relative to m = 0 in brackets):",
        "",
        "| variant | seeds | " + " | ".join(f"m = {m:g}" for m in magnitudes) + " |",
        "| --- | --- | " + " | ".join("---" for _ in magnitudes) + " |",
    ]
    for v, per in by.items():
        base = statistics.mean(per[magnitudes[0]]) if per.get(magnitudes[0]) else None
        cells = []
        for m in magnitudes:
            vals = per.get(m, [])
            if not vals:
                cells.append("-")
                continue
            rel = f" ({statistics.mean(vals) / base:.0%})" if base and m != magnitudes[0] else ""
            cells.append(mean_std(vals) + rel)
        n = max(len(x) for x in per.values())
        lines.append(f"| {v} | {n} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "robustness.md").write_text(text)
    return text


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, per in grouped(rows).items():
        xs = sorted(per)
        ax.errorbar(
            xs,
            [statistics.mean(per[x]) for x in xs],
            yerr=[statistics.stdev(per[x]) if len(per[x]) > 1 else 0.0 for x in xs],
            marker="o",
            capsize=3,
            label=v,
        )
    ax.set_xlabel("shift magnitude m (eval.shift)")
    ax.set_ylabel("Full mAP (%)")
    ax.set_title("Moved test content: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "robustness.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
