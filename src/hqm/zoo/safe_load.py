"""Reading checkpoint files without executing arbitrary pickles.

Every ``.pt`` / ``.pth`` file goes through ``torch.load(weights_only=True)``: the restricted unpickler
only rebuilds tensors, plain containers and numbers. Public DETR / QPIC / HQM training checkpoints
also pickle the ``argparse.Namespace`` of their command line (key ``args``); that one class is
allowed explicitly (:data:`ALLOWED_GLOBALS`). A file that needs any other global (a custom class, or
a malicious ``__reduce__`` calling ``os.system``) is refused with :class:`UnsafeCheckpointError`
naming the file and the offending global; nothing in it runs.

``.safetensors`` files (and exported model directories, see ``hqm.zoo.export``) hold tensors only.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

#: Globals a checkpoint may reference besides tensors and plain containers.
ALLOWED_GLOBALS: tuple[type, ...] = (argparse.Namespace,)


class UnsafeCheckpointError(pickle.UnpicklingError, ValueError):
    """A checkpoint references a global outside the allow-list; it was not loaded."""


def _allowed_names() -> str:
    return ", ".join(f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS)


def _unsafe_globals(path: Path) -> list[str]:
    """Globals of a zip-format checkpoint that ``weights_only`` would refuse (best effort)."""
    probe = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if probe is None:
        return []
    try:
        found = probe(str(path))
    except Exception:  # legacy (non-zip) file or unreadable archive: fall back to the error text
        return []
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in ALLOWED_GLOBALS}
    return [g for g in found if g not in allowed]


def safe_torch_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with :data:`ALLOWED_GLOBALS` allowed.

    Raises ``FileNotFoundError`` for a missing file and :class:`UnsafeCheckpointError` (before any
    object in the file is built) when the file needs another global.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        offending = _unsafe_globals(path)
        if not offending:
            offending = re.findall(r"GLOBAL ([\w.]+)", str(e)) or ["<unknown>"]
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
    raise ValueError(f"{path}: no model state dict found (expected a 'model' entry of name -> tensor)")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the rest of the checkpoint) of a ``.pt``/``.pth``/``.safetensors`` file or an
    exported model directory. The rest holds e.g. ``config``, ``meta``, ``args`` when present."""
    path = Path(path)
    if path.is_dir():
        from hqm.zoo.export import read_exported

        state, info = read_exported(path)
        return state, info
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), {}
    obj = safe_torch_load(path)
    state = extract_state_dict(obj, path)
    wrapped = isinstance(obj, dict) and any(isinstance(obj.get(k), dict) for k in _STATE_KEYS)
    rest = {k: v for k, v in obj.items() if k not in _STATE_KEYS} if wrapped else {}
    return state, rest
