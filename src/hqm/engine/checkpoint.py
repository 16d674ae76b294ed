"""Checkpoints as plain data (loadable with ``torch.load(weights_only=True)``), written atomically.

A checkpoint holds ``model`` (state dict), ``optimizer``, ``scheduler``, ``scaler``, ``epoch``,
``step``, ``config`` (plain dict), ``meta`` (dataset vocabulary), ``rng`` (torch / numpy / python
states, so a resumed run continues the same random stream; ``rng_per_rank`` under DDP), ``metrics``
and ``version``.

Folder layout written by ``CheckpointManager`` (``<output_dir>/checkpoints/``):

* ``last.pt``: every epoch end, every ``train.checkpoint_every_steps`` steps and after evaluations;
* ``best.pt``: the best validation metric so far;
* ``step_XXXXXXX.pt`` (global step, 7 digits): with ``train.keep_last = k >= 2``, a copy of every
  ``last.pt`` written (a hard link when the file system allows it: no extra disk), of which only the
  ``k`` newest are kept. ``k <= 1``: ``last.pt`` alone.

``resolve_resume`` turns ``--resume`` into a file: a checkpoint path, a run folder (its
``checkpoints/last.pt``) or ``auto`` (this run's ``last.pt`` if one exists, else a fresh start).
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hqm import __version__


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": _to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x: Any) -> Any:
    return [_to_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save({**state, "version": __version__}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


_STEP_FILE = re.compile(r"^step_(\d{7,})\.pt$")


class CheckpointManager:
    """Writes ``last.pt`` / ``best.pt`` / step-stamped copies into ``folder`` (only when ``enabled``,
    i.e. on rank 0) and prunes the step copies to the ``keep_last`` newest."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 1, enabled: bool = True):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.enabled = enabled
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)

    def step_files(self) -> list[Path]:
        """Step-stamped checkpoints, oldest first."""
        found = [
            (int(m.group(1)), f) for f in self.folder.glob("step_*.pt") if (m := _STEP_FILE.match(f.name))
        ]
        return [f for _, f in sorted(found)]

    def save_last(self, state: dict[str, Any], step: int) -> Path | None:
        if not self.enabled:
            return None
        last = self.folder / "last.pt"
        save_checkpoint(last, state)
        if self.keep_last >= 2:
            stamped = self.folder / f"step_{step:07d}.pt"
            tmp = stamped.with_name(f".{stamped.name}.tmp{os.getpid()}")
            try:
                os.link(last, tmp)
            except OSError:  # no hard links here (e.g. some network file systems): copy
                shutil.copyfile(last, tmp)
            os.replace(tmp, stamped)
            for old in self.step_files()[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return last

    def save_best(self, state: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        save_checkpoint(self.folder / "best.pt", state)
        return self.folder / "best.pt"


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> str | None:
    """``--resume`` value -> checkpoint file (or None for a fresh start).

    ``auto``: ``<output_dir>/checkpoints/last.pt`` when it exists, else None. A folder: its
    ``checkpoints/last.pt`` (a run folder) or its ``last.pt`` (a checkpoints folder)."""
    if not resume:
        return None
    if resume == "auto":
        last = Path(output_dir) / "checkpoints" / "last.pt"
        return str(last) if last.is_file() else None
    p = Path(resume)
    if p.is_dir():
        for cand in (p / "checkpoints" / "last.pt", p / "last.pt"):
            if cand.is_file():
                return str(cand)
        raise FileNotFoundError(f"--resume {resume}: no checkpoints/last.pt or last.pt in that folder")
    if not p.is_file():
        raise FileNotFoundError(f"--resume {resume}: checkpoint not found")
    return str(p)
