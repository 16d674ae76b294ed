"""DETR transformer: post-norm encoder and decoder with per-layer (auxiliary) outputs.

Module and parameter names follow DETR (``transformer.encoder.layers.N.self_attn``,
``transformer.decoder.layers.N.multihead_attn``, ``transformer.decoder.norm``) so checkpoints load.
The decoder is called once per query group (learnable queries, GBS queries, AMM copies ...): groups
never attend to each other, they share the encoder memory, the layers and the final norm.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.models.attention import AttentionHook, MultiheadAttention
from hqm.models.dropout import Dropout

#: ``(layer, previous output (B, Q, D)) -> (cross-attention positional query or None, logit bias or None)``
CrossAttentionPrior = Callable[[int, Tensor], tuple[Tensor | None, Tensor | None]]


class EncoderLayer(nn.Module):
    def __init__(self, d: int, nheads: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d, nheads, dropout)
        self.linear1 = nn.Linear(d, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, key_padding_mask=mask)))
        ff = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout2(ff))


class DecoderLayer(nn.Module):
    def __init__(self, d: int, nheads: int, dim_ff: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(d, nheads, dropout)
        self.multihead_attn = MultiheadAttention(d, nheads, dropout)
        self.linear1 = nn.Linear(d, dim_ff)
        self.linear2 = nn.Linear(dim_ff, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.norm3 = nn.LayerNorm(d)
        self.dropout = Dropout(dropout)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        query_pos: Tensor,
        pos: Tensor,
        memory_mask: Tensor,
        query_mask: Tensor | None,
        hook: AttentionHook | None,
        layer: int,
        cross_pos: Tensor | None = None,
        cross_bias: Tensor | None = None,
        query_bias: Tensor | None = None,
    ) -> Tensor:
        """cross_pos: (B, Q, D) the cross-attention's positional query when it is not ``query_pos``
        (conditional spatial queries; the self-attention always uses ``query_pos``); cross_bias:
        (B, T, Q, HW) added to the cross-attention logits (Gaussian co-attention); query_bias:
        (B, 1, Q, Q) added to the self-attention logits (-inf: query i does not see query j)."""
        q = tgt + query_pos
        self_attn = self.self_attn(q, q, tgt, key_padding_mask=query_mask, attn_bias=query_bias)
        tgt = self.norm1(tgt + self.dropout1(self_attn))
        attn = self.multihead_attn(
            tgt + (query_pos if cross_pos is None else cross_pos),
            memory + pos,
            memory,
            key_padding_mask=memory_mask,
            hook=hook,
            layer=layer,
            attn_bias=cross_bias,
        )
        tgt = self.norm2(tgt + self.dropout2(attn))
        ff = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ff))


class TransformerEncoder(nn.Module):
    def __init__(self, d: int, nheads: int, dim_ff: int, dropout: float, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(d, nheads, dim_ff, dropout) for _ in range(num_layers))

    def forward(self, src: Tensor, pos: Tensor, mask: Tensor) -> Tensor:
        """src, pos: (B, HW, D); mask: (B, HW) bool, True on padding -> memory (B, HW, D)."""
        for layer in self.layers:
            src = layer(src, pos, mask)
        return src


class TransformerDecoder(nn.Module):
    def __init__(self, d: int, nheads: int, dim_ff: int, dropout: float, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d, nheads, dim_ff, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d)

    def forward(
        self,
        query_pos: Tensor,
        memory: Tensor,
        pos: Tensor,
        memory_mask: Tensor,
        query_mask: Tensor | None = None,
        hook: AttentionHook | None = None,
        final_norm: bool = True,
        cross_prior: CrossAttentionPrior | None = None,
        layer_offset: int = 0,
        query_bias: Tensor | None = None,
    ) -> Tensor:
        """Decode one query group.

        query_pos: (B, Q, D) positional queries (the content starts at zeros);
        memory, pos: (B, HW, D); memory_mask: (B, HW) True on padding;
        query_mask: (B, Q) True on padding slots of the group (they are not attended to);
        query_bias: (B, 1, Q, Q) float added to every layer's self-attention logits, -inf where query
        i must not attend to query j (several groups decoded as one: ``QueryGroup.self_attn_bias``);
        hook: sees/edits the cross-attention of every layer (``layer`` = layer_offset + 0 .. L-1: a
        detector with several decoders numbers their layers consecutively);
        cross_prior: ``(layer, the previous layer's output (B, Q, D)) -> (pos, bias)``, the
        cross-attention's positional query (None: ``query_pos``) and logit bias (None: none) of each
        layer (``hqm.models.spatial_queries``).
        Returns (L, B, Q, D): every layer's output after the shared final LayerNorm (the
        un-normalised output feeds the next layer). ``final_norm=False`` skips that norm.
        """
        out = query_pos.new_zeros(query_pos.shape)
        per_layer = []
        for i, layer in enumerate(self.layers):
            cross_pos, cross_bias = (None, None) if cross_prior is None else cross_prior(i, out)
            out = layer(
                out,
                memory,
                query_pos,
                pos,
                memory_mask,
                query_mask,
                hook,
                layer_offset + i,
                cross_pos,
                cross_bias,
                query_bias,
            )
            per_layer.append(self.norm(out) if final_norm else out)
        return torch.stack(per_layer)


class Transformer(nn.Module):
    def __init__(
        self,
        d: int = 256,
        nheads: int = 8,
        enc_layers: int = 6,
        dec_layers: int = 6,
        dim_ff: int = 2048,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.d_model = d
        self.nhead = nheads
        self.encoder = TransformerEncoder(d, nheads, dim_ff, dropout, enc_layers)
        self.decoder = TransformerDecoder(d, nheads, dim_ff, dropout, dec_layers)
        for name, p in self.named_parameters():
            if p.dim() > 1 and "in_proj_weight" not in name:
                nn.init.xavier_uniform_(p)


def build_transformer(cfg_model) -> Transformer:
    """The DETR encoder-decoder of ``model.*`` (hidden_dim, nheads, enc_layers, dec_layers,
    dim_feedforward, dropout), shared by every detector."""
    m = cfg_model
    return Transformer(m.hidden_dim, m.nheads, m.enc_layers, m.dec_layers, m.dim_feedforward, m.dropout)
