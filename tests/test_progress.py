"""Progress and units: log lines every N units or every 30 s, whichever comes first (a fake clock, no
sleeping); the training eta is for the whole run; evaluation and synthetic generation report progress
without a terminal; tables say their unit."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.engine.logging import SmoothedMeter, TrainProgress
from hqm.evaluation import format_table
from hqm.progress import Progress, track


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines():
    """Messages logged to a private logger (the ``logger`` argument of the progress classes)."""
    seen: list[str] = []
    logger = logging.getLogger("test.progress")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    yield logger, seen
    logger.removeHandler(handler)


def run(progress: Progress, clock: Clock, n: int, seconds_per_unit: float) -> list[int]:
    logged = []
    for i in range(progress.start + 1, progress.start + n + 1):
        clock.now += seconds_per_unit
        before = progress.t_logged
        progress.update(i)
        if progress.t_logged != before:
            logged.append(i)
    return logged


def test_lines_every_n_units_or_every_30_seconds_whichever_first(lines):
    logger, seen = lines
    clock = Clock()
    fast = Progress(12, "fast", "steps", every=5, logger=logger, clock=clock)
    assert run(fast, clock, 12, 1.0) == [5, 10, 12]  # N steps first; the last step always
    slow = Progress(7, "slow", "steps", every=100, logger=logger, clock=clock)
    assert run(slow, clock, 7, 20.0) == [2, 4, 6, 7]  # 30 s first
    assert seen[-1].startswith("slow: 7/7 steps (") and seen[-1].endswith(" steps/s), eta 0:00:00")


def test_eta_is_for_the_whole_run_and_excludes_pauses(lines):
    logger, _ = lines
    clock = Clock()
    # 3 epochs of 4 steps, resumed at step 2: the eta after step 6 is the 6 steps left of the run
    progress = TrainProgress(12, 2, 3, True, 100, torch.device("cpu"), logger=logger, clock=clock)
    run(progress, clock, 2, 2.0)
    progress.pause()
    clock.now += 500.0  # an evaluation: not a training step
    progress.resume()
    run(progress, clock, 2, 2.0)
    assert progress.eta(6).total_seconds() == 6 * 2.0


def test_training_line_has_epoch_eta_losses_and_lr(lines):
    logger, seen = lines
    clock = Clock()
    progress = TrainProgress(12, 0, 3, True, 4, torch.device("cpu"), logger=logger, clock=clock)
    meter = SmoothedMeter()
    meter.update(loss=1.5, loss_verb_ce=0.5, loss_verb_ce_0=9.0, data_time=0.01, step_time=1.0)
    for step in range(1, 5):
        clock.now += 1.0
        progress.step_done(step, 0 if step < 4 else 1, meter, 1e-4)
    (line,) = seen
    assert line.startswith("epoch 2/3 step 4/12 eta 0:00:08 loss 1.5000 verb_ce 0.5000 lr 1.00e-04")
    assert "verb_ce_0" not in line  # per-layer auxiliary terms stay out of the line


def test_track_ends_with_a_summary_and_stays_quiet_when_disabled(lines):
    logger, seen = lines
    assert list(track(range(3), 3, "evaluate", "batches", logger=logger)) == [0, 1, 2]
    assert seen[-1].startswith("evaluate: 3/3 batches in ")
    for i in track(range(10), 10, "evaluate", "batches", logger=logger):
        if i == 1:  # an evaluation stopped by SIGTERM before its second batch
            break
    assert seen[-1].startswith("evaluate: 1/10 batches in ") and seen[-1].endswith(" (stopped)")
    n = len(seen)
    assert list(track(range(3), 3, "x", enabled=False, logger=logger)) == [0, 1, 2] and len(seen) == n


def test_evaluation_inside_train_and_generation_show_progress(tiny_root, tmp_path, capsys):
    """Without a terminal (pytest's captured stderr), the log of `hqm train` and of `hqm synth` has
    progress lines; a run shorter than train.log_every still logs its last step."""
    args = [
        "train",
        "qpic_r18_synthetic",
        *TINY_OVERRIDES,
        *TINY_DATA_64,
        f"data.root={tiny_root}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.log_every=100",
        "--json",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert re.search(r"\] epoch 1/\d+ step 2/2 eta 0:00:00 loss ", captured.err)  # whole run: 2 steps
    assert re.search(r"\] evaluate: (\d+)/\1 batches in ", captured.err)
    # the same metric: a fraction in the JSON, percent in the logged table
    metrics = json.loads(captured.out.strip().splitlines()[-1])
    (row,) = [line.split() for line in captured.err.splitlines() if line.startswith("mAP_full ")]
    assert row[1:] == [f"{100 * metrics['mAP_full']:.2f}", "%"]
    torch.set_grad_enabled(True)
    synth = ["synth", "--out", str(tmp_path / "s"), "--preset", "tiny", "train_size=3", "test_size=2"]
    assert main(synth) == 0
    err = capsys.readouterr().err
    assert "synthetic train images: 3/3 images in " in err and "synthetic test images: 2/2 images in " in err


def test_tables_state_their_unit():
    table = format_table({"mAP_full": 0.1234, "mean_max_recall": 0.5, "images": 8.0})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert table.splitlines()[0].split() == ["metric", "value", "unit"]
    assert rows == {"mAP_full": ["12.34", "%"], "mean_max_recall": ["50.00", "%"], "images": ["8"]}


def test_console_and_log_name_the_level_of_warnings_only(tmp_path, capsys):
    """``[HH:MM:SS] message`` for INFO; ``[HH:MM:SS] WARNING: message`` for warnings (and errors), in
    the console and in log.txt, so that a warning stands out among the training's INFO lines."""
    import logging

    from hqm.engine.logging import LOGGER, setup_logging

    setup_logging(tmp_path, main_process=True)
    try:
        logging.getLogger("hqm.zoo").info("plain line")
        logging.getLogger("hqm.zoo").warning("loud line")
    finally:
        for h in LOGGER.handlers:
            h.close()
        LOGGER.handlers.clear()
    err = capsys.readouterr().err
    text = (tmp_path / "log.txt").read_text()
    for out in (err, text):
        assert re.search(r"^\[\d\d:\d\d:\d\d\] plain line$", out, re.M)
        assert re.search(r"^\[\d\d:\d\d:\d\d\] WARNING: loud line$", out, re.M)
