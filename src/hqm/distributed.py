"""torch.distributed helpers: launched by ``torchrun`` (env://), NCCL on GPU, gloo on CPU.

The one place that talks to ``torch.distributed``: below ``models/`` (the criterion's global loss
normalisers), ``evaluation/`` (gathering per-image records) and ``engine/`` (process group, DDP),
so none of them imports another for it. Every helper degrades to the single-process behaviour when
no process group is initialised.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from hqm.errors import UsageError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def launch_rank() -> int:
    """The global rank torchrun gave this process (``RANK``), 0 when not launched by it.

    Unlike :func:`get_rank` this stays valid after the process group is destroyed (the trainer
    cleans up at the end of ``fit``), so the CLI uses it to print results once."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device: str) -> tuple[bool, int]:
    """Initialise the process group when launched by torchrun. Returns (distributed, local_rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) < 2:
        return False, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not is_dist():
        # torchrun's elastic agent keeps its TCPStore across restarts of the worker group: a restarted
        # worker could read the failed attempt's peer addresses and connect to a dead process
        # (pytorch/pytorch#135712). One key space per attempt (TORCHELASTIC_RESTART_COUNT).
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:  # RANK / WORLD_SIZE set by hand (or left over in the shell): not a torchrun launch
            raise UsageError(
                f"RANK={os.environ['RANK']} and WORLD_SIZE={os.environ['WORLD_SIZE']} are set but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: launch several "
                "processes with torchrun (torchrun --nproc-per-node N -m hqm ...), or unset RANK and "
                "WORLD_SIZE for one process"
            )
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            store=dist.PrefixStore(f"hqm/attempt_{attempt}", store),
            rank=rank,
            world_size=world,
        )
    return True, local_rank


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum of a list of Python numbers over ranks, in one collective (float64, so counts
    stay exact). Used for the global loss normalisers."""
    if not is_dist():
        return [float(v) for v in values]
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=dev)
    dist.all_reduce(t)
    return t.tolist()


def all_gather_object(obj: Any) -> list[Any]:
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
