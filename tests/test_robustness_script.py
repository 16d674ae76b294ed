"""benchmarks/robustness.py: which checkpoints of a study folder a variant evaluates."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


def _script():
    sys.path.insert(0, str(SCRIPT.parent))  # it imports convergence.py beside it
    try:
        spec = importlib.util.spec_from_file_location("robustness_script", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_a_variant_takes_only_its_own_finished_runs(tmp_path):
    """`--variants ajl` took the runs of `ajl-select-random` too (a glob on `ajl-s*`): its table
    then showed 9 seeds of a mixture. Only <variant>-s<seed> folders that finished count."""
    rob = _script()
    for name, done in [
        ("ajl-s42", True),
        ("ajl-s43", False),  # still training
        ("ajl-select-random-s42", True),
        ("ajl-s44-old", True),
        ("none-s42", True),
    ]:
        d = tmp_path / "runs" / name
        (d / "checkpoints").mkdir(parents=True)
        (d / "checkpoints" / "last.pt").write_bytes(b"")
        if done:
            (d / rob.DONE).write_text("")
    args = argparse.Namespace(study=str(tmp_path), variants=["ajl"], checkpoint=[])
    assert rob.find_checkpoints(args) == [("ajl", 42, str(tmp_path / "runs/ajl-s42/checkpoints/last.pt"))]
