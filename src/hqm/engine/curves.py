"""Learning curves of a run: ``curves.png`` from ``metrics.jsonl`` (losses) and ``results.csv`` (mAP).

Left panel: the total loss and the last-layer loss terms of the learnable queries (``loss_obj_ce``,
``loss_verb_ce``, ``loss_sub_bbox`` ...), averaged over the log records of each epoch (the trainer logs
a running mean every ``train.log_every`` steps). Right panel: every evaluation's primary metrics in
percent (Full / Rare / Non-rare mAP and mean max recall on HICO-DET-style data, AP_role on V-COCO,
mAP on HOI-A) against the epoch after which it ran. The plot is redrawn after every evaluation, so
a running or killed training always has an up-to-date picture.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

# metrics drawn in the right panel when present (fractions in results.csv, drawn as percent)
EVAL_KEYS = (
    "mAP_full",
    "mAP_rare",
    "mAP_nonrare",
    "mean_max_recall",
    "AP_role_S1",
    "AP_role_S2",
    "mAP",
)


def _epoch_losses(metrics_file: Path) -> dict[str, list[tuple[float, float]]]:
    """{term: [(epoch, mean over that epoch's train records), ...]} for the total and last-layer terms
    of the learnable queries (``x`` = epoch index + 1, i.e. the end of the epoch the steps belong to)."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    if not metrics_file.is_file():
        return {}
    with open(metrics_file) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: skip it
                continue
            if rec.get("kind") != "train":
                continue
            for k, v in rec.items():
                if (k == "loss" or (k.startswith("loss_") and not k[-1].isdigit())) and isinstance(
                    v, (int, float)
                ):
                    if math.isfinite(v):
                        sums[k][int(rec["epoch"])].append(float(v))
    return {k: [(e + 1, sum(v) / len(v)) for e, v in sorted(per.items())] for k, per in sums.items()}


def _eval_rows(results_file: Path) -> list[dict[str, float]]:
    if not results_file.is_file():
        return []
    rows = []
    with open(results_file, newline="") as f:
        for row in csv.DictReader(f):
            try:
                rows.append({k: float(v) for k, v in row.items() if v not in ("", None)})
            except ValueError:
                continue
    return rows


def plot_curves(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Draw ``<run_dir>/curves.png`` (or ``out``); returns its path, or None when nothing is logged yet.

    Reads ``metrics.jsonl`` and ``results.csv`` written by the trainer (``hqm.engine.logging``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    losses = _epoch_losses(run_dir / "metrics.jsonl")
    rows = _eval_rows(run_dir / "results.csv")
    if not losses and not rows:
        return None
    fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for k in sorted(losses, key=lambda k: (k != "loss", k)):
        xs, ys = zip(*losses[k])
        ax_l.plot(xs, ys, marker="o", ms=3, lw=2.2 if k == "loss" else 1.2, label=k.replace("loss_", ""))
    ax_l.set_yscale("log")
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss (epoch mean, log scale)")
    ax_l.set_title("losses (learnable queries, last layer)")
    ax_l.grid(alpha=0.3)
    if losses:
        ax_l.legend(fontsize=7, ncol=2)
    for k in EVAL_KEYS:
        pts = [(r["epoch"], 100 * r[k]) for r in rows if k in r and math.isfinite(r[k])]
        if pts:
            xs, ys = zip(*pts)
            ax_m.plot(xs, ys, marker="o", ms=3, label=k)
    ax_m.set_xlabel("epoch")
    ax_m.set_ylabel("percent")
    ax_m.set_title("evaluation")
    ax_m.grid(alpha=0.3)
    if rows:
        ax_m.legend(fontsize=8)
    fig.tight_layout()
    path = Path(out) if out is not None else run_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
