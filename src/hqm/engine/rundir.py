"""One run directory, one run: a lock against two processes, and no silent mixing of two runs.

``claim_run_dir(out, resume, overwrite)`` is called by the trainer (rank 0) before it writes anything:

1. **Lock.** ``<out>/.hqm-run.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking) for as
   long as the run lives; a second ``hqm train`` into the same folder is refused while the first
   one runs. The kernel drops the lock when its process ends, however it ends (SIGKILL, crash, power
   loss on a local disk), so a lock left by a dead process never blocks: the file may stay, the lock
   does not. The file records the owner's pid, host and start time for the message.
2. **Ownership.** A folder *holds a run* once training wrote results into it: a checkpoint of a
   run's name (``checkpoints/last.pt``, ``best.pt``, ``step_*.pt``), or ``metrics.jsonl`` /
   ``results.csv`` in a run's format. Such a folder is refused unless the run is resumed from its own
   checkpoint (``--resume``), or ``--overwrite`` is given, which deletes the run's files first and
   nothing else (:func:`delete_run_files`: a user's file in ``checkpoints/`` stays). A folder whose
   earlier attempt never trained (only ``config.yaml`` / ``log.txt`` beside the lock file) or that
   holds unrelated files is used as is. A folder that holds files at the names a run writes that hqm
   did not write (a user's own config, ``hqm train exp/config.yaml train.output_dir=exp``, or a
   ``results.csv`` of their own) is refused, ``--overwrite`` or not: training would replace or append
   to them (:func:`foreign_files`).

3. **Elastic restarts.** Under torchrun the lock file also records, once the claim succeeded, the
   launch it belongs to (:func:`elastic_identity`: torchrun's run id, host and agent pid). A worker
   group restarted by the elastic agent (``--max-restarts``, ``TORCHELASTIC_RESTART_COUNT > 0``) of
   that same launch finds its record (:func:`is_elastic_restart`), resumes the newest valid
   checkpoint (the trainer passes ``--resume auto``) or, with none yet, continues in the folder its
   first attempt claimed. A restart of another launch, or a first attempt, is treated as any run.
4. **Writable.** A folder that cannot be created or written (read-only file system, permissions)
   raises :class:`~hqm.errors.OutputError` naming it, before anything else.
5. **No trace of a refused run.** When the run's set-up fails after the claim (a missing data set, a
   bad value found while building), :func:`abandon_run_dir` deletes what the attempt created: the
   lock file, ``config.yaml`` / ``log.txt`` / an empty ``checkpoints`` / ``tensorboard`` that were
   not there before, and the folders the claim created (when empty). Files that were there before
   the attempt are kept; the console has the refusal.

``next_free_run_dir`` gives ``hqm demo`` a fresh folder (``runs/demo``, then ``runs/demo-2``, ...).
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
import shlex
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

from hqm.engine.checkpoint import is_run_checkpoint_name
from hqm.errors import UsageError, output_error, write_fault
from hqm.output import make_dirs, remove_empty_dirs

try:  # POSIX; elsewhere runs are not locked (the ownership check still applies)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".hqm-run.lock"
#: what a training run writes into its folder (``--overwrite`` removes exactly these)
RUN_FILES = (
    "config.yaml",
    "log.txt",
    "metrics.jsonl",
    "results.csv",
    "curves.png",
    "checkpoints",
    "tensorboard",
)
#: run files written at a fixed name that do not by themselves show a run trained (see holds_run)
SETUP_FILES = ("config.yaml", "log.txt", "curves.png", "tensorboard")


def run_config_header(out: str | os.PathLike) -> str:
    """The first line of the ``config.yaml`` a run writes into its folder ``out``: what tells it from
    a user's config (a copy of it in another folder, or one written by hand, does not carry it)."""
    return (
        f"# hqm train: the resolved config of the run in {Path(out).resolve()} (edit a copy, not this file)"
    )


class RunDirError(UsageError, ValueError):
    """The run directory is in use by another process or holds another run (the message says what to do)."""


class RunLock:
    """An exclusive ``flock`` on ``<run dir>/.hqm-run.lock``, held until :meth:`release` or the
    process ends."""

    def __init__(self, path: Path, created_dirs: list[Path] = (), held_before: frozenset[str] = frozenset()):
        self.path = path
        #: the folders claim_run_dir created (outermost first) and the names the run folder held
        #: before (what abandon_run_dir keeps)
        self.created_dirs = list(created_dirs)
        self.held_before = held_before
        self.previous_owner = path.read_text() if path.is_file() else ""
        self._file = open(path, "a+")  # noqa: SIM115 - held open for the lifetime of the run
        if fcntl is not None:
            try:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._file.seek(0)
                owner = self._file.read().strip() or "another process"
                self._file.close()
                raise RunDirError(
                    f"{path.parent} is in use by a training run that is still running ({owner}); wait for "
                    "it to finish or stop it, or choose another train.output_dir"
                ) from None
        self._file.seek(0)
        self._file.truncate()
        started = datetime.datetime.now().isoformat(timespec="seconds")
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
        self._file.flush()

    def mark_owner(self, identity: str) -> None:
        """Record the launch that owns the folder (after the claim succeeded)."""
        self._file.write(f"{identity}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor drops the flock

    def __del__(self) -> None:
        self.release()


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n")
    except OSError:
        return ""


def _written_by_the_logger(path: Path) -> bool:
    """``results.csv`` / ``metrics.jsonl`` as a run writes them (``RunWriter``): a CSV whose header
    starts ``epoch,step,``, JSON lines whose first record has ``kind`` and ``step``. An empty file
    counts as a run's (a run killed before its first line)."""
    if path.is_symlink() or not path.is_file():
        return False
    line = _first_line(path)
    if not line:
        return True
    if path.name == "results.csv":
        return line.startswith("epoch,step,")
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "kind" in record and "step" in record


def holds_run(out: str | os.PathLike) -> list[str]:
    """The files that show a run trained in ``out`` (empty when none): the checkpoints a run writes
    (``checkpoints/last.pt``, ``best.pt``, ``step_*.pt``), and ``metrics.jsonl`` / ``results.csv``
    in the format a run writes them (a user's file of that name is a :func:`foreign_files` one)."""
    out = Path(out)
    found = [f"checkpoints/{p.name}" for p in _at_checkpoint_names(out) if _is_checkpoint(p)]
    found += [name for name in ("metrics.jsonl", "results.csv") if _written_by_the_logger(out / name)]
    return found


def _at_checkpoint_names(out: Path) -> list[Path]:
    """The entries of ``out/checkpoints`` at the names a run gives its checkpoints (``last.pt``,
    ``best.pt``, ``step_*.pt``; not its temporaries), sorted; none when it cannot be read (claiming
    the folder reports that)."""
    folder = out / "checkpoints"
    try:
        entries = list(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    return sorted(p for p in entries if is_run_checkpoint_name(p.name) and not p.name.startswith("."))


def _is_checkpoint(path: Path, or_empty: bool = False) -> bool:
    """A file ``torch.save`` wrote (a zip archive, which is what hqm's checkpoints are; truncated
    too); with ``or_empty`` an empty file too (a run's write that the disk lost)."""
    if path.is_symlink():
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" or (or_empty and head == b"")


def _written_by_a_run(path: Path, claimed: bool) -> bool:
    if path.is_symlink():  # a run writes plain files: a link (dangling too) would be written through
        return False
    if path.name != "config.yaml":
        return claimed
    return _first_line(path) == run_config_header(path.parent)


def foreign_files(out: str | os.PathLike) -> list[str]:
    """The files of ``out`` that a run would write over or append to although hqm did not write them
    (empty when none): ``metrics.jsonl`` / ``results.csv`` not in a run's format (or links), and, in
    a folder that holds no run (:func:`holds_run`), a ``config.yaml`` without this folder's
    :func:`run_config_header` as its first line, the other :data:`SETUP_FILES` when ``hqm train``
    never claimed the folder (no ``.hqm-run.lock``), and any of them that is a link."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [
        name
        for name in ("metrics.jsonl", "results.csv")
        if ((out / name).exists() or (out / name).is_symlink()) and not _written_by_the_logger(out / name)
    ]
    if not (out / "checkpoints").is_symlink():  # a file at a checkpoint's name that is no checkpoint
        found += [
            f"checkpoints/{p.name}" for p in _at_checkpoint_names(out) if not _is_checkpoint(p, or_empty=True)
        ]
    if holds_run(out):
        return found
    claimed = (out / LOCK_NAME).is_file()
    return [
        name + ("/" if (out / name).is_dir() else "")
        for name in SETUP_FILES
        if ((out / name).exists() or (out / name).is_symlink()) and not _written_by_a_run(out / name, claimed)
    ] + found


def elastic_identity() -> str | None:
    """This torchrun launch (run id, host, agent pid), the same for every restart of its worker group
    on this node; None when not launched by torchrun's elastic agent."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if run_id is None:
        return None
    return f"torchrun launch {run_id} (agent pid {os.getppid()} on {socket.gethostname()})"


def is_elastic_restart(out: str | os.PathLike) -> bool:
    """True when this process belongs to a restarted worker group (``TORCHELASTIC_RESTART_COUNT`` >
    0) of the torchrun launch whose earlier attempt claimed ``out`` (see the module docstring)."""
    identity = elastic_identity()
    if identity is None or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) <= 0:
        return False
    lock = Path(out) / LOCK_NAME
    try:
        return identity in lock.read_text().splitlines()
    except OSError:
        return False


def claim_run_dir(
    out: str | os.PathLike, resume: str | None = None, overwrite: bool = False, restart: bool = False
) -> RunLock:
    """Lock ``out`` for this run and check that the run may write there (see the module docstring).

    resume: the checkpoint file being resumed (already resolved), or None for a fresh run.
    restart: an elastic restart of the launch that claimed ``out`` (:func:`is_elastic_restart`):
    the folder holds this very run, with or without a checkpoint.
    Returns the lock (keep it until the run ends). Raises :class:`RunDirError` (a ``ValueError``)
    when another process holds the lock, when ``out`` holds a run that is neither resumed nor to be
    overwritten, when it holds files at a run's names that hqm did not write (:func:`foreign_files`),
    or for ``resume`` together with ``overwrite``; ``OutputError`` when ``out`` cannot be written.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunDirError("--resume continues the run in train.output_dir, --overwrite deletes it: pick one")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"train.output_dir={out} is a file")
    if out.is_symlink() and not out.exists():
        raise RunDirError(
            f"train.output_dir={out} is a symbolic link to {os.readlink(out)}, which does not exist (or "
            "is a link loop): create that folder or choose another train.output_dir"
        )
    dangling = [n for n in (*RUN_FILES, LOCK_NAME) if (out / n).is_symlink() and not (out / n).exists()]
    if dangling:  # a run would create its files at the links' targets, outside the folder
        links = ", ".join(f"{n} -> {os.readlink(out / n)}" for n in dangling)
        raise RunDirError(
            f"train.output_dir={out} holds symbolic links to missing targets ({links}); a run would "
            "create its files there, outside the folder: remove the links or create their targets"
        )
    foreign = foreign_files(out)
    if foreign:  # checked before the lock file is made: that file marks a folder hqm train claimed
        it = "it" if len(foreign) == 1 else "them"
        suggestion = shlex.quote(f"train.output_dir={out / 'run'}")  # pasted into a shell
        raise RunDirError(
            f"train.output_dir={out} holds {', '.join(foreign)}, which hqm did not write (no run of "
            f"hqm train made {it}); a run would replace or append to {it}. Train into a new or empty "
            f"folder (e.g. {suggestion}), or move {it} away"
        )
    try:
        held = frozenset(p.name for p in out.iterdir()) if out.is_dir() else frozenset()
        lock = RunLock(out / LOCK_NAME, make_dirs(out, "train.output_dir", RunDirError), held)
    except OSError as e:
        if write_fault(e):
            raise output_error(f"train.output_dir={out}", e, "write to") from None
        raise
    try:
        found = holds_run(out)
        own_checkpoint = resume is not None and out.resolve() in Path(resume).resolve().parents
        own_checkpoint = own_checkpoint or restart
        if found and overwrite:
            delete_run_files(out)
        elif found and not own_checkpoint:
            shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
            what = f"resuming {resume} there would mix two runs" if resume else "a new run would mix with it"
            raise RunDirError(
                f"{out} already holds a training run ({shown}); {what}. Continue that run with --resume "
                f"{shlex.quote(str(out))}, start over with --overwrite (deletes its checkpoints and logs), "
                "or choose another train.output_dir"
            )
        identity = elastic_identity()
        if identity is not None:
            lock.mark_owner(identity)
    except BaseException:  # refused: the lock file and folders this claim made go again
        abandon_run_dir(lock)
        raise
    return lock


def delete_run_files(out: Path) -> None:
    """``--overwrite``: delete the run files of ``out`` and nothing else: the :data:`RUN_FILES` at
    the folder's top, in ``checkpoints/`` only the files a run writes (``last.pt``, ``best.pt``,
    ``step_*.pt``, unfinished temporaries) and in ``tensorboard/`` only event files; each of those
    two folders goes when it is left empty (a user's export or notes in it stay)."""
    for name in RUN_FILES:
        path = out / name
        if name in ("checkpoints", "tensorboard") and path.is_dir() and not path.is_symlink():
            for f in path.iterdir():
                ours = (
                    is_run_checkpoint_name(f.name) if name == "checkpoints" else f.name.startswith("events.")
                )
                if ours and (f.is_file() or f.is_symlink()):
                    f.unlink()
            if not any(path.iterdir()):
                path.rmdir()
        elif path.is_file() or path.is_symlink():
            path.unlink()


def abandon_run_dir(lock: RunLock) -> list[str]:
    """Undo the claim of a run whose set-up failed before it trained: release ``lock`` and delete
    what the attempt created in its folder (the lock file; ``config.yaml``, ``log.txt``, and
    ``checkpoints`` / ``tensorboard`` when empty or holding only event files, none of which the
    folder held before), then the folders :func:`claim_run_dir` created, innermost first, when empty.
    Close the run's ``log.txt`` handler first. Returns the paths deleted; a file that cannot be
    deleted is left (the refusal being reported matters more)."""
    lock.release()
    out = lock.path.parent
    removed = []
    for name in (LOCK_NAME, "config.yaml", "log.txt", "checkpoints", "tensorboard"):
        path = out / name
        if name in lock.held_before or not path.exists() or path.is_symlink():
            continue
        try:
            if name == "checkpoints":
                path.rmdir()  # only when empty: nothing was saved
            elif name == "tensorboard":
                shutil.rmtree(path)  # this attempt's event files only (absent before it)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(str(path))
    removed += map(str, remove_empty_dirs(lock.created_dirs))
    return removed


def run_dir_candidates(out: str | os.PathLike) -> Iterator[Path]:
    """``out``, ``out-2``, ``out-3``, ... (endless): the folders ``hqm demo`` tries in turn."""
    out = Path(out)
    yield out
    for k in itertools.count(2):
        yield out.with_name(f"{out.name}-{k}")


def next_free_run_dir(out: str | os.PathLike) -> Path:
    """The first of :func:`run_dir_candidates` that holds no run (:func:`holds_run`) nor
    :func:`foreign_files`."""
    return next(c for c in run_dir_candidates(out) if not (holds_run(c) or foreign_files(c)))
