"""The contract between a detector and the hard-positive query miners (the two HQM seams).

A miner touches the detector only through

1. **extra query groups**: it builds a :class:`QueryGroup` (positional queries (B, N, D), a padding
   mask, optionally reference boxes) and asks the detector to decode it
   (``ctx.detector.decode(ctx.encoded, group, hook)``); the group shares the encoder memory, the
   decoder layers, final norms and heads with the learnable queries but never attends to them. A
   detector with several decoders (CDN) runs the group through all of them;
2. **the cross-attention hook** (:class:`hqm.models.attention.AttentionHook`): it may read the
   learnable pass's recorded cross-attention scores (``ctx.reference_attention``, keyed by hook
   layer) and mask the cross-attention of its own pass, or of the learnable pass (``learnable_hook``),
   on the layers the detector opens to mining (``detector.mining_layers``: QPIC's decoder, CDN's
   pair decoder).

Instead of decoding in ``forward``, a miner may hand its queries to the learnable queries' own
decoder call (``stacked_copies`` for copies of the learnable group, ``joined_queries`` for a group of its
own; see ``hqm.models.detector.DetrHOIModel.decode_learnable``): the same function, one call.

A miner returns ``{group_name: MinedGroup(outputs, assignment)}`` with a :class:`FixedAssignment`
(hard query j <-> GT pair j) or a :class:`LearnableAssignment` (copies of the learnable queries;
see ``hqm.models.group_criterion``). Miners are ``nn.Module`` children of the
detector (``detector.miners``) so their parameters (GBS's F_p) train and checkpoint with it, but
they run only when the trainer names them in ``forward(..., mining=names)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from hqm.models.attention import AttentionHook
from hqm.models.detector import DetrHOIModel, MiningContext, QueryGroup
from hqm.models.group_criterion import FixedAssignment, LearnableAssignment, MinedGroup


class QueryMiner(nn.Module):
    """Base class of hard-positive query miners."""

    #: True when the miner needs the learnable pass's cross-attention scores.
    needs_reference_attention: bool = False

    def learnable_hook(self, detector: DetrHOIModel) -> AttentionHook | None:
        """A hook applied to the learnable queries' own pass (AMM ``target: learnable``), or None."""
        return None

    def stacked_copies(
        self, detector: DetrHOIModel, reference: dict[int, Tensor] | None
    ) -> tuple[AttentionHook, Callable[[MiningContext, dict], dict[str, MinedGroup]]] | None:
        """For a miner whose hard queries are copies of the learnable query group, decoded exactly
        like it except for a hook on their cross-attention (AMM ``queries: all``): that hook and
        ``finish(ctx, outputs) -> groups``. The detector then decodes the learnable queries and the
        copies as one batch of 2B images (one decoder call instead of two: the same function with
        less per-call overhead) and hands the copies' outputs to ``finish`` instead of calling
        ``forward``. ``reference``: the learnable queries' recorded scores
        (``ctx.reference_attention``), each layer's entry written before the hook sees that layer,
        when ``needs_reference_attention``. None (default): the miner decodes its own groups in
        ``forward``."""
        return None

    def joined_queries(
        self, detector: DetrHOIModel, targets: list[dict], with_reference: bool
    ) -> tuple[QueryGroup, Callable[[MiningContext, dict], dict[str, MinedGroup]]] | None:
        """For a miner whose hard queries depend on nothing the learnable pass computes and need no
        attention hook (GBS): its query group and ``finish(ctx, outputs) -> groups``. The detector
        then decodes the group in the learnable queries' call, joined along the query axis with a
        block-diagonal self-attention mask (``hqm.models.detector.join_groups``). Offered only when
        the group carries reference points exactly when ``with_reference`` (the learnable group's).
        None (default): the miner decodes its own groups in ``forward``."""
        return None

    def forward(self, ctx: MiningContext) -> dict[str, MinedGroup]:  # pragma: no cover - interface
        raise NotImplementedError


__all__ = [
    "FixedAssignment",
    "LearnableAssignment",
    "MinedGroup",
    "MiningContext",
    "QueryGroup",
    "QueryMiner",
]
