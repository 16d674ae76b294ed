"""The HQM study: Full mAP against training step for every mining strategy, over several seeds.

Trains the study recipe (default: the demo's ``qpic_r18_synthetic`` on the default synthetic preset)
once per (variant, seed) with ``hqm train``, evaluating on the test split after every epoch, and
reports what the paper's Figure 3 and Table 3 show:

* ``convergence.csv``: one row per evaluation (variant, strategy, seed, epochs, final, epoch, step, Full /
  Rare / Non-rare mAP and mean max recall in %, median training step time in s);
* ``convergence.png``: Full mAP against step, the mean over seeds with a band from the lowest to the
  highest seed (the strategies; the ablations and ``--variant`` runs in one more panel per strategy
  they change, beside ``none`` and that strategy);
* ``convergence.md``: per variant its epochs, finished seeds (and unfinished runs), mean +- std (over
  the finished seeds) of the final Full / Rare / Non-rare mAP, the paired
  comparison of each variant with ``none`` (Full mAP difference per seed, its mean +- std, the seeds
  it wins, the paired t-test's p; the non-rare difference's mean +- std, as the rare classes' few test
  pairs swing Full; the ratio of the median step times), and the faster-convergence check
  (``--short``: HQM trained for a fraction of the baseline's epochs, schedule included, against the
  baseline's full run).

Variants: the strategies (``--strategies``, default none gbs amm ajl pjl cjl), with ``--ablations``
also GBS without shifting / with Gaussian shifts, AMM with random selection / without the reference
A^l / without the hard queries Q^m (the paper's Table 4) and GBS with reference points learnt from
the query (``mining.gbs.reference_points=learned``; ``--ablation NAME``, repeatable, picks some of
them), and ``--short STRATEGY`` (default ajl) at
``--short-fraction`` (0.6) of the epochs, and any named set of overrides with ``--variant
NAME=KEY=VALUE[,KEY=VALUE...]`` (repeatable; e.g. a changed hyper-parameter of one strategy). Runs go
seed by seed, so a stopped study has whole seeds.

Resumable: each run lives in ``OUT/runs/<variant>-s<seed>``; a finished run is skipped, a stopped one
continues from its ``last.pt`` (``hqm train --resume auto``). ``--deadline-min`` stops launching runs
and interrupts running ones (they save ``last.pt``) after that many minutes, then reports.
``--jobs N`` trains N runs at once (a GPU has room for several small ones; on a 2-core CPU use 1).
The CSV, table and plot cover every run folder in ``OUT/runs``, this call's and earlier calls' (one
study per OUT: its runs should share the recipe, data and size), each run's strategy and epochs read
from its own ``config.yaml``; a folder or ``results.csv`` line that cannot be read is left out with
one line.

    .venv/bin/python benchmarks/convergence.py                              # 3 seeds, CPU: hours
    .venv/bin/python benchmarks/convergence.py --seeds 1 --epochs 2 --strategies none ajl --short ''
    .venv/bin/python benchmarks/convergence.py --device cuda --jobs 8 --threads 2
    .venv/bin/python benchmarks/convergence.py --device cuda --size 256 --jobs 4   # larger images
    .venv/bin/python benchmarks/convergence.py --strategies none ajl \
        --variant ajl-k10=mining.strategy=ajl,mining.amm.k=10         # a named extra variant
    .venv/bin/python benchmarks/convergence.py --report                     # tables from OUT only
    .venv/bin/python benchmarks/convergence.py --strategies none gbs --ablation gbs-shift-none --short ''
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import hqm

STRATEGIES = ("none", "gbs", "amm", "ajl", "pjl", "cjl")
#: the paper's Table 4 ablations, each on the strategy it changes
ABLATIONS = {
    "gbs-shift-none": ["mining.strategy=gbs", "mining.gbs.shift=none"],
    "gbs-shift-gaussian": ["mining.strategy=gbs", "mining.gbs.shift=gaussian"],
    # not in the paper: GBS queries' reference points learnt from q instead of the shifted centres
    "gbs-reference-learned": ["mining.strategy=gbs", "mining.gbs.reference_points=learned"],
    "amm-select-random": ["mining.strategy=amm", "mining.amm.select=random"],
    "amm-reference-self": ["mining.strategy=amm", "mining.amm.reference=self"],
    "amm-target-learnable": ["mining.strategy=amm", "mining.amm.target=learnable"],
}
SHORT = re.compile(rf"({'|'.join(STRATEGIES)})-\d+ep")  # a strategy's shorter schedule (--short)
DONE = "study_run_finished"  # marker written into a run folder when its training ended successfully
METRICS = ("mAP_full", "mAP_rare", "mAP_nonrare", "mean_max_recall")


@dataclass
class Run:
    variant: str
    seed: int
    epochs: int
    overrides: list[str]
    dir: Path
    proc: subprocess.Popen | None = None
    log: object = None
    started: float = 0.0
    rows: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.variant}-s{self.seed}"

    @property
    def strategy(self) -> str:
        for o in self.overrides:
            if o.startswith("mining.strategy="):
                return o.split("=", 1)[1]
        return "none"


def count(minimum: int):
    """An argparse type: an int of at least ``minimum`` (``--jobs``, ``--threads``), else one usage line."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return parse


def threads_per_job(threads: int, jobs: int) -> int:
    """``--threads``, or with 0 the cores shared out among ``jobs`` processes (no oversubscription)."""
    return threads or max(1, (os.cpu_count() or 1) // jobs)


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with the OpenMP / MKL thread count of a child process set."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def size_overrides(size: int, data_cfg) -> tuple[list[str], list[str]]:
    """(recipe overrides, synthetic-generator overrides) that scale every pixel size of the recipe's
    ``data_cfg`` (training scales, test scale, long-side cap, crops) and of the generated images by
    ``size`` / 128: the demo recipe is sized for the default preset's images (112-160 px), whose
    middle training scale is 128 px. ``size`` 128 changes nothing."""
    if size == 128:
        return [], []
    r = size / 128

    def px(v: int) -> int:
        return max(8, int(round(v * r / 8) * 8))

    scales = sorted({px(s) for s in data_cfg.scales})
    crop = sorted({px(s) for s in data_cfg.crop_resize})
    recipe = [
        f"data.test_scale={px(data_cfg.test_scale)}",
        f"data.scales=[{','.join(map(str, scales))}]",
        f"data.max_size={px(data_cfg.max_size)}",
        f"data.crop_resize=[{','.join(map(str, crop))}]",
        f"data.crop_min={px(data_cfg.crop_min)}",
        f"data.crop_max={px(data_cfg.crop_max)}",
    ]
    synth = [f"image_min={px(112)}", f"image_max={px(160)}"]
    return recipe, synth


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME=KEY=VALUE[,KEY=VALUE...]`` -> (NAME, [KEY=VALUE, ...]) for ``--variant``."""
    name, _, rest = text.partition("=")
    overrides = [o.strip() for o in re.split(r",(?![^\[]*\])", rest) if o.strip()]  # keeps [a,b] whole
    if not name or not overrides or not all("=" in o for o in overrides):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...]")
    if name in STRATEGIES or name in ABLATIONS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: {name!r} is a built-in variant ("
            + (f"--strategies {name}" if name in STRATEGIES else f"--ablation {name}")
            + "); pick another name"
        )
    for o in overrides:
        key = o.split("=", 1)[0]
        if key in ("train.seed", "train.output_dir"):
            raise argparse.ArgumentTypeError(
                f"{text!r}: {key} is set by the study (--seeds / --first-seed, --out)"
            )
        if key == "train.epochs" and not o.split("=", 1)[1].isdigit():
            raise argparse.ArgumentTypeError(f"{text!r}: train.epochs must be a whole number")
    return name, overrides


def plan(args, out: Path, base: list[str]) -> list[Run]:
    variants: list[tuple[str, list[str], int]] = [
        (s, [f"mining.strategy={s}"], args.epochs) for s in dict.fromkeys(args.strategies)
    ]
    chosen = list(ABLATIONS) if args.ablations else list(dict.fromkeys(args.ablation))
    variants += [(name, ABLATIONS[name], args.epochs) for name in chosen]
    for name, ov in args.variant:  # a variant's own train.epochs is its length (a longer schedule)
        own = [o.split("=", 1)[1] for o in ov if o.startswith("train.epochs=")]
        rest = [o for o in ov if not o.startswith("train.epochs=")]
        variants.append((name, rest, int(own[-1]) if own else args.epochs))
    if args.short:
        short = max(1, int(round(args.epochs * args.short_fraction)))
        variants.append((f"{args.short}-{short}ep", [f"mining.strategy={args.short}"], short))
    names = [name for name, _, _ in variants]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice:  # two runs would train into one folder
        raise ValueError(
            f"two variants are named {twice!r} (a repeated --variant, or a --variant named like the "
            f"--short run {args.short!r} makes); give each --variant its own name"
        )
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for variant, ov, epochs in variants:
            d = out / "runs" / f"{variant}-s{seed}"
            over = base + ov + [f"train.seed={seed}", f"train.epochs={epochs}", f"train.output_dir={d}"]
            runs.append(Run(variant, seed, epochs, over, d))
    return runs


def order_key(run: Run) -> tuple:
    """The strategies in their usual order, then the other variants by name; seeds ascending."""
    order = {name: i for i, name in enumerate(STRATEGIES)}
    return (order.get(run.variant, len(order)), run.variant, run.seed)


def discover(out: Path) -> list[Run]:
    """Every run folder ``OUT/runs/<variant>-s<seed>`` that holds a ``config.yaml``, whichever call
    planned it; its strategy and length come from that config (the run's own record of what it
    trained). A folder with a config.yaml that is not named so, or whose config cannot be read, is
    skipped with one line."""
    import yaml

    runs = []
    for cfg_path in sorted((out / "runs").glob("*/config.yaml")):
        d = cfg_path.parent
        m = re.fullmatch(r"(.+)-s(\d+)", d.name)
        if not m:
            print(f"[convergence] skipped {d}: not named <variant>-s<seed>", flush=True)
            continue
        try:
            cfg = yaml.safe_load(cfg_path.read_text())
            strategy = str(cfg["mining"]["strategy"])
            epochs = int(cfg["train"]["epochs"])
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            print(f"[convergence] skipped {d}: its config.yaml is not valid YAML{at}", flush=True)
            continue
        except (KeyError, TypeError, ValueError):
            print(
                f"[convergence] skipped {d}: its config.yaml has no mining.strategy / train.epochs",
                flush=True,
            )
            continue
        runs.append(Run(m.group(1), int(m.group(2)), epochs, [f"mining.strategy={strategy}"], d))
    return sorted(runs, key=order_key)


def read_rows(run: Run, quiet: bool = False) -> list[dict]:
    """The run's evaluations from its ``results.csv``: epoch, step (int) and the metrics present
    (fractions). A row with fewer fields than the header or without a numeric epoch, step and finite
    ``mAP_full`` (a line being written while the run trains, a damaged file) is left out, with one line
    unless ``quiet``."""
    path = run.dir / "results.csv"
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                if None in row.values():  # fewer fields than the header: a line cut short
                    raise ValueError("incomplete line")
                rec = {"epoch": int(row["epoch"]), "step": int(row["step"])}
                full = float(row["mAP_full"])
                if not math.isfinite(full):
                    raise ValueError(row["mAP_full"])
            except (KeyError, TypeError, ValueError):
                if not quiet:
                    print(
                        f"[convergence] {path} line {n}: incomplete, or no numeric epoch / step / "
                        "mAP_full; left out",
                        flush=True,
                    )
                continue
            for k in METRICS:
                try:
                    v = float(row.get(k) or "nan")
                except ValueError:
                    v = math.nan
                if math.isfinite(v):
                    rec[k] = v
            rows.append(rec)
    return rows


def step_time(run: Run) -> float | None:
    """Median of the logged (smoothed) training step times of ``run``."""
    path = run.dir / "metrics.jsonl"
    if not path.is_file():
        return None
    times = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "train" and rec.get("step_time"):
                times.append(float(rec["step_time"]))
    return statistics.median(times) if times else None


def finished(run: Run) -> bool:
    """The run's ``hqm train`` ended successfully (its last evaluation is the final one)."""
    return (run.dir / DONE).is_file()


def resumable(run: Run) -> bool:
    """The run's folder has a checkpoint to continue from (else a relaunch starts it over)."""
    return (run.dir / "checkpoints").is_dir() and any((run.dir / "checkpoints").glob("*.pt"))


def launch(run: Run, config: str, threads: int) -> None:
    run.dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "hqm", "train", config, *run.overrides]
    cmd += ["--resume", "auto"] if resumable(run) else ["--overwrite"]  # our own study folder
    env = thread_env(threads)
    env.pop("PYTHONUNBUFFERED", None)
    run.log = open(run.dir.parent / f"{run.name}.log", "a")
    run.proc = subprocess.Popen(cmd, stdout=run.log, stderr=subprocess.STDOUT, env=env)
    run.started = time.time()


def steps_done(runs: list[Run]) -> int:
    """Training steps the runs' folders hold, counted at their last evaluation (epoch end); a run not
    launched yet that will start over (evaluations but no checkpoint) counts none."""
    counted = [r for r in runs if r.proc is not None or finished(r) or resumable(r)]
    return sum(rows[-1]["step"] if (rows := read_rows(r, quiet=True)) else 0 for r in counted)


def progress_line(runs: list[Run], steps_per_epoch: int, t0: float, done0: int = 0) -> str:
    """One progress line; the eta extrapolates the steps trained since ``t0`` (``done0`` were
    already in the folder then, from a study that is being resumed)."""
    total = sum(r.epochs for r in runs) * steps_per_epoch
    done = steps_done(runs)
    n_done = sum(finished(r) for r in runs)
    running = sum(r.proc is not None and r.proc.poll() is None for r in runs)
    el = time.time() - t0
    eta = f"{el / (done - done0) * (total - done) / 60:.0f} min" if done > done0 else "?"
    return (
        f"[convergence] runs {n_done}/{len(runs)} done, {running} running; "
        f"{done}/{total} steps (at epoch ends); {el / 60:.1f} min elapsed, eta {eta}"
    )


def execute(runs: list[Run], args, config: str, steps_per_epoch: int) -> None:
    todo = [r for r in runs if not finished(r)]
    print(f"[convergence] {len(runs)} runs, {len(runs) - len(todo)} already finished", flush=True)
    t0 = time.time()
    done0 = steps_done(runs)
    deadline = t0 + args.deadline_min * 60 if args.deadline_min else math.inf
    active: list[Run] = []
    failed: list[Run] = []
    last = 0.0
    while todo or active:
        for r in list(active):
            if r.proc.poll() is not None:
                active.remove(r)
                r.log.close()
                if r.proc.returncode == 0:
                    (r.dir / DONE).write_text(f"{time.time() - r.started:.1f} s\n")
                else:
                    failed.append(r)
                    print(
                        f"[convergence] {r.name} failed (exit {r.proc.returncode}); see {r.log.name}",
                        flush=True,
                    )
        if time.time() > deadline:
            for r in active:
                r.proc.send_signal(signal.SIGTERM)  # the trainer saves last.pt at the step boundary
            for r in active:
                r.proc.wait()
                r.log.close()
            print("[convergence] deadline reached: running runs interrupted (resumable), rest skipped")
            break
        while todo and len(active) < args.jobs:
            r = todo.pop(0)
            launch(r, config, args.threads)
            active.append(r)
        if time.time() - last > args.progress_every:
            print(progress_line(runs, steps_per_epoch, t0, done0), flush=True)
            last = time.time()
        time.sleep(1.0)
    print(progress_line(runs, steps_per_epoch, t0, done0), flush=True)
    if failed:
        print(f"[convergence] {len(failed)} runs failed: {', '.join(r.name for r in failed)}", flush=True)


def collect(runs: list[Run], out: Path) -> list[dict]:
    rows = []
    for r in runs:
        st = step_time(r)
        results = read_rows(r)
        if finished(r) and not results:
            print(
                f"[convergence] {r.dir / 'results.csv'}: finished run without evaluations; left out",
                flush=True,
            )
        for i, row in enumerate(results):
            # the final evaluation is the last epoch's: a finished run whose last line was left out
            # (read_rows) has no final row rather than an earlier epoch's passed off as final
            final = int(finished(r) and i == len(results) - 1 and row["epoch"] == r.epochs)
            rec = {
                "variant": r.variant,
                "strategy": r.strategy,
                "seed": r.seed,
                "epochs": r.epochs,
                "final": final,
            }
            rec["epoch"], rec["step"] = row["epoch"], row["step"]
            rec.update({k: round(100 * row[k], 3) for k in METRICS if k in row})
            rec["step_time_s"] = round(st, 4) if st is not None else ""
            rows.append(rec)
    with open(out / "convergence.csv", "w", newline="") as f:
        fields = ["variant", "strategy", "seed", "epochs", "final", "epoch", "step", *METRICS, "step_time_s"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return rows


def final_rows(rows: list[dict]) -> dict[str, dict[int, dict]]:
    """variant -> seed -> the row of its completed run's last evaluation."""
    out: dict[str, dict[int, dict]] = {}
    for row in rows:
        if row["final"]:
            out.setdefault(row["variant"], {})[row["seed"]] = row
    return out


def mean_std(values: list[float]) -> str:
    """``mean ± std``; the value alone for one seed (a std of 0.00 would claim a spread never measured)."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def unfinished_counts(runs: list[Run]) -> dict[str, int]:
    """variant -> its runs without the finished marker (training, stopped or not started)."""
    counts: dict[str, int] = {}
    for r in runs:
        if not finished(r):
            counts[r.variant] = counts.get(r.variant, 0) + 1
    return counts


def report(rows: list[dict], runs: list[Run], out: Path, header: str) -> str:
    """``convergence.md``: per variant of ``runs`` (in their order) the mean +- std over its finished
    seeds, and the paired comparison with ``none``."""
    from scipy import stats

    finals = final_rows(rows)
    variants = list(dict.fromkeys(r.variant for r in runs))
    epochs = {r.variant: r.epochs for r in runs}
    open_runs = unfinished_counts(runs)
    lines = [header, "", "| variant | epochs | seeds | Full | Rare | Non-rare | mean max recall | step (s) |"]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for v in variants:
        f = finals.get(v, {})
        cells = [mean_std([r[k] for r in f.values() if k in r]) for k in METRICS]
        st = [r["step_time_s"] for r in f.values() if r["step_time_s"] != ""]
        seeds = f"{len(f)}" + (f" (+{open_runs[v]} unfinished)" if open_runs.get(v) else "")
        lines.append(
            f"| {v} | {epochs[v]} | {seeds} | "
            + " | ".join(cells)
            + f" | {f'{statistics.median(st):.3f}' if st else '-'} |"
        )
    base = finals.get("none", {})
    lines += [
        "",
        "Paired with `none` (same seeds; mAP differences in points; step: the median step time's ratio):",
        "",
        "| variant | seeds | Full: mean ± std of the difference | seeds won | paired t-test p "
        "| Non-rare: mean ± std of the difference | step vs none |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for v in variants:
        if v == "none":
            continue
        seeds = sorted(set(finals.get(v, {})) & set(base))
        diffs = [finals[v][s]["mAP_full"] - base[s]["mAP_full"] for s in seeds]
        p = "-"
        if len(diffs) > 1 and statistics.stdev(diffs) > 0:
            a, b = [finals[v][s]["mAP_full"] for s in seeds], [base[s]["mAP_full"] for s in seeds]
            p = f"{stats.ttest_rel(a, b).pvalue:.3f}"
        won = sum(d > 0 for d in diffs)
        k = "mAP_nonrare"
        nonrare = [finals[v][s][k] - base[s][k] for s in seeds if k in finals[v][s] and k in base[s]]
        st_v = [finals[v][s]["step_time_s"] for s in seeds if finals[v][s]["step_time_s"] != ""]
        st_b = [base[s]["step_time_s"] for s in seeds if base[s]["step_time_s"] != ""]
        ratio = f"{statistics.median(st_v) / statistics.median(st_b):.2f}x" if st_v and st_b else "-"
        cells = [
            v,
            len(seeds),
            mean_std(diffs),
            f"{won}/{len(seeds)}" if seeds else "-",
            p,
            mean_std(nonrare),
            ratio,
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "convergence.md").write_text(text)
    return text


def curve_strategy(variant: str) -> str | None:
    """The strategy a strategy curve shows (a strategy or its ``--short`` run), None for other variants."""
    short = SHORT.fullmatch(variant)
    return short.group(1) if short else variant if variant in STRATEGIES else None


def panels(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """The panels of ``convergence.png`` as (title, variants), variants in the order of ``rows``: the
    strategies and their shorter schedules (the paper's Figure 3); when the study also has other
    variants (the ablations, ``--variant``), one more panel per strategy they change (in the order of
    ``STRATEGIES``), with ``none`` and that strategy beside them (where the study has them), so that
    a dozen curves are not drawn over each other. One panel when the strategies are only the
    variants' reference curves; no strategies panel when it would hold ``none`` alone."""
    strategy = {r["variant"]: r["strategy"] for r in rows}
    main = [v for v in strategy if curve_strategy(v)]
    other = [v for v in strategy if v not in main]
    if not other:
        return [("strategies", main)]
    groups = []
    for parent in sorted({strategy[o] for o in other}, key=STRATEGIES.index):
        reference = [v for v in main if v in ("none", parent)]
        title = f"variants of {parent}"
        if parent != "none" and reference:  # name only the reference curves the panel draws
            title += f", beside {' and '.join(reference)}"
        groups.append((title, reference + [o for o in other if strategy[o] == parent]))
    shown = {v for _, group in groups for v in group}
    if set(main) <= shown and len(groups) == 1:  # a first panel would only repeat the other's curves
        return [("", main + other)]
    if set(main) <= {"none"}:  # nor is a panel of none alone worth drawing
        return groups
    return [("strategies", main)] + groups


def plot(rows: list[dict], out: Path, unfinished: dict[str, int] | None = None) -> Path | None:
    """``convergence.png``: Full mAP against step per variant, one panel per group of :func:`panels`,
    two panels a row (``unfinished``: variants with runs still to finish, drawn with open markers and
    so marked in the legend); a variant has the same colour in every panel, a shorter schedule
    (``--short``) is dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        by.setdefault(r["variant"], {}).setdefault(r["step"], []).append(r["mAP_full"])
    if not by:
        return None
    groups = panels(rows)
    # a strategy has the same colour in every study (its shorter schedule too, dashed); the other
    # variants take colours none of the strategies has, then markers tell them apart
    tab10 = plt.get_cmap("tab10")
    extra = [tab10(i) for i in (6, 7, 8, 9)] + ["black", "darkgoldenrod", "navy", "magenta"]
    colour, marker, n_other = {}, {}, 0
    for v in by:
        if base := curve_strategy(v):
            colour[v], marker[v] = tab10(STRATEGIES.index(base)), "o"
        else:
            colour[v], marker[v] = extra[n_other % len(extra)], "osD^v"[n_other // len(extra) % 5]
            n_other += 1
    ncols = min(len(groups), 2)
    nrows = -(-len(groups) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(7 * ncols, 4.5 * nrows), sharey=True, squeeze=False)
    axes = axes.ravel()
    for ax in axes[len(groups) :]:
        ax.set_visible(False)  # an odd number of panels leaves one cell empty
    for i, (ax, (name, group)) in enumerate(zip(axes, groups)):
        for v in group:
            steps = by[v]
            xs = sorted(steps)
            mean = [statistics.mean(steps[x]) for x in xs]
            still = bool((unfinished or {}).get(v))
            ax.plot(
                xs,
                mean,
                marker=marker[v],
                ms=3.5,
                color=colour[v],
                mfc="white" if still else colour[v],  # open markers: runs still to finish
                label=f"{v} (n={max(len(steps[x]) for x in xs)}" + (", unfinished)" if still else ")"),
                ls="--" if SHORT.fullmatch(v) else "-",
            )
            lows, highs = [min(steps[x]) for x in xs], [max(steps[x]) for x in xs]
            ax.fill_between(xs, lows, highs, color=colour[v], alpha=0.12)
        ax.set_xlabel("training step")
        if i % ncols == 0:
            ax.set_ylabel("Full mAP (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(name, fontsize=10)
    title = "Full mAP against training step (mean over seeds; band: min-max)"
    if len(groups) > 1:
        fig.suptitle(title, fontsize=10)
    else:
        axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    path = out / "convergence.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", default="qpic_r18_synthetic", help="packaged config name or YAML path")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    ap.add_argument(
        "--ablations",
        action="store_true",
        help="also the paper's Table 4 ablations (and gbs-reference-learned)",
    )
    ap.add_argument(
        "--ablation",
        action="append",
        default=[],
        choices=list(ABLATIONS),
        metavar="NAME",
        help="also run this one of the ablations (repeatable; a name given twice runs once; --ablations "
        "runs all six): " + ", ".join(ABLATIONS),
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="NAME=KEY=VALUE[,KEY=VALUE...]",
        help="a named extra variant (repeatable), e.g. ajl-k10=mining.strategy=ajl,mining.amm.k=10",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=42, help="train.seed of the first seed (42: the demo)")
    ap.add_argument("--epochs", type=int, default=0, help="0: the config's train.epochs")
    ap.add_argument(
        "--short", default="ajl", help="strategy also trained for --short-fraction of the epochs ('' none)"
    )
    ap.add_argument("--short-fraction", type=float, default=0.6)
    ap.add_argument("--out", default="runs/convergence")
    ap.add_argument("--data", default="", help="synthetic benchmark folder (generated when absent)")
    ap.add_argument("--preset", default="default", help="synthetic preset")
    ap.add_argument(
        "--size",
        type=int,
        default=128,
        help="scale of the study: every pixel size of the recipe (training / test scales, crops, long-side "
        "cap) and of the generated images times SIZE / 128 (128: the demo as it is)",
    )
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--jobs", type=count(1), default=1, help="runs trained at once")
    ap.add_argument("--threads", type=count(0), default=0, help="CPU threads per run (0: cores / jobs)")
    ap.add_argument("--deadline-min", type=float, default=0.0, help="stop after this many minutes (0: never)")
    ap.add_argument("--progress-every", type=float, default=30.0, help="seconds between progress lines")
    ap.add_argument("--report", action="store_true", help="only collect, tabulate and plot what OUT holds")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = ap.parse_args()

    from hqm.config import load_config

    config = args.config
    if not Path(config).is_file():
        config = str(Path(hqm.__file__).parent / "configs" / f"{config.removesuffix('.yaml')}.yaml")
    cfg = load_config(config, args.overrides)
    args.epochs = args.epochs or cfg.train.epochs
    args.threads = threads_per_job(args.threads, args.jobs)
    out = Path(args.out)
    recipe, synth = size_overrides(args.size, cfg.data)
    data = Path(args.data or out / f"data-{args.preset}-{args.size}")
    base = [f"data.root={data}", f"device={args.device}", *recipe, *args.overrides]
    try:  # the command line's own faults first, whatever OUT holds
        runs = plan(args, out, base)
    except ValueError as e:
        ap.error(str(e))
    if args.report and not any((out / "runs").glob("*/config.yaml")):
        raise SystemExit(f"[convergence] --report: no run folders in {out / 'runs'}; give the study's --out")
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        from hqm.data.build import synthetic_ready
        from hqm.data.synthetic import generate

        if not synthetic_ready(data):
            t = time.time()
            generate(data, args.preset, synth)
            print(
                f"[convergence] synthetic benchmark written to {data} in {time.time() - t:.0f} s", flush=True
            )
        from hqm.data.build import split_paths

        n_train = len(json.loads(split_paths("synthetic", data, "train")[1].read_text()))
        steps_per_epoch = n_train // cfg.train.batch_size
        execute(runs, args, config, steps_per_epoch)
    every = discover(out)  # the whole study in OUT: this call's runs and earlier calls' ones
    rows = collect(every, out)
    header = (
        f"Study in {out}: every run folder in {out / 'runs'} (each run's strategy and epochs from its "
        f"config.yaml); final evaluation of each finished run, mean ± std over its seeds (%)."
    )
    print(report(rows, every, out, header))
    png = plot(rows, out, unfinished_counts(every))
    print(f"[convergence] {out / 'convergence.csv'}, {out / 'convergence.md'}" + (f", {png}" if png else ""))


if __name__ == "__main__":
    main()
