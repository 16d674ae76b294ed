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

Every write is atomic and durable (``save_checkpoint``): a killed or failed write leaves the previous
file intact and at most a temporary ``.<name>.tmp<pid>``, which the next start removes
(``CheckpointManager``). A full or read-only disk raises ``OutputError`` naming the file.

``resolve_resume`` turns ``--resume`` into a loaded checkpoint: a checkpoint path, a run folder or
``auto`` (this run's newest *valid* checkpoint: ``last.pt``, else the newest readable ``step_*.pt``,
each unreadable one skipped with a warning; a fresh start when the run has none).
"""

from __future__ import annotations

import logging
import os
import random
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hqm import __version__
from hqm.engine.resume_policy import ResumeError
from hqm.errors import NotFoundError, output_error, write_fault
from hqm.output import replacing, temp_path
from hqm.zoo.safe_load import CheckpointError, safe_torch_load


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
    """Write ``state`` to ``path`` atomically and durably: a temporary file in the same folder
    (``.<name>.tmp<pid>``), flushed to the disk (``fsync``), then renamed over ``path``. A write that
    fails or is killed never leaves a truncated ``path``: the previous file stays intact.

    Raises :class:`~hqm.errors.OutputError` naming the file when the disk refuses the write (full,
    read-only, quota, permission); the temporary file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # a Python file: the disk's errno survives torch's zip writer
        with replacing(path, durable=True) as f:
            torch.save({**state, "version": __version__}, f)
    except Exception as e:
        if write_fault(e):
            intact = f"the previous {path.name} is intact" if path.is_file() else ""
            raise output_error(path, e, "write the checkpoint", intact) from None
        raise


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (``torch.load(weights_only=True)``, see
    ``hqm.zoo.safe_load``). Raises ``NotFoundError`` for a missing file and
    ``CheckpointError`` for one that is empty, truncated, damaged or not a checkpoint."""
    return safe_torch_load(path, map_location)


#: what ``--resume`` needs from a checkpoint (an ``hqm train`` one; weights files lack most)
TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "config", "meta", "rng")


def read_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint to resume from: loaded and checked for every entry in :data:`TRAINING_KEYS`.

    Raises ``CheckpointError`` when the file is unreadable and :class:`ResumeError` (a usage error)
    when it holds weights without a training state (released weights, ``hqm convert`` output,
    ``best.pt`` of an older version...), saying how to use them instead."""
    ckpt = load_checkpoint(path, "cpu")
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ResumeError(
            f"--resume {path}: the file holds no training state to resume (no {', '.join(missing[:4])}"
            f"{', ...' if len(missing) > 4 else ''}): these are weights, not a checkpoint written by hqm "
            f"train. Resume from a run's checkpoints/last.pt, or start a new run from these weights "
            f"with model.pretrained={path}"
        )
    return ckpt


_STEP_FILE = re.compile(r"^step_(\d{7,})\.pt$")
#: temporary files of a write that never finished (``save_checkpoint``, ``CheckpointManager``)
_STALE_TMP = re.compile(r"^\.(last|best|step_\d{7,})\.pt\.tmp\d+$")


def is_run_checkpoint_name(name: str) -> bool:
    """True for the names a run writes into its ``checkpoints/`` folder: ``last.pt``, ``best.pt``,
    ``step_NNNNNNN.pt`` and the temporary files of a write that never finished."""
    return name in ("last.pt", "best.pt") or bool(_STEP_FILE.match(name) or _STALE_TMP.match(name))


class CheckpointManager:
    """Writes ``last.pt`` / ``best.pt`` / step-stamped copies into ``folder`` (only when ``enabled``,
    i.e. on rank 0) and prunes the step copies to the ``keep_last`` newest.

    On creation (rank 0, which holds the run directory's lock, so no other writer is alive) it
    removes the temporary files that a killed write left behind (``.last.pt.tmp<pid>``, ...); the
    names removed are in ``self.removed_stale``."""

    def __init__(self, folder: str | os.PathLike, keep_last: int = 1, enabled: bool = True):
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.enabled = enabled
        self.removed_stale: list[str] = []
        if enabled:
            self.folder.mkdir(parents=True, exist_ok=True)
            for f in sorted(self.folder.iterdir()):
                if _STALE_TMP.match(f.name) and f.is_file():
                    f.unlink()
                    self.removed_stale.append(f.name)

    def step_files(self) -> list[Path]:
        """Step-stamped checkpoints, oldest first."""
        return step_files(self.folder)

    def save_last(self, state: dict[str, Any], step: int) -> Path | None:
        if not self.enabled:
            return None
        last = self.folder / "last.pt"
        save_checkpoint(last, state)
        if self.keep_last >= 2:
            stamped = self.folder / f"step_{step:07d}.pt"
            tmp = temp_path(stamped)
            try:
                try:
                    os.link(last, tmp)
                except OSError:  # no hard links here (e.g. some network file systems): copy
                    shutil.copyfile(last, tmp)
                os.replace(tmp, stamped)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                if write_fault(e):
                    raise output_error(stamped, e, "write the checkpoint copy") from None
                raise
            for old in self.step_files()[: -self.keep_last]:
                old.unlink(missing_ok=True)
        return last

    def save_best(self, state: dict[str, Any]) -> Path | None:
        if not self.enabled:
            return None
        save_checkpoint(self.folder / "best.pt", state)
        return self.folder / "best.pt"


def step_files(folder: str | os.PathLike) -> list[Path]:
    """The step-stamped checkpoints ``step_XXXXXXX.pt`` in ``folder``, oldest (lowest step) first."""
    found = [(int(m.group(1)), f) for f in Path(folder).glob("step_*.pt") if (m := _STEP_FILE.match(f.name))]
    return [f for _, f in sorted(found)]


def resume_candidates(folder: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run's ``checkpoints/`` folder to resume from, newest first: ``last.pt`` (the
    newest: every step copy is a copy of it), then ``step_*.pt`` from the highest step down."""
    folder = Path(folder)
    last = [folder / "last.pt"] if (folder / "last.pt").is_file() else []
    return last + step_files(folder)[::-1]


def newest_valid_checkpoint(folder: str | os.PathLike) -> tuple[str, dict[str, Any]] | None:
    """(path, loaded state) of the newest checkpoint in ``folder`` that can be resumed from, or None
    when it holds none. A file that cannot be read, or holds no training state, is skipped with a
    warning (logger ``hqm``) naming it and why."""
    for path in resume_candidates(folder):
        try:
            return str(path), read_training_state(path)
        except (CheckpointError, ResumeError) as e:
            logging.getLogger("hqm").warning(f"skipping {path}: {e}")
    return None


def resolve_resume(
    resume: str | None, output_dir: str | os.PathLike
) -> tuple[str, dict[str, Any]] | tuple[None, None]:
    """``--resume`` value -> (checkpoint file, its loaded state), or (None, None) for a fresh start.

    * ``auto``: the newest valid checkpoint of ``<output_dir>/checkpoints/`` (see
      :func:`newest_valid_checkpoint`: ``last.pt``, else the newest readable ``step_*.pt``), or a
      fresh start when there is none;
    * a run folder (``RUN`` or ``RUN/checkpoints``): its newest valid checkpoint, an error when none
      and when ``RUN`` is not ``output_dir`` (the run would continue in another folder);
    * a file: that file, an error when it is unreadable (no fallback: the user named it).

    Raises ``NotFoundError`` / ``ResumeError`` (usage errors) and ``CheckpointError``."""
    if not resume:
        return None, None
    if resume == "auto":
        found = newest_valid_checkpoint(Path(output_dir) / "checkpoints")
        if found is None and resume_candidates(Path(output_dir) / "checkpoints"):
            raise ResumeError(
                f"--resume auto: no checkpoint in {Path(output_dir) / 'checkpoints'} can be resumed from "
                "(each one was skipped, see the warnings above); start over with --overwrite, or choose "
                "another train.output_dir"
            )
        return found if found is not None else (None, None)
    p = Path(resume)
    if p.is_dir():
        target = Path(output_dir).resolve()
        run = p.parent if p.name == "checkpoints" and p.resolve() != target else p
        if run.resolve() != target:  # (relative train.output_dir, another cwd)
            add = shlex.quote(f"train.output_dir={run}")  # pasted into a shell
            raise ResumeError(
                f"--resume {resume} names a run folder, but this run writes to train.output_dir="
                f"{output_dir} ({target}), another folder: to continue that run, add {add}; to start a "
                "new run there from its state, pass the checkpoint file (e.g. its checkpoints/last.pt)"
            )
        for folder in (p / "checkpoints", p):
            if resume_candidates(folder):
                found = newest_valid_checkpoint(folder)
                if found is None:
                    raise ResumeError(
                        f"--resume {resume}: no checkpoint in {folder} can be resumed from (see the "
                        "warnings above)"
                    )
                return found
        raise NotFoundError(f"--resume {resume}: no checkpoints/last.pt, last.pt or step_*.pt in that folder")
    if not p.is_file():
        raise NotFoundError(f"--resume {resume}: checkpoint not found")
    return str(p), read_training_state(p)
