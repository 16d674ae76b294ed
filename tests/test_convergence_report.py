"""benchmarks/convergence.py: the CSV and table cover every run folder of the study, not only the
variants of the call that writes them."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "convergence.py"


def _script():
    spec = importlib.util.spec_from_file_location("convergence_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _run_folder(out: Path, name: str, strategy: str, epochs: int, full: list[float], done: bool) -> None:
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


def test_report_gathers_every_run_folder(tmp_path):
    conv = _script()
    _run_folder(tmp_path, "none-s42", "none", 2, [0.1, 0.2], True)
    _run_folder(tmp_path, "none-s43", "none", 2, [0.1, 0.3], True)
    _run_folder(tmp_path, "ajl-s42", "ajl", 2, [0.1, 0.25], True)  # an earlier call's strategy
    _run_folder(tmp_path, "ajl-1ep-s42", "ajl", 1, [0.05], False)  # still training
    (tmp_path / "runs" / "gbs-s42").mkdir()  # launched, no config yet: not a run
    (tmp_path / "runs" / "none-s42.log").write_text("")
    found = conv.discover(tmp_path)
    assert [(r.variant, r.seed, r.strategy, r.epochs) for r in found] == [
        ("none", 42, "none", 2),
        ("none", 43, "none", 2),
        ("ajl", 42, "ajl", 2),
        ("ajl-1ep", 42, "ajl", 1),
    ]
    rows = conv.collect(found, tmp_path)
    with open(tmp_path / "convergence.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows) == 7
    table = conv.report(rows, tmp_path, "header")
    assert "| none | 2 | 25.00 ± 7.07 |" in table
    assert "| ajl | 1 | 25.00 ± 0.00 |" in table
    assert "| ajl-1ep | 0 |" in table  # unfinished: no final row
    assert "| ajl | 1 | 5.00 ± 0.00 | 1/1 |" in table  # paired with none at seed 42: 25 - 20
