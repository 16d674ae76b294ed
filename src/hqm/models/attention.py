"""Multi-head attention with ``nn.MultiheadAttention`` parameter names and an attention hook.

Parameters are named like ``nn.MultiheadAttention`` (``in_proj_weight``, ``in_proj_bias``,
``out_proj``) so DETR checkpoints load unchanged. Two execution paths compute the same function:

* fused ``scaled_dot_product_attention`` when nobody needs the attention map (encoder, learnable
  decoding at inference, GBS passes). Exceptions, both on the CPU: training with attention dropout,
  where PyTorch has no fused kernel (SDPA falls back to its math path, one Bernoulli draw per
  weight; the explicit path computes the same with the cheaper mask of :mod:`hqm.models.dropout`);
  and bf16 / fp16 (autocast) with at most ``SMALL_KEYS`` keys, where the fused CPU kernel is several
  times slower than the explicit path (forward + backward, 1 thread, torch 2.x: 12.1 vs 1.6 ms for
  8 x 8 heads x 64 x 64 keys, 9.7 vs 0.6 ms at 32 x 32, 13.3 vs 4.3 ms at 256 x 256; at 850 x 850
  keys the fused kernel wins, 19.8 vs 32.7 ms; fp32: fused 1.5 vs 1.8 ms). Re-measured with 2 threads,
  torch 2.14, batch 8 x 8 heads x N x N, head dim 16: explicit / fused 17.5 / 22.6 ms at N = 256,
  28.9 / 51.8 at 324 (a C3 map of a 144-px image), 54.2 / 54.9 at 400, 134.8 / 99.8 at 576: the
  crossover is near 400 keys;
* an explicit path when an :class:`AttentionHook` is given: the hook sees the pre-softmax scores
  (and may mask them) and the post-softmax probabilities (and may rescale them). AMM uses this seam.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.models.dropout import dropout

#: reduced-precision attention on the CPU over at most this many keys takes the explicit path
SMALL_KEYS = 384


class AttentionHook:
    """Observes or edits one decoder layer's cross-attention. Identity by default.

    ``pre_softmax(layer, logits)``: logits (B, T, Q, S), padded keys already at -inf; returns logits.
    ``post_softmax(layer, probs)``: probs (B, T, Q, S); returns probs (before attention dropout).
    """

    def pre_softmax(self, layer: int, logits: Tensor) -> Tensor:
        return logits

    def post_softmax(self, layer: int, probs: Tensor) -> Tensor:
        return probs


class RecordAttention(AttentionHook):
    """Keeps a detached copy of every layer's pre-softmax cross-attention scores (B, T, Q, S)."""

    def __init__(self):
        self.scores: dict[int, Tensor] = {}

    def pre_softmax(self, layer: int, logits: Tensor) -> Tensor:
        self.scores[layer] = logits.detach()
        return logits


class HookChain(AttentionHook):
    """Applies several hooks in order (e.g. recording the scores, then masking them)."""

    def __init__(self, hooks: list[AttentionHook]):
        self.hooks = hooks

    def pre_softmax(self, layer: int, logits: Tensor) -> Tensor:
        for h in self.hooks:
            logits = h.pre_softmax(layer, logits)
        return logits

    def post_softmax(self, layer: int, probs: Tensor) -> Tensor:
        for h in self.hooks:
            probs = h.post_softmax(layer, probs)
        return probs


class StackedHook(AttentionHook):
    """The hooks of two query groups decoded as one batch of 2B images (``EncodedImages.repeat(2)``):
    images 0 .. B-1 through ``first`` (None: unchanged), B .. 2B-1 through ``second``. In every layer
    call the first half goes first, so ``second`` may read what ``first`` recorded from the same call
    (AMM's copies ranking keys by the learnable queries' scores of that layer)."""

    def __init__(self, b: int, first: AttentionHook | None, second: AttentionHook):
        self.b = b
        self.first = first or AttentionHook()
        self.second = second

    def pre_softmax(self, layer: int, logits: Tensor) -> Tensor:
        return self._halves(logits, self.first.pre_softmax, self.second.pre_softmax, layer)

    def post_softmax(self, layer: int, probs: Tensor) -> Tensor:
        return self._halves(probs, self.first.post_softmax, self.second.post_softmax, layer)

    def _halves(self, x: Tensor, first, second, layer: int) -> Tensor:
        top, bottom = x[: self.b], x[self.b :]
        a = first(layer, top)
        c = second(layer, bottom)
        # hooks that hand their half back unchanged (recording, masking before the softmax only) cost no copy
        return x if a is top and c is bottom else torch.cat([a, c])


def chain_hooks(hooks: list[AttentionHook | None]) -> AttentionHook | None:
    real = [h for h in hooks if h is not None]
    return None if not real else real[0] if len(real) == 1 else HookChain(real)


class MultiheadAttention(nn.Module):
    """Batch-first multi-head attention: (B, L, D) queries, (B, S, D) keys/values -> (B, L, D)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"hidden size {embed_dim} is not divisible by {num_heads} heads")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        bsz, n, _ = x.shape
        return F.linear(x, w, b).view(bsz, n, self.num_heads, -1).transpose(1, 2)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        hook: AttentionHook | None = None,
        layer: int = 0,
        attn_bias: Tensor | None = None,
    ) -> Tensor:
        """key_padding_mask: (B, S) bool, True = ignore that key. A row whose keys are all padded
        attends to its first key instead of producing NaN (its output is never supervised).
        attn_bias: (B, T or 1, L, S) float added to the attention logits before the softmax (a
        spatial prior); a hook sees the logits with it."""
        d = self.embed_dim
        w_q, w_k, w_v = self.in_proj_weight.split(d)
        b_q, b_k, b_v = self.in_proj_bias.split(d)
        q = self._heads(query, w_q, b_q)
        k = self._heads(key, w_k, b_k)
        v = self._heads(value, w_v, b_v)
        bias = None
        if key_padding_mask is not None:
            kpm = key_padding_mask.clone()
            kpm[kpm.all(dim=1), 0] = False
            bias = torch.zeros(kpm.shape, dtype=q.dtype, device=q.device)
            bias = bias.masked_fill(kpm, float("-inf"))[:, None, None, :]  # (B, 1, 1, S)
        if attn_bias is not None:
            bias = attn_bias.to(q.dtype) if bias is None else bias + attn_bias.to(q.dtype)
        p = self.dropout if self.training else 0.0
        # fused SDPA unless a hook needs the map, or on the CPU: training with dropout (SDPA falls
        # back to the same explicit computation with a slower mask, see hqm.models.dropout) or
        # bf16 / fp16 over few keys (the fused CPU kernel is slower there; module docstring)
        cpu = q.device.type == "cpu"
        small_low_precision = cpu and q.dtype != torch.float32 and k.shape[-2] <= SMALL_KEYS
        if hook is None and (p == 0.0 or not cpu) and not small_low_precision:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            hook = hook or AttentionHook()
            logits = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)
            if bias is not None:
                logits = logits + bias
            logits = hook.pre_softmax(layer, logits)
            probs = hook.post_softmax(layer, logits.softmax(dim=-1))
            out = dropout(probs, p, True) @ v
        bsz, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(bsz, n, d))
