"""Run logging: console progress (rank 0), ``log.txt``, ``metrics.jsonl``, ``results.csv``, TensorBoard.

On a TTY a tqdm bar shows the whole run's eta and the smoothed losses; otherwise a log line is
written every ``log_every`` steps (and at least every 30 s) with eta, losses, lr, data time and peak
memory.
"""

from __future__ import annotations

import csv
import datetime
import json
import logging
import resource
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import torch

LOGGER = logging.getLogger("hqm")


def setup_logging(output_dir: Path | None, main_process: bool) -> None:
    """Console + ``log.txt`` handlers for the ``hqm`` logger (only rank 0 logs INFO)."""
    LOGGER.handlers.clear()
    LOGGER.setLevel(logging.INFO if main_process else logging.WARNING)
    LOGGER.propagate = False
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    LOGGER.addHandler(console)
    if output_dir is not None and main_process:
        fh = logging.FileHandler(output_dir / "log.txt")
        fh.setFormatter(fmt)
        LOGGER.addHandler(fh)
    for child in ("hqm.data", "hqm.evaluation", "hqm.mining", "hqm.zoo"):
        logging.getLogger(child).parent = LOGGER


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


class RunWriter:
    """Writes ``metrics.jsonl`` (every event) and ``results.csv`` (one row per evaluation)."""

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
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
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


class Progress:
    """Whole-run training progress (rank 0): a tqdm bar on a TTY, periodic log lines otherwise.

    ``total``: optimiser steps of the whole run; ``start``: the step the run (re)starts at. The eta is
    for the whole run (steps left x the mean step time of this process, evaluations excluded: the
    trainer pauses the clock around them with ``pause()``). Log lines come every ``log_every``
    steps, and at least every ``min_interval`` seconds so that slow runs still show life.
    """

    def __init__(
        self,
        total: int,
        start: int,
        epochs: int,
        enabled: bool,
        log_every: int,
        device: torch.device,
        min_interval: float = 30.0,
    ):
        self.total, self.start_step, self.epochs = total, start, epochs
        self.log_every = max(1, log_every)
        self.min_interval = min_interval
        self.device = device
        self.enabled = enabled
        self.busy = 0.0  # seconds spent in training steps since the (re)start
        self.t_last = time.time()
        self.t_logged = time.time()
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, leave=False
            )

    def pause(self) -> None:
        """Stop counting time (an evaluation or a checkpoint follows)."""
        self.busy += time.time() - self.t_last
        self.t_last = None

    def resume(self) -> None:
        self.t_last = time.time()

    def eta(self, step: int) -> datetime.timedelta:
        busy = self.busy + (time.time() - self.t_last if self.t_last is not None else 0.0)
        done = max(step - self.start_step, 1)
        return datetime.timedelta(seconds=int(busy / done * max(self.total - step, 0)))

    def update(self, step: int, epoch: int, meter: SmoothedMeter, lr: float) -> None:
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
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in list(short.items())[:4]}, refresh=False)
            self.bar.update(step - self.bar.n)
            return
        now = time.time()
        if step % self.log_every and step != self.total and now - self.t_logged < self.min_interval:
            return
        self.t_logged = now
        losses = " ".join(f"{k} {v:.4f}" for k, v in short.items())
        LOGGER.info(
            f"epoch {epoch + 1}/{self.epochs} step {step}/{self.total} eta {self.eta(step)} {losses} "
            f"lr {lr:.2e} data {avg.get('data_time', 0):.3f}s step {avg.get('step_time', 0):.3f}s "
            f"mem {peak_memory_mb(self.device):.0f}MB"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
