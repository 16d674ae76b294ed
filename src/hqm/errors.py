"""User errors: problems the user can fix, told in one line, apart from bugs.

Every exception hqm raises for a bad input, file or environment derives from :class:`UserError`;
its message names the file, key or record and says what to do. The command line (``hqm.cli.main``)
prints a ``UserError`` as one line ``hqm COMMAND: error: MESSAGE`` and exits with its
``exit_code``; any other exception is a bug in hqm (or in a library) and keeps its traceback.

Exit codes (``hqm --help`` and the README state them too):

* ``2`` (:class:`UsageError`): the command as typed cannot run: an unknown or out-of-range config
  key, a config, ``_base_`` or checkpoint path that does not exist, ``--resume`` on weights without
  a training state, a device this machine does not have, settings a resumed run cannot take, a run
  directory that holds another run. Fix the command line.
* ``1`` (:class:`UserError`): the named inputs exist but could not be used, or the run failed: a
  truncated or foreign checkpoint, bad annotation records, an output folder that cannot be written
  (read-only, disk full), a training run stopped by non-finite losses.
* ``130`` / ``143`` (:class:`Interrupted`): training stopped on SIGINT / SIGTERM after saving a
  checkpoint (128 + the signal number, the shell convention, so that schedulers and torchrun's
  elastic agent see an unfinished run).

The classes also derive from ``ValueError`` where the fault is a bad value (as the Python API has
always raised), so ``except ValueError`` in user code keeps working.
"""

from __future__ import annotations

import errno
import signal

EXIT_RUNTIME = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input, files or machine; the message says what to do (exit code 1)."""

    exit_code = EXIT_RUNTIME


class UsageError(UserError):
    """The command or config asks for something that cannot run as given (exit code 2)."""

    exit_code = EXIT_USAGE


class NotFoundError(UsageError, FileNotFoundError):
    """A file or folder named on the command line or in the config does not exist (exit code 2)."""


class OutputError(UserError):
    """An output file or folder cannot be written (read-only, permission denied, disk full)."""


class Interrupted(UserError):
    """Training stopped on a signal after saving a checkpoint; exit code 128 + the signal number."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum


#: errno values that mean "the machine refuses the write", not "hqm has a bug"
_WRITE_FAULTS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file-size limit",
}


def write_fault(e: BaseException) -> str | None:
    """A short reason when ``e`` (or an exception it was raised from) is an ``OSError`` refusing a
    write: permission, read-only file system, no space, quota, file size; else None."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in _WRITE_FAULTS:
            return _WRITE_FAULTS[e.errno]
        e = e.__cause__ or e.__context__
    return None


def output_error(path: object, e: BaseException, what: str = "write", note: str = "") -> OutputError:
    """An :class:`OutputError` for a failed write of ``path`` caused by ``e`` (see
    :func:`write_fault`): "cannot WHAT PATH: REASON[; NOTE]; what to do"."""
    reason = write_fault(e) or str(e)
    hint = (
        "free some space or choose another output folder"
        if "space" in reason or "quota" in reason or "too large" in reason
        else "choose a folder you can write to"
    )
    return OutputError(f"cannot {what} {path}: {reason}{'; ' + note if note else ''}; {hint}")
