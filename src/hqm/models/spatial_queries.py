"""Spatial queries for HOI: reference points, conditional spatial queries, Gaussian co-attention.

An option of the shared decoder (``model.query_type``), off in the paper configs (``embed``: DETR /
QPIC learned positional queries and absolute boxes). It speeds up the convergence of a detector
trained from scratch (see the README's demo section for the measurement) and changes nothing for
``embed``: released QPIC / HQM checkpoints load and give the same outputs.

Every query group -- the learnable ``query_embed``, GBS's encoded shifted pairs, AMM's copies --
still enters the decoder as positional queries o_q (B, Q, D); this module derives the rest from them,
so the mining seams are unchanged:

* ``conditional`` (after Conditional DETR, Meng et al., ICCV 2021): two reference points per query,
  s = sigmoid(MLP(o_q)) = (x_sub, y_sub, x_obj, y_obj), normalised to the image. The subject and
  object box centres are predicted relative to them (centre = sigmoid(delta + logit(s))), and the
  cross-attention of decoder layer l takes the conditional spatial query
  T(f_{l-1}) * [PE(s_sub) + PE(s_obj)] as its positional query (PE: the DETR sine encoding at a point,
  the same function as the encoder's key positions; T: an MLP of the previous layer's output, the
  identity at layer 0). Conditional DETR concatenates the content and spatial parts of queries and
  keys; here they are added, DETR style, so the attention modules and their names are unchanged.
* ``gaussian``: ``conditional`` plus the Gaussian-modulated co-attention of SMCA (Gao et al., ICCV
  2021): every cross-attention logit gets log G = -0.5 * ||(key position - s) / sigma||^2, with the
  heads split in two: heads [0, T/2) around the subject point, [T/2, T) around the object point;
  sigma (per axis, per point, fraction of the image) = sigmoid(Linear(f_{l-1})), 0.15 at first.
  Each query then looks near its person and near its object from the first step, which the plain
  DETR decoder has to learn from scratch.
* ``model.box_refine`` (with either): layer-by-layer refinement of the reference points, after the
  iterative bounding-box refinement of Deformable DETR (Zhu et al., ICLR 2021) and the layer-wise
  anchor update of DAB-DETR (Liu et al., ICLR 2022), for the two centres only: decoder layer l > 0
  uses the subject / object centres that layer l-1 predicted (gradient stopped) as its reference
  points, for its spatial query, its Gaussian prior and its own relative box prediction. No
  parameters: the box heads of the detector predict the centres.

Parameters (only present when enabled): ``spatial_queries.ref_point_head``, ``.query_scale`` and,
for ``gaussian``, ``.spread_head``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from hqm.models.heads import MLP

# (previous layer's output (B, Q, D), its reference points (B, Q, 4)) -> refined points (B, Q, 4)
RefineFn = Callable[[Tensor, Tensor], Tensor]

QUERY_TYPES = ("embed", "conditional", "gaussian")


def sine_embed(points: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """(..., 2) normalised (x, y) -> (..., 2 * num_pos_feats): the encoding of
    ``PositionEmbeddingSine`` (scale 2*pi, interleaved sin / cos, y features first) at a point."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=points.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    px = points[..., 0, None].float() * (2 * math.pi) / dim_t
    py = points[..., 1, None].float() * (2 * math.pi) / dim_t
    px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=-1).flatten(-2)
    py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((py, px), dim=-1).to(points.dtype)


def key_positions(mask: Tensor, shape: tuple[int, int]) -> Tensor:
    """(B, H*W) padding mask of an (H, W) feature map -> (B, H*W, 2) token centres (x, y), normalised
    by each image's unpadded extent (the convention of the normalised boxes)."""
    b = mask.shape[0]
    h, w = shape
    valid = ~mask.view(b, h, w)
    cols = valid.any(1).sum(-1).clamp(min=1).float()  # (B,) unpadded width in tokens
    rows = valid.any(2).sum(-1).clamp(min=1).float()
    xs = (torch.arange(w, device=mask.device).float() + 0.5)[None] / cols[:, None]  # (B, W)
    ys = (torch.arange(h, device=mask.device).float() + 0.5)[None] / rows[:, None]  # (B, H)
    grid = torch.stack([xs[:, None, :].expand(b, h, w), ys[:, :, None].expand(b, h, w)], dim=-1)
    return grid.flatten(1, 2)


class SpatialQueries(nn.Module):
    """Reference points and the per-layer cross-attention prior of ``conditional`` / ``gaussian``
    queries (see the module docstring). ``hidden_dim`` D, ``nheads`` T."""

    def __init__(self, hidden_dim: int, nheads: int, gaussian: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.nheads = nheads
        self.gaussian = gaussian
        self.ref_point_head = MLP(hidden_dim, hidden_dim, 4, 2)
        self.query_scale = MLP(hidden_dim, hidden_dim, hidden_dim, 2)
        if gaussian:
            self.spread_head = nn.Linear(hidden_dim, 4)
            nn.init.zeros_(self.spread_head.weight)
            nn.init.constant_(self.spread_head.bias, math.log(0.15 / 0.85))  # sigma 0.15 at first

    def reference(self, query_pos: Tensor) -> Tensor:
        """(B, Q, D) positional queries -> (B, Q, 4) reference points (x_sub, y_sub, x_obj, y_obj)."""
        return self.ref_point_head(query_pos).sigmoid()

    def gaussian_bias(self, content: Tensor, reference: Tensor, keys: Tensor) -> Tensor:
        """log G (B, T, Q, S) for the previous output ``content`` (B, Q, D), ``reference`` (B, Q, 4)
        and key positions ``keys`` (B, S, 2); heads [0, T/2) subject, [T/2, T) object."""
        sigma = self.spread_head(content).sigmoid().clamp(min=1e-3)  # (B, Q, 4)
        logs = []
        for k in (0, 2):
            d = (keys[:, None] - reference[:, :, None, k : k + 2]) / sigma[:, :, None, k : k + 2]
            logs.append(-0.5 * d.pow(2).sum(-1))  # (B, Q, S)
        half = self.nheads // 2
        return torch.stack([logs[0]] * half + [logs[1]] * (self.nheads - half), dim=1)

    def cross_prior(
        self, reference: Tensor, mask: Tensor, shape: tuple[int, int], refine: RefineFn | None = None
    ) -> SpatialPrior:
        """The decoder's per-layer ``(positional query, logit bias)`` (a ``CrossAttentionPrior``) for
        queries with ``reference`` (B, Q, 4) over a memory with padding ``mask`` (B, HW) of an
        (H, W) map; ``refine``: see ``SpatialPrior``."""
        keys = key_positions(mask, shape) if self.gaussian else None
        return SpatialPrior(self, reference, keys, refine)


class SpatialPrior:
    """Callable ``(layer, previous layer's output (B, Q, D)) -> (pos, bias)`` handed to the decoder.
    With ``refine`` (``model.box_refine``), layer l > 0 takes ``refine(output of layer l-1, its
    reference points)`` (detached) as its reference points. ``references()``: the points each layer
    used, (L, B, Q, 4) with refinement, else the shared (B, Q, 4); call after decoding."""

    def __init__(
        self, queries: SpatialQueries, reference: Tensor, keys: Tensor | None, refine: RefineFn | None
    ):
        self.queries = queries
        self.keys = keys
        self.refine = refine
        self.points = [reference]
        self.spatial = self._spatial(reference)

    def _spatial(self, reference: Tensor) -> Tensor:
        d = self.queries.hidden_dim // 2
        return sine_embed(reference[..., :2], d) + sine_embed(reference[..., 2:], d)

    def __call__(self, layer: int, content: Tensor) -> tuple[Tensor, Tensor | None]:
        q = self.queries
        if layer > 0 and self.refine is not None:
            self.points.append(self.refine(content, self.points[-1]).detach())
            self.spatial = self._spatial(self.points[-1])
        reference = self.points[-1]
        pos = self.spatial if layer == 0 else q.query_scale(content) * self.spatial
        bias = q.gaussian_bias(content, reference, self.keys) if q.gaussian else None
        return pos, bias

    def references(self) -> Tensor:
        return torch.stack(self.points) if self.refine is not None else self.points[0]


def build_spatial_queries(query_type: str, hidden_dim: int, nheads: int) -> SpatialQueries | None:
    """None for ``embed`` (DETR / QPIC)."""
    if query_type not in QUERY_TYPES:
        raise ValueError(f"model.query_type={query_type!r} is not one of {', '.join(QUERY_TYPES)}")
    if query_type == "embed":
        return None
    return SpatialQueries(hidden_dim, nheads, gaussian=query_type == "gaussian")
