"""The ``device`` setting (config key ``device``, ``device=`` of ``hqm predict``, the API's
``device`` argument) -> a ``torch.device`` that this machine has; ``train.amp`` -> the autocast
that device runs well."""

from __future__ import annotations

import functools
import logging

import torch

from hqm.errors import UsageError

LOGGER = logging.getLogger("hqm")


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


@functools.cache
def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` runs bf16 matrix kernels natively: a CUDA device with bf16 support
    (Ampere and newer), or a CPU with AVX-512 (oneDNN's bf16 kernels; AVX512_BF16 / AMX make them
    faster still). On an AVX2-only CPU oneDNN falls back to a reference bf16 path: a 1024 x 1024
    matmul ran at 0.8 GFLOP/s in bf16 against 95 GFLOP/s in fp32 on a 2-core AVX2 EPYC, and the
    demo's training step took 6.05 s instead of 0.69 s (README, "Mixed precision, compile")."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch without this probe: go by the vector ISA
        return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2")


_KIND = {"cpu": "CPU", "cuda": "GPU", "mps": "MPS device"}


@functools.cache
def _announce(message: str, warn: bool) -> None:
    (LOGGER.warning if warn else LOGGER.info)(message)


def resolve_amp(amp: str, device: torch.device) -> str:
    """The ``train.amp`` setting -> the autocast this process uses: ``off``, ``bf16`` or ``fp16``.

    ``auto`` is ``bf16`` where :func:`native_bf16` says the device runs it natively, else ``off``
    (float32), and says which once per process. ``bf16`` asked for explicitly on a CPU without
    native bf16 stays ``bf16`` (numerics as asked) with one warning that it runs many times slower
    than ``off`` there. The autocast dtype only changes rounding: every setting trains the same
    model and loads the same checkpoints."""
    if amp == "auto":
        resolved = "bf16" if native_bf16(device) else "off"
        why = "has" if resolved == "bf16" else "has no"
        _announce(
            f"train.amp=auto: {'bf16 autocast' if resolved == 'bf16' else 'float32'} "
            f"(this {_KIND.get(device.type, device.type)} {why} native bf16 kernels)",
            warn=False,
        )
        return resolved
    if amp == "bf16" and device.type == "cpu" and not native_bf16(device):
        _announce(
            "warning: train.amp=bf16 on a CPU without native bf16 kernels "
            f"({torch.backends.cpu.get_cpu_capability()}): bf16 runs many times slower than float32 "
            "here; the override train.amp=auto or train.amp=off (also for hqm eval CKPT) runs in float32",
            warn=True,
        )
    return amp
