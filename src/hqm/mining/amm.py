"""AMM, Attention Map Masking: implicit hard-positive queries whose best-attended keys are hidden.

In every decoder layer and head (cross-attention only), for every query row, take the top-K keys of a
reference score map and hide a fraction gamma of them in the hard pass's own attention:

* ``mask: exact_count`` (default, released code): exactly m = round(gamma * K) of the top-K ranks
  (rounded half up, as the spec states; the released code's ``int(gamma * K)`` truncates, one fewer
  when gamma * K's fraction is .5 or more, the same for K = 100, gamma = 0.4) are set to -inf before
  the softmax, so the remaining keys renormalise. As in the released code (``torch.rand(K).topk(...)``
  once per attention call) the masked RANKS are drawn once per layer call and shared by every image,
  head and query row; each row masks the keys it ranks at those positions.
* ``mask: exact_count_per_row``: the same count, -inf before the softmax, but the masked ranks are
  drawn independently for every image, head and query row (not in the released code or the paper; a
  variant for measuring whether sharing the ranks matters).
* ``mask: bernoulli`` (paper Algorithm 1): every top-K entry is dropped independently with
  probability gamma (M ~ Bernoulli(1 - gamma)), by a Hadamard product after the softmax, without
  renormalisation.

K is capped per image at its number of valid (unpadded) keys, and m at that number minus one so a
row always keeps a key. The selection uses detached scores only; nothing flows through it.
Variants: ``select: random`` masks gamma of ALL valid keys chosen uniformly per row (random scores
replace the reference, so each row's ranks are its own and ``exact_count`` and
``exact_count_per_row`` draw alike); ``reference: self`` ranks by the hard pass's own pre-mask
scores of the same layer call (computed inside the hook, no extra pass); ``target: learnable``
masks the learnable queries' own pass (``learnable_hook``) and adds no query group.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch
from torch import Tensor

from hqm.mining.base import LearnableAssignment, MinedGroup, MiningContext, QueryGroup, QueryMiner
from hqm.models.attention import AttentionHook
from hqm.models.detector import DetrHOIModel

EXACT_COUNT = ("exact_count", "exact_count_per_row")  # masks set to -inf before the softmax


def argsort_last(x: Tensor, descending: bool = False) -> Tensor:
    """Indices that sort ``x`` (..., S) along its last dimension (int64, same shape, on x's device).

    On the CPU through NumPy, whose vectorised quicksort (x86-simd-sort on AVX-512 / AVX2) sorts many
    short rows several times faster than ``torch.sort`` / ``torch.topk`` there: 1 thread, the demo's
    reference scores (8 x 8 heads x 32 queries x 90 keys) 0.9 ms against 4.5 ms for ``topk``, the
    R50 paper shape (2 x 8 x 100 x 850, top 100) 10 ms against 13 ms. Ties come in an unspecified
    order, as with ``topk``. Elsewhere ``torch.argsort``."""
    if x.device.type != "cpu":
        return x.argsort(dim=-1, descending=descending)
    a = x.detach().float().numpy()
    return torch.from_numpy(np.argsort(-a if descending else a, axis=-1))


def topk_mask(
    ref: Tensor, k: int, gamma: float, mode: str = "exact_count", valid: Tensor | None = None
) -> Tensor:
    """Which keys to hide: ref (B, T, Q, S) scores -> (B, T, Q, S) bool.

    valid (B, S) bool: unpadded keys (default: the finite entries of ``ref``'s first row).
    exact_count: round(gamma * K_b) ranks shared by all rows of the call; exact_count_per_row: as
    many ranks, drawn for each (image, head, query) row on its own; bernoulli: each top-K entry with
    probability gamma. K_b = min(k, valid keys of image b).

    Raises ValueError for an unknown mode.
    """
    b, _, _, s = ref.shape
    if valid is None:
        valid = torch.isfinite(ref[:, 0, 0])  # padding is the same for every head and row
    ref = ref.masked_fill(~valid[:, None, None], float("-inf"))
    n_valid = valid.sum(1)  # (B,)
    kk = min(k, s)
    k_b = n_valid.clamp(max=kk)  # (B,)
    idx = argsort_last(ref, descending=True)[..., :kk]  # (B, T, Q, kk): each row's top kk, best first
    rank = torch.arange(kk, device=ref.device)
    in_topk = rank[None] < k_b[:, None]  # (B, kk)
    if mode in EXACT_COUNT:
        m_b = torch.minimum(torch.floor(gamma * k_b.float() + 0.5).long(), (n_valid - 1).clamp(min=0))
        # one random order of the ranks: shared by every image and row of the call, or one per row
        if mode == "exact_count":
            u = torch.rand(1, 1, 1, kk, device=ref.device).expand(b, 1, 1, kk)
        else:
            u = torch.rand(idx.shape, device=ref.device)
        u = u.masked_fill(~in_topk[:, None, None], float("inf"))
        perm = argsort_last(u)
        # position of each rank in its random order: the inverse permutation
        order = torch.empty_like(perm).scatter_(-1, perm, torch.arange(kk, device=ref.device).expand_as(perm))
        hide = (order < m_b[:, None, None, None]).expand(idx.shape)
    elif mode == "bernoulli":
        hide = (torch.rand(idx.shape, device=ref.device) < gamma) & in_topk[:, None, None]
    else:
        raise ValueError(f"unknown AMM mask mode {mode!r}")
    return torch.zeros(ref.shape, dtype=torch.bool, device=ref.device).scatter_(-1, idx, hide)


class AttentionMasking(AttentionHook):
    """Masks one pass's cross-attention, layer by layer.

    reference: layer -> (B, T, Q, S) detached scores to rank keys by, or None to rank by the pass's
    own incoming logits (``reference: self``). select "random": rank by random scores and use K = S.
    mode: "exact_count" or "exact_count_per_row" (-inf before the softmax) | "bernoulli" (x 0 after
    the softmax).
    layers: the hook layers to mask (``detector.mining_layers``; CDN: the pair decoder only), None
    for every layer; the others pass through unchanged.
    """

    def __init__(
        self,
        reference: dict[int, Tensor] | None,
        k: int = 100,
        gamma: float = 0.4,
        mode: str = "exact_count",
        select: str = "topk",
        layers: Collection[int] | None = None,
    ):
        self.reference = reference
        self.layers = None if layers is None else frozenset(layers)
        self.k = k
        self.gamma = gamma
        self.mode = mode
        self.select = select
        self._pending: Tensor | None = None

    @torch.no_grad()
    def _mask(self, layer: int, logits: Tensor) -> Tensor:
        ref = logits.detach() if self.reference is None else self.reference[layer]
        if ref.shape != logits.shape:
            raise ValueError(
                f"reference scores {tuple(ref.shape)} do not match the pass {tuple(logits.shape)}"
            )
        valid = torch.isfinite(logits[:, 0, 0])  # (B, S) the pass's own unpadded keys
        k = self.k
        if self.select == "random":
            ref, k = torch.rand(ref.shape, device=ref.device), ref.shape[-1]
        return topk_mask(ref, k, self.gamma, self.mode, valid)

    def pre_softmax(self, layer: int, logits: Tensor) -> Tensor:
        if self.layers is not None and layer not in self.layers:
            return logits
        hide = self._mask(layer, logits)
        if self.mode in EXACT_COUNT:
            return logits.masked_fill(hide, float("-inf"))
        self._pending = hide
        return logits

    def post_softmax(self, layer: int, probs: Tensor) -> Tensor:
        if self.mode == "bernoulli" and self._pending is not None:
            hide, self._pending = self._pending, None
            return probs.masked_fill(hide, 0.0)
        return probs


def select_rows(scores: dict[int, Tensor], rows: list[Tensor], width: int) -> dict[int, Tensor]:
    """Per layer (B, T, Nq, S) -> (B, T, width, S): image i's rows ``rows[i]`` first, zeros after."""
    out = {}
    for layer, s in scores.items():
        sel = s.new_zeros(s.shape[0], s.shape[1], width, s.shape[3])
        for i, r in enumerate(rows):  # per image, not per query
            sel[i, :, : len(r)] = s[i][:, r.to(s.device)]
        out[layer] = sel
    return out


def matched_learnable(ctx: MiningContext, matcher) -> list:
    """The learnable queries' Hungarian assignment on every layer (last layer first), computed once
    per forward and kept in ``ctx.learnable_indices``; the miner's ``MinedGroup`` hands it to the
    criterion, which then does not solve it again."""
    if ctx.learnable_indices is None:
        out = ctx.learnable_outputs
        layers = [out] + list(out.get("aux_outputs", []))[::-1]
        ctx.learnable_indices = [matcher(o, ctx.targets) for o in layers]
    return ctx.learnable_indices


class AMMMiner(QueryMiner):
    """AMM hard queries: copies of the learnable positional queries decoded with masked attention.

    With ``queries: all`` (and the final norm) the copies are decoded in the learnable queries' call,
    as B more images of a stacked batch, where the detector allows it (``stacked_copies``; QPIC, CDN);
    each layer's masking then ranks keys by the learnable half's scores of the same layer call, which
    are the scores a separate learnable pass would record.

    queries "all": all Nq copies, ``LearnableAssignment(query_map=None)`` (the copies take the
    learnable queries' per-layer matches); "matched": only the copies of queries matched on some
    layer (needs ``matcher``), with a ``query_map``. Only the detector's ``mining_layers`` are
    masked. skip_final_norm reproduces the released combined model (heads on the un-normalised
    decoder output).
    """

    def __init__(
        self,
        k: int = 100,
        gamma: float = 0.4,
        mask: str = "exact_count",
        select: str = "topk",
        reference: str = "learnable",
        target: str = "hard_queries",
        queries: str = "all",
        skip_final_norm: bool = False,
        matcher=None,
        name: str = "amm",
    ):
        super().__init__()
        if queries == "matched" and matcher is None:
            raise ValueError("amm.queries=matched needs a matcher")
        self.name = name
        self.k, self.gamma, self.mask, self.select = k, gamma, mask, select
        self.reference, self.target, self.queries = reference, target, queries
        self.skip_final_norm = skip_final_norm
        self.matcher = matcher
        self.needs_reference_attention = (
            target == "hard_queries" and reference == "learnable" and select == "topk"
        )

    def masking(self, reference: dict[int, Tensor] | None, detector: DetrHOIModel) -> AttentionMasking:
        return AttentionMasking(
            reference, self.k, self.gamma, self.mask, self.select, layers=detector.mining_layers
        )

    def learnable_hook(self, detector: DetrHOIModel) -> AttentionHook | None:
        return self.masking(None, detector) if self.target == "learnable" else None

    def stacked_copies(self, detector: DetrHOIModel, reference: dict[int, Tensor] | None):
        """``queries: all`` (the released code's and the paper's AMM): the masking of the copies,
        decoded beside the learnable queries in one stacked batch (``QueryMiner.stacked_copies``)."""
        if self.target != "hard_queries" or self.queries != "all" or self.skip_final_norm:
            return None
        hook = self.masking(reference if self.needs_reference_attention else None, detector)
        return hook, lambda ctx, outputs: {
            self.name: MinedGroup(outputs, LearnableAssignment(None), ctx.learnable_indices)
        }

    def forward(self, ctx: MiningContext) -> dict[str, MinedGroup]:
        if self.target == "learnable":
            return {}  # the learnable pass itself was masked ("w/o Q^m")
        ref = ctx.reference_attention if self.needs_reference_attention else None
        bsz = ctx.encoded.memory.shape[0]
        learnable = ctx.detector.learnable_queries(ctx.encoded)
        query_pos, query_mask, query_map = learnable.pos, None, None
        reference = learnable.reference
        if self.queries == "matched":
            layer_idx = matched_learnable(ctx, self.matcher)
            query_map = [torch.unique(torch.cat([idx[i][0] for idx in layer_idx])) for i in range(bsz)]
            width = max(max((len(r) for r in query_map), default=0), 1)
            query_pos = _pad_rows(query_pos, query_map, width)
            if reference is not None:
                reference = _pad_rows(reference, query_map, width)
            query_mask = torch.ones(bsz, width, dtype=torch.bool, device=query_pos.device)
            for i, r in enumerate(query_map):
                query_mask[i, : len(r)] = False
            if ref is not None:
                ref = select_rows(ref, query_map, width)
        group = QueryGroup(query_pos, query_mask, reference)
        hook = self.masking(ref, ctx.detector)
        outputs = ctx.detector.decode(ctx.encoded, group, hook, final_norm=not self.skip_final_norm)
        return {self.name: MinedGroup(outputs, LearnableAssignment(query_map), ctx.learnable_indices)}


def _pad_rows(x: Tensor, rows: list[Tensor], width: int) -> Tensor:
    """x (B, N, D) -> (B, width, D): image i's rows ``rows[i]`` first, zeros after."""
    out = x.new_zeros(x.shape[0], width, x.shape[2])
    for i, r in enumerate(rows):
        out[i, : len(r)] = x[i, r.to(x.device)]
    return out
