"""benchmarks/convergence.py: the CSV and table cover every run folder of the study, not only the
variants of the call that writes them."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence.py"


def _script():
    spec = importlib.util.spec_from_file_location("convergence_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run_folder(
    out: Path, name: str, strategy: str, epochs: int, full: list[float], done: bool, step: float = 0.0
) -> None:
    d = out / "runs" / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        yaml.safe_dump({"mining": {"strategy": strategy}, "train": {"epochs": epochs}})
    )
    with open(d / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "step", "mAP_full", "mAP_rare", "mAP_nonrare", "mean_max_recall"])
        for e, v in enumerate(full, start=1):
            w.writerow([e, 250 * e, v, 0.0, v, 0.5])
    if done:
        (d / "study_run_finished").write_text("")
    if step:  # the trainer's metrics.jsonl: the logged step times, and a line of another kind
        lines = [{"kind": "train", "step_time": step}, {"kind": "train", "step_time": step}, {"kind": "eval"}]
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_report_gathers_every_run_folder(tmp_path, capsys):
    conv = _script()
    _run_folder(tmp_path, "ajl-s42", "ajl", 2, [0.1, 0.25], True, step=0.25)
    _run_folder(tmp_path, "none-s43", "none", 2, [0.1, 0.3], True)
    _run_folder(tmp_path, "none-s42", "none", 2, [0.1, 0.2], True, step=0.2)
    _run_folder(tmp_path, "ajl-1ep-s42", "ajl", 1, [0.05], False)  # still training
    (tmp_path / "runs" / "gbs-s42").mkdir()  # launched, no config yet: not a run
    (tmp_path / "runs" / "none-s42.log").write_text("")
    found = conv.discover(tmp_path)
    assert [(r.variant, r.seed, r.strategy, r.epochs) for r in found] == [
        ("none", 42, "none", 2),  # the strategies first, in their usual order
        ("none", 43, "none", 2),
        ("ajl", 42, "ajl", 2),
        ("ajl-1ep", 42, "ajl", 1),
    ]
    rows = conv.collect(found, tmp_path)
    with open(tmp_path / "convergence.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 7
    table = conv.report(rows, found, tmp_path, "header")
    assert "| none | 2 | 2 | 25.00 ± 7.07 |" in table
    assert "| ajl | 2 | 1 | 25.00 |" in table
    assert "| ajl-1ep | 1 | 0 (+1 unfinished) | - |" in table
    # paired with none at seed 42: Full 25 - 20, non-rare (here = Full) too, step 0.25 / 0.2 s
    assert "| ajl | 1 | 5.00 | 1/1 | - | 5.00 | 1.25x |" in table
    assert capsys.readouterr().out == ""


def test_bad_run_folders_and_rows_are_left_out_with_one_line(tmp_path, capsys):
    conv = _script()
    _run_folder(tmp_path, "none-s42", "none", 3, [0.1, 0.2, 0.3], True)
    results = tmp_path / "runs" / "none-s42" / "results.csv"
    lines = results.read_text().splitlines()
    lines[2] = "2,500,nan,0.0,nan,0.5"  # a non-finite mAP
    results.write_text("\n".join(lines) + "\n8,2000,0.1")  # a line still being written
    for name, text in [("gbs-s42", ""), ("amm-s42", "mining: [unclosed"), ("foo", "train: {epochs: 1}")]:
        (tmp_path / "runs" / name).mkdir()
        (tmp_path / "runs" / name / "config.yaml").write_text(text)
    found = conv.discover(tmp_path)
    assert [r.name for r in found] == ["none-s42"]
    rows = conv.read_rows(found[0])
    assert [(r["epoch"], r["mAP_full"]) for r in rows] == [(1, 0.1), (3, 0.3)]
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5
    assert any("gbs-s42: its config.yaml has no mining.strategy / train.epochs" in o for o in out)
    assert any("amm-s42: its config.yaml is not valid YAML (line 1)" in o for o in out)
    assert any("foo: not named <variant>-s<seed>" in o for o in out)
    assert sum("results.csv line" in o and "left out" in o for o in out) == 2
    results.write_text("\n".join(lines[:3]))  # the last epoch's line lost: no final row
    assert not any(row["final"] for row in conv.collect(found, tmp_path))


def test_progress_eta_of_a_resumed_study_counts_only_the_steps_trained_since(tmp_path, monkeypatch):
    conv = _script()
    _run_folder(tmp_path, "none-s42", "none", 2, [0.1, 0.2], True)  # finished before the resume
    _run_folder(tmp_path, "ajl-s42", "ajl", 2, [0.1], False)  # one epoch trained since
    runs = conv.discover(tmp_path)
    # not launched and without a checkpoint, ajl-s42 will start over: its epoch is not progress
    assert conv.steps_done(runs) == 500
    ajl = next(r for r in runs if r.variant == "ajl")
    ajl.proc = types.SimpleNamespace(poll=lambda: None)  # launched (running)
    monkeypatch.setattr(conv.time, "time", lambda: 600.0)  # 10 min after t0 = 0
    line = conv.progress_line(runs, 250, 0.0, done0=500)
    # 250 steps in 10 min, 250 left: 10 min more (counting the finished run's 500 would say 3)
    assert "1 running; 750/1000 steps" in line and "eta 10 min" in line
    assert "eta ?" in conv.progress_line(runs, 250, 0.0, done0=750)
    ajl.proc = None
    (ajl.dir / "checkpoints").mkdir()
    (ajl.dir / "checkpoints" / "last.pt").write_bytes(b"")  # resumable: its epoch counts
    assert conv.steps_done(runs) == 750


def test_report_says_so_for_an_empty_study_and_a_finished_run_without_evaluations(tmp_path, capsys):
    conv = _script()
    _run_folder(tmp_path, "none-s42", "none", 2, [], True)  # finished, results.csv holds no rows
    rows = conv.collect(conv.discover(tmp_path), tmp_path)
    assert rows == []
    assert "none-s42/results.csv: finished run without evaluations; left out" in capsys.readouterr().out
    empty = tmp_path / "missing"
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--report", "--out", str(empty)], capture_output=True, text=True
    )
    assert res.returncode != 0 and "no run folders in" in res.stderr and not empty.exists()


def test_jobs_and_threads_refuse_counts_below_their_minimum():
    import argparse

    import pytest

    conv = _script()
    assert conv.count(0)("0") == 0 and conv.count(1)("3") == 3
    for parse, text in [(conv.count(0), "-1"), (conv.count(1), "0"), (conv.count(0), "two")]:
        with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
            parse(text)


def test_plot_puts_the_variants_of_each_strategy_in_a_panel_beside_none_and_that_strategy(tmp_path):
    mod = _script()
    names = [
        ("none", "none"),
        ("gbs", "gbs"),
        ("amm", "amm"),
        ("ajl", "ajl"),
        ("ajl-6ep", "ajl"),
        ("gbs-shift-none", "gbs"),
        ("amm-select-random", "amm"),
        ("gbs-shift-gaussian", "gbs"),
    ]
    rows = [{"variant": v, "strategy": s, "step": 250, "mAP_full": 1.0} for v, s in names]
    assert mod.panels(rows) == [
        ("strategies", ["none", "gbs", "amm", "ajl", "ajl-6ep"]),
        ("variants of gbs, beside none and gbs", ["none", "gbs", "gbs-shift-none", "gbs-shift-gaussian"]),
        ("variants of amm, beside none and amm", ["none", "amm", "amm-select-random"]),
    ]
    strategies_only = rows[:5]
    assert mod.panels(strategies_only) == [("strategies", ["none", "gbs", "amm", "ajl", "ajl-6ep"])]
    # a study of named variants alone has one panel, not an empty first one; nor has one whose
    # strategies are only the other panels' reference curves
    assert mod.panels([{"variant": "ajl-k10", "strategy": "ajl"}]) == [("", ["ajl-k10"])]
    assert mod.panels([rows[0], rows[2], rows[6]]) == [("", ["none", "amm", "amm-select-random"])]
    assert [t for t, _ in mod.panels([rows[0], rows[5], rows[6]])] == [
        "variants of gbs, beside none",  # gbs and amm themselves are not in this study
        "variants of amm, beside none",
    ]
    # strategies beside variants of two of them keep their own panel
    assert [t for t, _ in mod.panels(rows[:3] + rows[5:7])] == [
        "strategies",
        "variants of gbs, beside none and gbs",
        "variants of amm, beside none and amm",
    ]
    baseline = mod.panels([rows[0], {"variant": "none-lr2", "strategy": "none"}])
    assert baseline == [("", ["none", "none-lr2"])]
    assert mod.panels([rows[0], rows[1], {"variant": "none-lr2", "strategy": "none"}])[1] == (
        "variants of none",
        ["none", "none-lr2"],
    )

    from PIL import Image

    one = Image.open(mod.plot(strategies_only, tmp_path)).size
    two = Image.open(mod.plot(rows[:6], tmp_path)).size
    three = Image.open(mod.plot(rows, tmp_path)).size
    assert two[0] > 1.8 * one[0] and two[1] == one[1]  # two panels side by side
    assert three[0] == two[0] and three[1] > 1.8 * two[1]  # three: two rows of two


def test_ablation_picks_some_of_the_ablations_and_a_built_in_name_is_refused_as_a_variant(tmp_path):
    import argparse

    mod = _script()
    args = argparse.Namespace(
        strategies=["none"],
        ablations=False,
        ablation=["amm-target-learnable", "gbs-shift-none", "amm-target-learnable"],
        variant=[],
        short="",
        short_fraction=0.6,
        epochs=2,
        seeds=2,
        first_seed=42,
    )
    runs = mod.plan(args, tmp_path, [])
    assert [(r.variant, r.seed) for r in runs] == [
        (v, s) for s in (42, 43) for v in ("none", "amm-target-learnable", "gbs-shift-none")
    ]
    target = next(r for r in runs if r.variant == "amm-target-learnable")
    assert "mining.amm.target=learnable" in target.overrides and "mining.strategy=amm" in target.overrides
    args.ablations = True
    assert len(mod.plan(args, tmp_path, [])) == 2 * (1 + len(mod.ABLATIONS))
    args.strategies = ["none", "ajl", "none"]  # a strategy given twice runs once
    assert [r.variant for r in mod.plan(args, tmp_path, [])][:2] == ["none", "ajl"]

    # two runs in one folder: a --variant named like the --short run, or a repeated --variant
    clash = mod.parse_variant("ajl-6ep=mining.strategy=ajl,mining.beta=0.8")
    for extra in (dict(short="ajl", epochs=10, variant=[clash]), dict(variant=[clash, clash])):
        bad = argparse.Namespace(**{**vars(args), **extra})
        with pytest.raises(ValueError, match="two variants are named 'ajl-6ep'"):
            mod.plan(bad, tmp_path, [])

    clash = ["--variant", "ajl-6ep=mining.strategy=ajl", "--report", "--out", str(tmp_path / "empty")]
    out = subprocess.run([sys.executable, str(SCRIPT), *clash], capture_output=True, text=True)
    assert out.returncode == 2 and "two variants are named 'ajl-6ep'" in out.stderr  # even with no runs yet
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--variant", "gbs-shift-none=mining.strategy=gbs", "--report"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "--ablation gbs-shift-none" in out.stderr
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--ablation", "amm-nothing", "--report"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "invalid choice: 'amm-nothing'" in out.stderr
