"""The four-stage DETR-style HOI forward shared by every detector, and the two mining seams.

::

    images, masks ──backbone──> C5 ──input_proj──> encoder ──> memory  (EncodedImages)
                                                                  │
          learnable queries (QueryGroup) ─────────> decode ──> heads ──> outputs (pred_*, aux)
          mined query groups (training only) ─────> decode ──> heads ──> outputs["groups"][name]
          Group DETR's extra groups (training) ───> decode ──> heads ──> outputs["groups"]["group_detr"]
          encoder pair proposals (model.two_stage, training) ─────────> outputs["groups"]["encoder"]
                         ^ cross-attention hook (AMM), layers numbered across every decoder ^

A detector subclass implements ``encode``, ``decode`` and ``learnable_queries`` (and says which of
its cross-attention layers hard queries may mask, ``mining_layers``); mining code only sees those
(see ``hqm.mining.base``). ``decode`` may chain several decoders (CDN: a pair decoder whose output
embeddings are the positional queries of an interaction decoder); the hook's ``layer`` argument then
counts across all of them in call order. Nothing here depends on the epoch or on mutable flags: the
trainer names the active miners in every call.

A mined group never attends to another group, but it need not take a decoder call of its own: where
the detector allows it (``shares_decoder_calls``), AMM's copies ride in the learnable queries' call as
B more images of a stacked batch and GBS's queries as more queries behind a block-diagonal
self-attention mask (``decode_learnable``). The function is the same; the per-call overhead, which
dominates a small model's decoder, is paid once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from hqm.models.attention import AttentionHook, RecordAttention, StackedHook, chain_hooks
from hqm.models.group_criterion import HungarianAssignment, MinedGroup

if TYPE_CHECKING:
    from hqm.mining.base import QueryMiner
    from hqm.models.matcher import Indices


#: ``EncodedImages.shared`` key (and loss-group name) of the encoder's pair proposals (``model.two_stage``)
ENCODER_PROPOSALS = "encoder"


@dataclass(frozen=True)
class DetectorSpec:
    """A registry entry (``hqm.detectors.DETECTORS``): how to build one detector and its companions.

    build_model(cfg, num_obj_classes, num_verb_classes) -> the detector without miners;
    build_matcher(cfg) -> the Hungarian matcher of its learnable queries (also used by miners that
    need the learnable assignment inside forward); build_criterion(cfg, num_obj_classes, matcher,
    class_counts) -> its group criterion (``class_counts``: the training set's (object, verb) label
    counts or None); build_postprocessor(cfg, meta) -> outputs to ``HOIPredictions``.
    """

    name: str
    build_model: Callable[..., DetrHOIModel]
    build_matcher: Callable[..., nn.Module]
    build_criterion: Callable[..., nn.Module]
    build_postprocessor: Callable[..., nn.Module]
    summary: str = ""


@dataclass
class EncodedImages:
    """The encoder's output, shared by every query group of a forward.

    memory, pos: (B, HW, D); mask: (B, HW) bool, True on padding; shape: (H', W') of the feature map.
    shared: state computed once per forward that every query group must see, keyed by name (a
    detector whose interaction queries point into an instance set -- HOTR -- keeps that set here, so
    mined groups point into the same instances as the learnable queries).
    """

    memory: Tensor
    pos: Tensor
    mask: Tensor
    shape: tuple[int, int]
    shared: dict[str, Any] = field(default_factory=dict)

    def repeat(self, n: int) -> EncodedImages:
        """The images n times over as one batch of n * B, copy-major (row ``c * B + i`` is image i), for
        n query groups decoded in one call without attending to one another; ``shared`` is kept as is."""
        return EncodedImages(
            self.memory.repeat(n, 1, 1),
            self.pos.repeat(n, 1, 1),
            self.mask.repeat(n, 1),
            self.shape,
            self.shared,
        )


@dataclass
class QueryGroup:
    """One set of queries decoded together (they attend to each other, never to another group).

    pos: (B, Q, D) positional queries (the decoder content starts at zeros);
    mask: (B, Q) bool, True on padding slots (not attended to, never supervised), or None;
    reference: (B, Q, 4) reference points / boxes in normalised image coordinates for detectors with
    spatial queries, or None (the detector derives them from ``pos`` when it needs them);
    self_attn_bias: (B, 1, Q, Q) float added to the decoder's self-attention logits, -inf where query
    i must not see query j, for several groups decoded as one (``join_groups``), or None.
    """

    pos: Tensor
    mask: Tensor | None = None
    reference: Tensor | None = None
    self_attn_bias: Tensor | None = None

    def repeat(self, n: int) -> QueryGroup:
        """The group n times over, copy-major, matching ``EncodedImages.repeat(n)``."""
        return QueryGroup(
            self.pos.repeat(n, 1, 1),
            None if self.mask is None else self.mask.repeat(n, 1),
            None if self.reference is None else self.reference.repeat(n, 1, 1),
            None if self.self_attn_bias is None else self.self_attn_bias.repeat(n, 1, 1, 1),
        )

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    @property
    def num_queries(self) -> int:
        return self.pos.shape[1]

    def require_positional_only(self, detector: str) -> None:
        """Raises ``ValueError`` when the group carries reference boxes ``detector`` cannot decode."""
        if self.reference is not None:
            raise ValueError(
                f"{detector} decodes positional queries only (QueryGroup.reference must be None)"
            )


@dataclass
class MiningContext:
    """What a miner may use, built by the detector after the learnable pass.

    detector: the detector (``decode``, ``learnable_queries``, ``mining_layers``, ``hidden_dim``).
    encoded:  the shared encoder output.
    targets:  training targets (normalised cxcywh boxes, see ``hqm.data``), one dict per image.
    learnable_outputs: the learnable pass's predictions (pred_* and aux_outputs).
    reference_attention: hook layer -> (B, T, Nq, HW) detached pre-softmax cross-attention scores of
        the learnable queries, or None when no active miner asked for it.
    learnable_indices: the learnable queries' Hungarian assignment per layer (last layer first) once
        a miner computed it inside forward (AMM ``queries: matched``, CJL ``learnable``); miners hand
        it to the criterion in their ``MinedGroup`` so it is not solved twice.
    """

    detector: Any
    encoded: EncodedImages
    targets: list[dict]
    learnable_outputs: dict
    reference_attention: dict[int, Tensor] | None = None
    learnable_indices: list[Indices] | None = None


def join_groups(groups: Sequence[QueryGroup]) -> QueryGroup:
    """Several query groups of the same images as one group decoded in one call, concatenated along
    the queries in order, with a block-diagonal self-attention mask (``self_attn_bias``): a query sees
    the unpadded queries of its own group only, as in a decoder pass of its own (the spec's
    alternative to separate passes, DN-DETR's denoising groups); a padding slot also sees itself, so
    that the slots of an image without pairs have something to attend to (their outputs are never
    supervised). Every group must carry reference points or none may.

    Raises ValueError for groups that mix reference points and none, or that already join groups."""
    if len({g.reference is None for g in groups}) > 1:
        raise ValueError("join_groups: some groups carry reference points and some do not")
    if any(g.self_attn_bias is not None for g in groups):
        raise ValueError("join_groups: a group is already a join of groups")
    pos = torch.cat([g.pos for g in groups], dim=1)
    b, q, dev = pos.shape[0], pos.shape[1], pos.device
    pad = torch.cat(
        [
            torch.zeros(b, g.num_queries, dtype=torch.bool, device=dev) if g.mask is None else g.mask
            for g in groups
        ],
        dim=1,
    )
    ids = torch.cat([torch.full((g.num_queries,), i, device=dev) for i, g in enumerate(groups)])
    blocked = (ids[:, None] != ids[None, :])[None] | pad[:, None, :]  # (B, Q, Q): row i may not see key j
    blocked &= ~(torch.eye(q, dtype=torch.bool, device=dev)[None] & pad[:, :, None])
    bias = torch.zeros(b, 1, q, q, dtype=pos.dtype, device=dev).masked_fill(blocked[:, None], float("-inf"))
    reference = None if groups[0].reference is None else torch.cat([g.reference for g in groups], dim=1)
    return QueryGroup(pos, None, reference, bias)


def split_outputs(outputs: Any, sizes: Sequence[int], dim: int) -> list[Any]:
    """The outputs of one decode over several groups -> one outputs per group, split along ``dim``
    into ``sizes`` (dim 0: a batch stacked by ``EncodedImages.repeat``; dim 1: groups joined by
    ``join_groups``), through nested dicts, lists and tuples; other values go to every part.

    Raises ValueError for a tensor whose size along ``dim`` is not ``sum(sizes)``."""
    if isinstance(outputs, Tensor):
        if outputs.shape[dim] != sum(sizes):
            raise ValueError(
                f"a decode over groups of sizes {list(sizes)} along dim {dim} returned a tensor of shape "
                f"{tuple(outputs.shape)}"
            )
        return list(outputs.split(list(sizes), dim=dim))
    if isinstance(outputs, dict):
        parts = {k: split_outputs(v, sizes, dim) for k, v in outputs.items()}
        return [{k: p[i] for k, p in parts.items()} for i in range(len(sizes))]
    if isinstance(outputs, (list, tuple)):
        parts = [split_outputs(v, sizes, dim) for v in outputs]
        return [type(outputs)(p[i] for p in parts) for i in range(len(sizes))]
    return [outputs] * len(sizes)


class DetrHOIModel(nn.Module):
    """Base class: orchestrates the learnable pass and the mined query groups.

    Subclasses set ``num_queries`` and ``hidden_dim`` and implement the three stages below.
    """

    num_queries: int
    hidden_dim: int
    group_detr: int = 1
    #: whether ``decode`` takes several query groups in one call: a batch of n * B images stacked by
    #: ``EncodedImages.repeat`` (Group DETR's groups, AMM's copies) and groups joined by ``join_groups``
    #: (GBS); False for a detector whose decode reads per-image state from ``EncodedImages.shared``
    #: (HOTR's instance set): there every miner decodes its group in a call of its own
    shares_decoder_calls: bool = True

    def __init__(self):
        super().__init__()
        self.miners = nn.ModuleDict()

    # -- to implement ---------------------------------------------------------------------------
    def encode(self, images: Tensor, masks: Tensor) -> EncodedImages:
        raise NotImplementedError

    def decode(
        self,
        enc: EncodedImages,
        queries: QueryGroup,
        hook: AttentionHook | None = None,
        final_norm: bool = True,
    ) -> dict:
        """Decode one query group into the output contract of ``forward`` (without ``groups``).

        hook: sees / edits the cross-attention of every decoder layer, numbered 0 .. L-1 across all
        of the detector's decoders in call order; final_norm=False skips the decoder's final norm
        before the heads (reproduces the released HQM combined model, ``amm.skip_final_norm``)."""
        raise NotImplementedError

    def learnable_queries(self, enc: EncodedImages) -> QueryGroup:
        """The learnable query group of the images encoded in ``enc``: ``self.query_embed``
        (``nn.Embedding(Q, D)``, DETR's learned positional queries) for every image; override for
        other query sets (QPIC's ``model.two_stage`` adds reference points selected from ``enc``)."""
        return QueryGroup(self.query_embed.weight[None].expand(enc.memory.shape[0], -1, -1))

    @property
    def mining_layers(self) -> range:
        """The hook layer numbers whose cross-attention hard queries (AMM) may mask."""
        raise NotImplementedError

    @property
    def decodes_reference_points(self) -> bool:
        """Whether ``decode`` takes ``QueryGroup.reference`` (B, Q, 4) points; False: positional
        queries only (DETR / QPIC / CDN / HOTR as published). Miners give their queries points only
        then (GBS: the shifted boxes' centres)."""
        return False

    # -- shared ---------------------------------------------------------------------------------
    def init_query_groups(self, group_detr: int) -> None:
        """``model.group_detr`` = K (Group DETR, Chen et al., ICCV 2023, "Fast DETR Training with
        Group-Wise One-to-Many Assignment"): K - 1 extra groups of ``num_queries`` learned positional
        queries (``group_query_embed``, ((K - 1) * Nq, D)) decoded at training time only, with the same
        decoder and heads, never attending to another group, each matched one-to-one to the GT pairs
        on its own (``HungarianAssignment``). Every GT pair is thus supervised K times per step, which
        speeds up training; evaluation and inference decode the learnable queries only. Call after
        ``num_queries`` and ``hidden_dim`` are set; K = 1 adds nothing (released checkpoints)."""
        if group_detr < 1:
            raise ValueError(f"model.group_detr={group_detr} must be >= 1")
        self.group_detr = group_detr
        if group_detr > 1:
            self.group_query_embed = nn.Embedding((group_detr - 1) * self.num_queries, self.hidden_dim)

    def decode_query_groups(self, enc: EncodedImages) -> MinedGroup:
        """Group DETR's K - 1 extra groups, decoded as one batch of (K - 1) * B images (copy-major:
        row ``g * B + i`` is group g + 1 on image i), so that no group attends to another."""
        g, b = self.group_detr - 1, enc.memory.shape[0]
        pos = self.group_query_embed.weight.view(g, 1, self.num_queries, -1).expand(g, b, -1, -1)
        outputs = self.decode(enc.repeat(g), QueryGroup(pos.flatten(0, 1)))
        return MinedGroup(outputs, HungarianAssignment(repeat=g))

    def attach_miners(self, miners: dict[str, QueryMiner]) -> None:
        for name, miner in miners.items():
            self.miners[name] = miner

    def miner_parameters(self, exclude: Sequence[str] = ()) -> list[nn.Parameter]:
        """Parameters of the attached miners not named in ``exclude`` (the idle ones of a step)."""
        return [p for n, m in self.miners.items() if n not in exclude for p in m.parameters()]

    def forward(
        self, images: Tensor, masks: Tensor, targets: list[dict] | None = None, mining: Sequence[str] = ()
    ) -> dict:
        """images (B, 3, H, W) normalised; masks (B, H, W) bool, True on padding.

        Returns ``pred_obj_logits`` (B, Nq, C_obj + 1), ``pred_verb_logits`` (B, Nq, C_verb),
        ``pred_sub_boxes`` / ``pred_obj_boxes`` (B, Nq, 4) normalised cxcywh, ``aux_outputs`` (the
        same per earlier decoder layer) and, when ``mining`` names active miners (training only,
        ``targets`` required), ``groups``: {group name: ``hqm.models.group_criterion.MinedGroup``};
        in training mode with ``group_detr`` > 1, ``groups["group_detr"]`` too, and with encoder
        proposals (``model.two_stage``), ``groups["encoder"]``.
        """
        enc = self.encode(images, masks)
        active = [self.miners[name] for name in mining]
        if active and targets is None:
            raise ValueError("mining needs the training targets")
        record = RecordAttention() if any(m.needs_reference_attention for m in active) else None
        hook = chain_hooks([record] + [m.learnable_hook(self) for m in active])
        outputs, finish = self.decode_learnable(enc, active, targets, record, hook)
        groups: dict[str, MinedGroup] = {}
        if active:
            ctx = MiningContext(self, enc, targets, outputs, record.scores if record else None)
            for miner in active:
                groups.update(finish[miner](ctx) if miner in finish else miner(ctx))
        if self.training and self.group_detr > 1:
            groups["group_detr"] = self.decode_query_groups(enc)
        if self.training and ENCODER_PROPOSALS in enc.shared:
            # ``model.two_stage``: the encoder's pair proposals, matched one-to-one on their own
            groups[ENCODER_PROPOSALS] = MinedGroup(enc.shared[ENCODER_PROPOSALS], HungarianAssignment())
        if groups:
            outputs["groups"] = groups
        return outputs

    def decode_learnable(
        self,
        enc: EncodedImages,
        active: list[QueryMiner],
        targets: list[dict] | None,
        record: RecordAttention | None,
        hook: AttentionHook | None,
    ) -> tuple[dict, dict[QueryMiner, Callable[[MiningContext], dict[str, MinedGroup]]]]:
        """The learnable queries' decode, which may carry active miners' queries in the same call
        (``shares_decoder_calls``): one call instead of two computes the same function with less
        per-call overhead (what it saves: ``benchmarks/train_step.py --separate``).

        * a miner's masked copies of the learnable queries (``QueryMiner.stacked_copies``, AMM
          ``queries: all``; the first active miner that offers them) as B more images of a stacked
          batch, their hook reading the learnable half's scores of the same layer call;
        * groups of their own (``QueryMiner.joined_queries``, GBS) joined to the learnable queries
          along the query axis with a block-diagonal self-attention mask (``join_groups``), when
          nothing hooks the learnable pass. Beside stacked copies (PJL) the groups of the miners
          named before the copier are built before the stacked call and decoded in calls of their
          own after it: the miners draw their random numbers in the order of separate passes.

        With dropout (``model.dropout`` > 0) the shared call draws its dropout masks over the
        stacked / joined tensors: the same distribution as separate passes, other draws.

        Returns the learnable outputs and, per miner served here, what turns the context into its
        groups; the other active miners decode their groups in ``forward`` (``miner(ctx)``)."""
        queries = self.learnable_queries(enc)
        if not self.shares_decoder_calls or not active:
            return self.decode(enc, queries, hook=hook), {}
        with_reference = queries.reference is not None
        finish: dict[QueryMiner, Callable[[MiningContext], dict[str, MinedGroup]]] = {}
        for i, copier in enumerate(active):
            offer = copier.stacked_copies(self, record.scores if record else None)
            if offer is None:
                continue
            copies_hook, done_copies = offer
            earlier = {m: m.joined_queries(self, targets, with_reference) for m in active[:i]}
            b = queries.batch_size
            both = self.decode(enc.repeat(2), queries.repeat(2), hook=StackedHook(b, hook, copies_hook))
            outputs, copies = split_outputs(both, [b, b], dim=0)
            finish[copier] = lambda ctx, f=done_copies, o=copies: f(ctx, o)
            for miner, offer in earlier.items():
                if offer is not None:
                    group, done = offer
                    finish[miner] = lambda ctx, g=group, f=done: f(ctx, self.decode(enc, g))
            return outputs, finish
        offers = {}
        if hook is None:
            for miner in active:
                offer = miner.joined_queries(self, targets, with_reference)
                if offer is not None:
                    offers[miner] = offer
        if not offers:
            return self.decode(enc, queries, hook=hook), {}
        parts = [queries] + [group for group, _ in offers.values()]
        decoded = self.decode(enc, join_groups(parts))
        outputs, *mined = split_outputs(decoded, [g.num_queries for g in parts], dim=1)
        for (miner, (_, done)), out in zip(offers.items(), mined):
            finish[miner] = lambda ctx, f=done, o=out: f(ctx, o)
        return outputs, finish

    @torch.no_grad()
    def inference(self, images: Tensor, masks: Tensor) -> dict:
        """The learnable pass only; mining never runs here."""
        return self.forward(images, masks)
