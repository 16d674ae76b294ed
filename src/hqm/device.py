"""The ``device`` setting (config key ``device``, ``device=`` of ``hqm predict``, the API's
``device`` argument) -> a ``torch.device`` that this machine has."""

from __future__ import annotations

import torch

from hqm.errors import UsageError


class DeviceError(UsageError, ValueError):
    """The requested device does not exist on this machine (exit code 2)."""


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA device ``local_rank`` when there is one, else the CPU), ``cpu``, ``cuda``
    (device ``local_rank``: torchrun gives each process its own), ``cuda:N`` or ``mps``.

    Raises :class:`DeviceError` naming the device and what this machine has instead, before any
    tensor is moved (PyTorch would fail later with a low-level assertion)."""
    name = str(name)
    cuda = torch.cuda.is_available()
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    try:
        device = torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    except RuntimeError:
        raise DeviceError(f"device={name!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda":
        if not cuda:
            built = "no GPU is visible" if torch.version.cuda else "this PyTorch is built without CUDA"
            raise DeviceError(
                f"device={name} was asked for, but CUDA is not available ({built}); use device=cpu or "
                "device=auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device={name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device={name} was asked for, but MPS is not available; use device=cpu or auto")
    return device
