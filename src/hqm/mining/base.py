"""The contract between a detector and the hard-positive query miners (the two HQM seams).

A miner touches the detector only through

1. **extra query groups**: it builds positional queries (B, N, D) with a padding mask and asks the
   detector to decode them (``ctx.detector.decode(ctx.encoded, query_pos, query_mask, hook)``); the
   group shares the encoder memory, decoder layers, final norm and heads with the learnable queries
   but never attends to them;
2. **the cross-attention hook** (:class:`hqm.models.attention.AttentionHook`): it may read the
   learnable pass's recorded cross-attention scores (``ctx.reference_attention``) and mask the
   cross-attention of its own pass, or of the learnable pass (``learnable_hook``).

A miner returns ``{group_name: {"outputs": <decoder outputs>, "assignment": ...}}`` (see
``hqm.models.criterion`` for the two assignment kinds). Miners are ``nn.Module`` children of the
detector (``detector.miners``) so their parameters (GBS's F_p) train and checkpoint with it, but
they run only when the trainer names them in ``forward(..., mining=names)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from hqm.models.attention import AttentionHook


@dataclass
class MiningContext:
    """What a miner may use, built by the detector after the learnable pass.

    detector: the detector (``decode``, ``num_queries``, ``learnable_query_pos``).
    encoded:  the shared encoder output (``hqm.models.detector.EncodedImages``).
    targets:  training targets (normalised cxcywh boxes, see ``hqm.data``), one dict per image.
    learnable_outputs: the learnable pass's predictions (pred_* and aux_outputs).
    reference_attention: layer -> (B, T, Nq, HW) detached pre-softmax cross-attention scores of
        the learnable queries, or None when no active miner asked for it.
    """

    detector: Any
    encoded: Any
    targets: list[dict]
    learnable_outputs: dict
    reference_attention: dict[int, Tensor] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class QueryMiner(nn.Module):
    """Base class of hard-positive query miners."""

    #: True when the miner needs the learnable pass's cross-attention scores.
    needs_reference_attention: bool = False

    def learnable_hook(self) -> AttentionHook | None:
        """A hook applied to the learnable queries' own pass (AMM ``target: learnable``), or None."""
        return None

    def forward(self, ctx: MiningContext) -> dict[str, dict]:  # pragma: no cover - interface
        raise NotImplementedError
