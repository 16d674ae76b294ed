"""Reading checkpoint files without executing arbitrary pickles.

Every ``.pt`` / ``.pth`` file goes through ``torch.load(weights_only=True)``: the restricted unpickler
only rebuilds tensors, plain containers and numbers. Public DETR / QPIC / HQM training checkpoints
also pickle the ``argparse.Namespace`` of their command line (key ``args``); that one class is
allowed explicitly (:data:`ALLOWED_GLOBALS`). A file that needs any other global (a custom class, or
a malicious ``__reduce__`` calling ``os.system``) is refused with :class:`UnsafeCheckpointError`
naming the file and the offending global; nothing in it runs.

``.safetensors`` files (and exported model directories, see ``hqm.zoo.export``) hold tensors only.

A file that is not a readable checkpoint (zero bytes, a write cut short, another kind of file, a
damaged archive) raises :class:`CheckpointError` saying which, instead of the zip reader's or the
unpickler's low-level error; a path that does not exist raises :class:`NotFoundError`.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hqm.errors import NotFoundError, UserError


def _numpy_reconstruction() -> tuple[Any, ...]:
    """What unpickling a numpy array needs: ``_reconstruct`` (under its numpy >= 2 name and, for files
    written with numpy 1, ``numpy.core.multiarray._reconstruct``), ``ndarray``, ``dtype`` and the
    dtype classes of numeric / bool / str arrays. Nothing else from numpy (no ``numpy.random``
    constructors, no object arrays' contents beyond these)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
    kinds += (np.float16, np.float32, np.float64, np.complex64, np.complex128, np.str_)
    return (
        _reconstruct,
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        *dict.fromkeys(type(np.dtype(k)) for k in kinds),
    )


#: Globals a checkpoint may reference besides tensors and plain containers: the ``argparse.Namespace``
#: of public training checkpoints and the numpy array reconstruction (HOTR's published V-COCO
#: checkpoint keeps numpy arrays in its ``args``). ``(object, name)``: allowed under that pickled name.
ALLOWED_GLOBALS: tuple[Any, ...] = (argparse.Namespace, *_numpy_reconstruction())


def _global_name(g: Any) -> str:
    return g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"


class CheckpointError(UserError, ValueError):
    """A weights / checkpoint file cannot be used: unreadable, not a checkpoint, or without the
    entries the caller needs (the message names the file and what is wrong)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """A checkpoint references a global outside the allow-list; it was not loaded."""


_ZIP_MAGIC = b"PK\x03\x04"


def diagnose_checkpoint_file(path: str | os.PathLike) -> str | None:
    """Why the file at ``path`` cannot be a PyTorch checkpoint, from its size and first bytes (no
    unpickling), or None when it may be one: empty, a zip archive without its directory (a write cut
    short), or another kind of file (text, an image, a safetensors file)."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC):
        return None if zipfile.is_zipfile(path) else f"the archive is truncated or damaged ({size} bytes)"
    if head[:1] == b"\x80":  # a pickle (PyTorch's legacy format or a plain pickle)
        return None
    if len(head) > 8 and head[8:9] == b"{":
        return "it is a safetensors file: give it the .safetensors suffix"
    return f"it is not a PyTorch checkpoint (it starts with {head[:8]!r})"


def _unreadable(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a readable checkpoint: {reason}. Use another copy (a run keeps "
        "checkpoints/last.pt, best.pt and, with train.keep_last >= 2, step_*.pt)"
    )


def _allowed_names() -> str:
    return ", ".join(_global_name(c) for c in ALLOWED_GLOBALS)


def _unsafe_globals(path: Path) -> list[str]:
    """Globals of a zip-format checkpoint that ``weights_only`` would refuse (best effort)."""
    probe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if probe is None:
        return []
    try:
        found = probe(str(path))
    except Exception:  # legacy (non-zip) file or unreadable archive: fall back to the error text
        return []
    allowed = {_global_name(c) for c in ALLOWED_GLOBALS}
    return [g for g in found if g not in allowed]


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`ALLOWED_GLOBALS` allowed.

    Raises :class:`NotFoundError` (a ``FileNotFoundError``) for a missing file,
    :class:`UnsafeCheckpointError` (before any object in the file is built) when the file needs
    another global, and :class:`CheckpointError` when the file is empty, truncated, damaged or not a
    checkpoint (see :func:`diagnose_checkpoint_file`).
    """
    path = Path(path)
    if path.is_dir():
        raise NotFoundError(f"{path} is a folder, not a checkpoint file (e.g. a run's checkpoints/last.pt)")
    if not path.is_file():
        raise NotFoundError(f"checkpoint not found: {path}")
    reason = diagnose_checkpoint_file(path)
    if reason:
        raise _unreadable(path, reason)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except EOFError:
        raise _unreadable(path, "it ends early (a write cut short?)") from None
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):  # not the archive reader: a genuine failure, keep it
            raise
        raise _unreadable(path, f"the archive is damaged ({str(e).splitlines()[0]})") from None
    except pickle.UnpicklingError as e:
        offending = _unsafe_globals(path)
        if not offending:
            offending = re.findall(r"GLOBAL ([\w.]+)", str(e))
        if not offending:  # not a forbidden class: the pickle stream itself is not a checkpoint's
            detail = re.search(r"Unsupported operand \d+|Unsupported [\w ]+", str(e))
            detail = detail[0] if detail else str(e).splitlines()[0]
            raise _unreadable(path, f"its pickle data is not a checkpoint's ({detail})") from None
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it references the global(s) {', '.join(offending)}, which are "
            f"not on hqm's allow-list ({_allowed_names()}). "
            "Loading it would execute code from the file. If you trust it, re-save its state dict "
            "(plain tensors) and load that instead."
        ) from None


_STATE_KEYS = ("model", "state_dict", "model_state_dict")


def extract_state_dict(obj: Any, path: str | os.PathLike = "<memory>") -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint: ``obj["model"]``, ``obj["state_dict"]`` or
    ``obj`` itself when it is already a flat ``{name: tensor}`` mapping."""
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        state = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if state:
            # DDP-saved weights carry a "module." prefix on every key
            if all(k.startswith("module.") for k in state):
                state = {k[len("module.") :]: v for k, v in state.items()}
            return state
    raise CheckpointError(f"{path}: no model state dict found (expected a 'model' entry of name -> tensor)")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file. Raises ``NotFoundError`` / ``CheckpointError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise NotFoundError(f"weights not found: {path}")
    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise _unreadable(path, f"not a valid safetensors file ({e})") from None


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the rest of the checkpoint) of a ``.pt``/``.pth``/``.safetensors`` file or an
    exported model directory (or its ``model.safetensors``: read with the export's ``config.yaml``).
    The rest holds e.g. ``config``, ``meta``, ``args`` when present."""
    path = Path(path)
    if path.is_dir():
        from hqm.zoo.export import read_exported

        return read_exported(path)
    if path.suffix == ".safetensors":
        from hqm.zoo.export import is_export_weights, read_exported

        if is_export_weights(path):  # an export's model.safetensors: its config.yaml goes with it
            return read_exported(path.parent)
        return read_safetensors(path), {}
    obj = safe_torch_load(path)
    state = extract_state_dict(obj, path)
    wrapped = isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in _STATE_KEYS)
    rest = {k: v for k, v in obj.items() if k not in _STATE_KEYS} if wrapped else {}
    return state, rest
