"""The four-stage DETR-style HOI forward shared by every detector, and the two mining seams.

::

    images, masks ──backbone──> C5 ──input_proj──> encoder ──> memory  (EncodedImages)
                                                                  │
          learnable queries ──────────────────────> decoder ──> heads ──> outputs (pred_*, aux)
          mined query groups (training only) ─────> decoder ──> heads ──> outputs["groups"][name]
                         ^ cross-attention hook (AMM) ^

A detector subclass implements ``encode``, ``decode`` and ``learnable_query_pos``; mining code only
sees those (see ``hqm.mining.base``). Nothing here depends on the epoch or on mutable flags: the
trainer names the active miners in every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from hqm.models.attention import AttentionHook, RecordAttention, chain_hooks

if TYPE_CHECKING:
    from hqm.mining.base import QueryMiner


@dataclass
class EncodedImages:
    """memory, pos: (B, HW, D); mask: (B, HW) bool, True on padding; shape: (H', W') of the map."""

    memory: Tensor
    pos: Tensor
    mask: Tensor
    shape: tuple[int, int]


class DetrHOIModel(nn.Module):
    """Base class: orchestrates the learnable pass and the mined query groups."""

    num_queries: int
    hidden_dim: int

    def __init__(self):
        super().__init__()
        self.miners = nn.ModuleDict()

    # -- to implement ---------------------------------------------------------------------------
    def encode(self, images: Tensor, masks: Tensor) -> EncodedImages:
        raise NotImplementedError

    def decode(
        self,
        enc: EncodedImages,
        query_pos: Tensor,
        query_mask: Tensor | None = None,
        hook: AttentionHook | None = None,
        final_norm: bool = True,
    ) -> dict:
        raise NotImplementedError

    def learnable_query_pos(self, batch_size: int) -> Tensor:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------
    def attach_miners(self, miners: dict[str, QueryMiner]) -> None:
        for name, miner in miners.items():
            self.miners[name] = miner

    def forward(
        self, images: Tensor, masks: Tensor, targets: list[dict] | None = None, mining: Sequence[str] = ()
    ) -> dict:
        """images (B, 3, H, W) normalised; masks (B, H, W) bool, True on padding.

        Returns ``pred_obj_logits`` (B, Nq, C_obj + 1), ``pred_verb_logits`` (B, Nq, C_verb),
        ``pred_sub_boxes`` / ``pred_obj_boxes`` (B, Nq, 4) normalised cxcywh, ``aux_outputs`` (the
        same per earlier decoder layer) and, when ``mining`` names active miners (training only,
        ``targets`` required), ``groups``: {group name: {"outputs", "assignment"}}.
        """
        enc = self.encode(images, masks)
        active = [self.miners[name] for name in mining]
        record = RecordAttention() if any(m.needs_reference_attention for m in active) else None
        hook = chain_hooks([record] + [m.learnable_hook() for m in active])
        outputs = self.decode(enc, self.learnable_query_pos(images.shape[0]), hook=hook)
        if active:
            if targets is None:
                raise ValueError("mining needs the training targets")
            from hqm.mining.base import MiningContext  # mining imports models, not the reverse

            ctx = MiningContext(self, enc, targets, outputs, record.scores if record else None)
            outputs["groups"] = {}
            for miner in active:
                outputs["groups"].update(miner(ctx))
        if self.training and len(self.miners):
            # Miners idle this step (AJL) still take part in the graph with a zero, so DDP sees every
            # parameter every step (static graph; no find_unused_parameters).
            idle = [p for n, m in self.miners.items() if n not in mining for p in m.parameters()]
            if idle:
                outputs["unused_params_zero"] = sum(p.sum() for p in idle) * 0.0
        return outputs

    @torch.no_grad()
    def inference(self, images: Tensor, masks: Tensor) -> dict:
        """The learnable pass only; mining never runs here."""
        return self.forward(images, masks)
