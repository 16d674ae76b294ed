"""Run logging: console progress (rank 0), ``log.txt``, ``metrics.jsonl``, ``results.csv``, TensorBoard.

Training progress (:class:`TrainProgress`, built on ``hqm.progress.Progress``): on a TTY a tqdm bar
with the whole run's eta and the smoothed losses; otherwise a log line every ``log_every`` steps (and
at least every 30 s) with eta, losses, lr, data time and peak memory.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import resource
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import torch

from hqm.progress import Progress

LOGGER = logging.getLogger("hqm")


class _Formatter(logging.Formatter):
    """``[HH:MM:SS] message``; warnings and errors also name their level, so that they stand out
    among the INFO lines."""

    def __init__(self) -> None:
        super().__init__("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
        self._loud = logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.WARNING:
            return self._loud.format(record)
        return super().format(record)


def setup_logging(output_dir: Path | None, main_process: bool) -> None:
    """Console + ``log.txt`` handlers for the ``hqm`` logger (only rank 0 logs INFO)."""
    LOGGER.handlers.clear()
    LOGGER.setLevel(logging.INFO if main_process else logging.WARNING)
    LOGGER.propagate = False
    fmt = _Formatter()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    LOGGER.addHandler(console)
    if output_dir is not None and main_process:
        fh = logging.FileHandler(output_dir / "log.txt")
        fh.setFormatter(fmt)
        LOGGER.addHandler(fh)
    for child in ("hqm.data", "hqm.evaluation", "hqm.mining", "hqm.zoo"):
        logging.getLogger(child).parent = LOGGER


def close_log_file() -> None:
    """Detach and close the ``log.txt`` handler (before a refused run's folder is cleaned up)."""
    for handler in [h for h in LOGGER.handlers if isinstance(h, logging.FileHandler)]:
        LOGGER.removeHandler(handler)
        handler.close()


def record_failure(message: str) -> None:
    """Append a command's one-line refusal to the run's ``log.txt`` (when a run set one up), so that
    the folder a failed ``hqm train`` leaves says why; the console already printed it."""
    record = logging.makeLogRecord({"name": LOGGER.name, "levelno": logging.ERROR, "levelname": "ERROR"})
    record.msg = message
    for handler in LOGGER.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the process's peak resident set size (MiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SmoothedMeter:
    """Running medians/averages of scalar logs over a window."""

    def __init__(self, window: int = 20):
        self.values: dict[str, deque] = defaultdict(lambda: deque(maxlen=window))

    def update(self, **kwargs: float) -> None:
        for k, v in kwargs.items():
            self.values[k].append(float(v))

    def avg(self, key: str) -> float:
        v = self.values.get(key)
        return sum(v) / len(v) if v else 0.0

    def averages(self) -> dict[str, float]:
        return {k: self.avg(k) for k in self.values}

    def forget(self, prefixes: tuple[str, ...]) -> None:
        """Drops the keys starting with one of ``prefixes`` (terms that stop arriving, such as the hard
        queries' losses after ``mining.epochs``, would otherwise be shown frozen)."""
        for k in [k for k in self.values if k.startswith(prefixes)]:
            del self.values[k]


class RunWriter:
    """Writes ``metrics.jsonl`` (every event; strict JSON, a non-finite number written as ``null``) and
    ``results.csv`` (one row per evaluation)."""

    def __init__(self, output_dir: Path | None, enabled: bool):
        self.enabled = enabled and output_dir is not None
        self.dir = output_dir
        self.tb = None
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(output_dir / "tensorboard"))
            except Exception:  # tensorboard is an optional extra
                self.tb = None

    def log(self, kind: str, step: int, epoch: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": step, "epoch": epoch, "time": time.time(), **values}
        # strict JSON: a non-finite number (mAP_nonrare without non-rare classes, a NaN loss) is null
        rec = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec, allow_nan=False) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def result(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        path = self.dir / "results.csv"
        row = {"epoch": epoch, "step": step, **{k: round(v, 6) for k, v in metrics.items()}}
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class TrainProgress(Progress):
    """Whole-run training progress (rank 0): a :class:`hqm.progress.Progress` over the optimiser
    steps of the whole run whose line carries the epoch, the smoothed losses, lr, data / step time
    and peak memory.

    ``total``: optimiser steps of the whole run; ``start``: the step the run (re)starts at. The eta is
    for the whole run, not the epoch (steps left x the mean step time of this process; the trainer
    pauses the clock around evaluations and checkpoints). A line every ``log_every`` steps, and at
    least every ``interval`` seconds so that slow runs still show life."""

    def __init__(
        self,
        total: int,
        start: int,
        epochs: int,
        enabled: bool,
        log_every: int,
        device: torch.device,
        interval: float = 30.0,
        **kwargs: Any,
    ):
        super().__init__(total, "train", "step", start, enabled, max(1, log_every), interval, **kwargs)
        self.epochs, self.device = epochs, device

    def step_done(self, step: int, epoch: int, meter: SmoothedMeter, lr: float) -> None:
        """After optimiser step ``step`` (1-based count of steps done) of epoch ``epoch`` (0-based)."""
        if not self.enabled:
            return
        avg = meter.averages()
        # total and last-layer terms (per query group); per-layer aux terms end in a digit
        short = {
            k.replace("loss_", ""): v
            for k, v in avg.items()
            if k.split("/")[-1].startswith("loss") and not k[-1].isdigit()
        }

        def line() -> str:
            losses = " ".join(f"{k} {v:.4f}" for k, v in short.items())
            return (
                f"epoch {epoch + 1}/{self.epochs} step {step}/{self.total} eta {self.eta(step)} {losses} "
                f"lr {lr:.2e} data {avg.get('data_time', 0):.3f}s step {avg.get('step_time', 0):.3f}s "
                f"mem {peak_memory_mb(self.device):.0f}MiB"
            )

        postfix = {k: f"{v:.3f}" for k, v in list(short.items())[:4]}
        self.update(step, line, desc=f"epoch {epoch + 1}/{self.epochs}", postfix=postfix)
