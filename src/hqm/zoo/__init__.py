"""Checkpoint loading and conversion (our checkpoints; DETR / QPIC / HQM released weights)."""

from __future__ import annotations

import logging

import torch

from hqm.engine.checkpoint import load_checkpoint

LOG = logging.getLogger("hqm.zoo")


def load_weights(model: torch.nn.Module, path: str) -> None:
    """Load a checkpoint written by ``hqm train`` into ``model`` (mining parameters may be absent or
    extra: they never influence inference)."""
    ckpt = load_checkpoint(path)
    state = ckpt.get("model", ckpt)
    own_miners = any(k.startswith("miners.") for k in model.state_dict())
    if not own_miners:
        state = {k: v for k, v in state.items() if not k.startswith("miners.")}
    missing, unexpected = model.load_state_dict(state, strict=own_miners)
    if missing or unexpected:
        LOG.warning("loaded %s with %d missing and %d unexpected keys", path, len(missing), len(unexpected))


def load_pretrained(model: torch.nn.Module, path: str, cfg, meta) -> None:
    raise NotImplementedError("model.pretrained: DETR / QPIC checkpoint conversion is not implemented yet")
