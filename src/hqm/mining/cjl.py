"""CJL, cascaded joint learning: one set of GBS queries whose cross-attention is AMM-masked.

The hard queries are built exactly as GBS builds them (shifted GT pairs -> F_p) and supervised with
the same fixed assignment; their decoder pass masks the top-K keys like AMM. The ranking reference
(``mining.cjl_reference``) is either

* ``self`` (default): the GBS queries' own scores from an extra UNMASKED pass of the same queries
  (no gradient; same layers and memory), layer by layer, like AMM's reference comes from a pass of
  its own query set. This ranks each layer of the masked pass by the unmasked pass's layer, whose
  input differs from layer 2 on: the reference is what the hard query WOULD attend to;
* ``learnable``: the learnable query matched (Hungarian, last decoder layer, reused on every layer)
  to the same GT pair; its recorded cross-attention rows are gathered per pair. With more GT pairs
  than queries an unmatched pair falls back to query 0's row.
"""

from __future__ import annotations

import torch

from hqm.mining.amm import AttentionMasking, matched_learnable, select_rows
from hqm.mining.base import MiningContext, QueryGroup
from hqm.mining.gbs import GBSMiner
from hqm.models.attention import RecordAttention


class CJLMiner(GBSMiner):
    """GBS queries + AMM masking. amm: dict of ``AttentionMasking`` arguments (k, gamma, mode, select)."""

    def __init__(self, hidden_dim: int, amm: dict, reference: str = "self", matcher=None, **gbs_kwargs):
        super().__init__(hidden_dim, name="cjl", **gbs_kwargs)
        if reference == "learnable" and matcher is None:
            raise ValueError("mining.cjl_reference=learnable needs a matcher")
        self.amm = dict(amm)
        self.reference = reference
        self.matcher = matcher
        self.needs_reference_attention = reference == "learnable"

    def joined_queries(self, detector, targets: list[dict], with_reference: bool):
        """None: the masked pass needs a hook of its own, so it takes a decoder call of its own."""
        return None

    def hook(self, ctx: MiningContext, group: QueryGroup, indices) -> AttentionMasking:
        layers = ctx.detector.mining_layers
        if self.reference == "self":
            record = RecordAttention()
            with torch.no_grad():
                ctx.detector.decode(
                    ctx.encoded, QueryGroup(group.pos.detach(), group.mask, group.reference), record
                )
            return AttentionMasking(record.scores, **self.amm, layers=layers)
        last = matched_learnable(ctx, self.matcher)[0]  # last decoder layer's (query, target) per image
        rows = []
        for (q, t), (_, tgt) in zip(last, indices):  # per image: GT pair j -> its learnable query
            row = torch.zeros(len(tgt), dtype=torch.int64)
            row[t] = q
            rows.append(row)
        ref = select_rows(ctx.reference_attention, rows, group.num_queries)
        return AttentionMasking(ref, **self.amm, layers=layers)
