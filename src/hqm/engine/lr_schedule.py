"""Learning-rate schedule: a pure function of the optimiser step.

``lr(step) = base_lr * warmup(step) * decay(step)`` for every parameter group (each keeps its own base
lr: transformer + heads at ``train.lr``, backbone at ``train.lr_backbone``):

* ``warmup``: linear from ``1 / warmup_steps`` to 1 over the first ``train.warmup_steps`` steps
  (Goyal et al. 2017, "Accurate, Large Minibatch SGD"; 0 = none, the DETR / QPIC recipe);
* ``decay``, ``train.lr_schedule``:
  - ``step`` (DETR / QPIC / HQM, PyTorch ``StepLR``): x0.1 every ``train.lr_drop`` complete epochs;
  - ``cosine``: half a cosine from 1 at the end of the warm-up down to ``train.min_lr_ratio`` at the
    last step (Loshchilov & Hutter 2017, SGDR, without restarts).

Because the factor depends only on the step (and the config), a resumed run continues on exactly
the same curve, and a schedule key changed on resume (``lr_drop``, ``epochs``, ``warmup_steps``)
takes effect from the resumed step on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LRSchedule:
    """lr multiplier per optimiser step.

    steps_per_epoch: optimiser steps in one epoch; total_steps: steps of the whole run (cosine end).
    """

    kind: str  # "step" | "cosine"
    steps_per_epoch: int
    total_steps: int
    lr_drop: int = 0  # "step": x0.1 every lr_drop epochs (0: never)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final factor of "cosine"

    def factor(self, step: int) -> float:
        """Multiplier of the base lr for optimiser step ``step`` (0-based: the step about to run)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.kind == "step":
            epoch = step // max(self.steps_per_epoch, 1)
            decay = 0.1 ** (epoch // self.lr_drop) if self.lr_drop > 0 else 1.0
        else:
            span = max(self.total_steps - self.warmup_steps, 1)
            t = min(max(step - self.warmup_steps, 0) / span, 1.0)
            decay = self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        return warm * decay

    def apply(self, optimizer: torch.optim.Optimizer, base_lrs: list[float], step: int) -> float:
        """Set group ``i``'s lr to ``base_lrs[i] * factor(step)``; returns the factor."""
        f = self.factor(step)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * f
        return f


def build_lr_schedule(cfg_train, steps_per_epoch: int) -> LRSchedule:
    """The schedule of the ``train`` config section for ``steps_per_epoch`` optimiser steps an epoch."""
    total = cfg_train.epochs * steps_per_epoch
    if cfg_train.max_steps > 0:
        total = min(total, cfg_train.max_steps)
    return LRSchedule(
        kind=cfg_train.lr_schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        lr_drop=cfg_train.lr_drop,
        warmup_steps=cfg_train.warmup_steps,
        min_lr_ratio=cfg_train.min_lr_ratio,
    )
