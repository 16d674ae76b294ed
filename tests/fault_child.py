"""``python tests/fault_child.py <hqm arguments>``: ``hqm`` with a fault injected from the environment,
for the slow tests of ``test_faults.py`` that need a real process (or torchrun's workers).

``HQM_FAULT``:
    ``sigkill_in_write:N``  the N-th checkpoint write writes half the file, then SIGKILLs the process;
    ``crash_once:R:S``      rank R exits with code 1 right after optimiser step S, on the first
                            attempt only (``TORCHELASTIC_RESTART_COUNT`` 0);
``HQM_TEST_THREADS``: torch threads (bitwise comparisons between processes need the same count).
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch


def _sigkill_in_write(n: int) -> None:
    from hqm.engine import checkpoint

    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < n:
            return real_save(obj, f, *args, **kwargs)
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.torch.save = save  # torch.save of this child process (only checkpoints use it)


def _crash_once(rank: int, step: int) -> None:
    from hqm.engine.trainer import Trainer

    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 or int(os.environ["RANK"]) != rank:
        return
    original = Trainer.train_step

    def train_step(self, window, active):
        result = original(self, window, active)
        if self.step + 1 == step:
            os._exit(1)
        return result

    Trainer.train_step = train_step


def main() -> int:
    if "HQM_TEST_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["HQM_TEST_THREADS"]))
    fault = os.environ.get("HQM_FAULT", "")
    if fault.startswith("sigkill_in_write:"):
        _sigkill_in_write(int(fault.split(":")[1]))
    elif fault.startswith("crash_once:"):
        _, rank, step = fault.split(":")
        _crash_once(int(rank), int(step))
    from hqm.cli import main as hqm_main

    return hqm_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
