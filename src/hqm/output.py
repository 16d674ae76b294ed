"""Writing the files ``hqm convert``, ``hqm export``, ``hqm eval --save-predictions`` and
``hqm predict`` produce without harming the user's files: an existing output is refused unless the
user asks to replace it, an input is never an output, and a write lands whole or not at all
(:func:`replacing`: temporary file in the same folder, then an atomic rename; training checkpoints
go through it too, durably). Output
folders (``hqm train``'s run folder, ``hqm predict``'s ``out=``) are made with :func:`make_dirs`,
and a command that ends up writing nothing removes them again (:func:`remove_empty_dirs`)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from hqm.errors import UsageError, output_error, write_fault


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether ``a`` and ``b`` both exist and name one file (another spelling, a symlink or a hard
    link)."""
    return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)


def check_new_output(
    path: str | os.PathLike,
    overwrite: bool,
    inputs: tuple[str | os.PathLike, ...] = (),
    overwrite_hint: str = "pass --overwrite",
) -> Path:
    """``path`` as a ``Path`` when a file may be written there. Raises ``UsageError`` (one line) when
    it is one of ``inputs``, is a folder or ends with a slash, lies under a file (``notes.txt/x.json``),
    or already exists (a dangling symbolic link too) and ``overwrite`` is False; the message ends
    with ``overwrite_hint`` (the command-line flag; Python callers name their argument)."""
    if str(path).endswith(("/", os.sep)):  # Path() would drop the slash and write the file itself
        raise UsageError(f"{path} ends with a slash: give the path of the file to write")
    out = Path(path)
    for src in inputs:
        if same_file(out, src):
            raise UsageError(f"{out} is also the input: choose another output path")
    if out.is_dir():
        raise UsageError(f"{out} is a folder: give the path of the file to write (in it or elsewhere)")
    dangling = next((p for p in out.parents if p.is_symlink() and not p.exists()), None)
    if dangling is not None:
        raise UsageError(
            f"{dangling} is a symbolic link to {os.readlink(dangling)}, which is missing: {out} cannot be "
            "written there (create the target or choose another path)"
        )
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise UsageError(f"{blocking} is a file, not a folder: {out} cannot be written there")
    if os.path.lexists(out) and not overwrite:  # a dangling link too: replacing it is replacing a file
        what = f" (a symbolic link to {os.readlink(out)}, which is missing)" if not out.exists() else ""
        raise UsageError(
            f"{out} already exists{what}: choose another path, or {overwrite_hint} to replace it"
        )
    return out


def temp_path(path: Path) -> Path:
    """The temporary name a write of ``path`` goes through: ``.<name>.tmp<pid>`` beside it."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def open_new(path: Path, mode: str = "wb"):
    """``path`` opened for writing as a new file (``O_EXCL``: never an existing file, nor a link's
    target); a leftover of this process's name (a link too) is removed first."""
    path.unlink(missing_ok=True)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), mode)


@contextmanager
def replacing(path: Path, mode: str = "wb", durable: bool = False):
    """A new temporary file beside ``path`` (:func:`temp_path`, :func:`open_new`), moved onto
    ``path`` (``os.replace``) when the block succeeds and deleted when it fails (an interrupt too):
    nothing is written through a link at ``path``, and a hard link's other names keep their content.
    ``durable``: the data is flushed to the disk (``fsync``) before the rename and the folder after
    it, so that a power loss leaves the old file or the new one (checkpoints)."""
    tmp = temp_path(path)
    try:
        with open_new(tmp, mode) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """``fsync`` ``folder`` so that a rename in it survives a power loss (POSIX; best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, what: str = "write") -> None:
    """Write ``data`` to ``path`` through :func:`replacing` (missing parent folders are created, as
    ``mkdir -p``; nothing existing is touched but ``path``): a failed write leaves the old file (if
    any) intact and no partial file. Raises ``OutputError`` naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as f:
            f.write(data)
    except OSError as e:
        if not write_fault(e) and not isinstance(e, (FileExistsError, NotADirectoryError)):
            raise  # (those two: a file where a parent folder should be, created since the check)
        raise output_error(path, e, what) from None


def make_dirs(folder: Path, name: str, error: type[UsageError] = UsageError) -> list[Path]:
    """Create ``folder`` as ``mkdir -p`` does; -> the folders created, outermost first (what
    :func:`remove_empty_dirs` takes). ``name`` is how the message names it (``out``,
    ``train.output_dir``). Raises ``error`` (a ``UsageError``, one line) when a part of the path is a
    file or a link to nothing, ``OutputError`` when the disk refuses."""
    created = [p for p in (folder, *folder.parents) if not os.path.lexists(p)][::-1]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise error(
            f"cannot create {name}={folder}: {e.filename} is not a folder (a file, or a symbolic link to "
            "a missing one): choose another folder"
        ) from None
    except OSError as e:
        if write_fault(e):
            raise output_error(f"{name}={folder}", e, "create") from None
        raise
    return created


def remove_empty_dirs(created: list[Path]) -> list[Path]:
    """Remove the folders :func:`make_dirs` created, innermost first, as long as each is empty;
    -> those removed. A folder that holds anything (and its parents) is kept."""
    removed = []
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            break
        removed.append(folder)
    return removed
