"""GBS, Ground-truth Bounding-box Shifting: explicit hard-positive queries from shifted GT pairs.

For every labelled pair of a training image the GT human and object boxes are shifted so that each
shifted box overlaps its own GT box with an IoU inside a window ([0.4, 0.6]); the two boxes are
encoded as the 12-d vector of :func:`pair_vector` and mapped to a positional query
``q = tanh(F_p(p))`` with ``F_p = Linear(12, D) - ReLU - Linear(D, D)``. The hard queries of an
image are decoded apart from the learnable queries (zero content, shared layers, memory, final norm
and heads; padding slots masked): behind a block-diagonal self-attention mask in the learnable
queries' decoder call where the detector allows it (QPIC, CDN: ``joined_queries``), else in a call of
their own (HOTR, or beside a learnable pass that a hook watches: PJL's AMM steps); the two are the
same function (the spec allows either). Hard query j is supervised by GT pair j on every decoder
layer.

Box shifting works on normalised cxcywh boxes of the augmented image: a shift scales x and y by
the image size, which leaves the IoU unchanged, and "clipped to the image" is a clip to [0, 1].

Samplers (``mining.gbs.sampler``):

* ``per_box`` (default, paper semantics): every shifted box lies in the closed window. Each round
  draws ``num_candidates`` candidates for every still unresolved box at once and keeps the first
  valid one; after ``max_rounds`` the best candidate (closest IoU to the window) is kept and counted
  (``GBSMiner.num_outside``, logged on ``hqm.mining``). Candidates: r = 1 + U(-0.4, 0.4) and
  (dx, dy) = U(-0.4, 0.4) * (w, h), the continuous version of the released grid. The human of a pair
  without object is still shifted; the missing object box stays empty.
* ``official`` (released code): r = 1 + 0.04 i, dx = 0.04 j w, dy = 0.04 k h with integers i, j, k
  uniform in [-10, 9] drawn per box; one draw covers every box of the per-device batch and is
  accepted when >= 70% of them fall in the OPEN window; then only in-window boxes take their shifted
  coordinates. Up to 40 draws (all drawn at once, the first accepted one wins); none accepted -> no
  shift. Humans and objects are drawn independently; pairs without an object are not shifted.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from hqm.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, elementwise_iou
from hqm.mining.base import FixedAssignment, MinedGroup, MiningContext, QueryGroup, QueryMiner

LOGGER = logging.getLogger("hqm.mining")


def pair_vector(sub: Tensor, obj: Tensor) -> Tensor:
    """(N, 4) + (N, 4) normalised cxcywh -> (N, 12) GBS pair encoding:
    [cx_h, cy_h, w_h, h_h, cx_o, cy_o, w_o, h_o, cx_h - cx_o, cy_h - cy_o, w_h * h_h, w_o * h_o]."""
    return torch.cat(
        [
            sub,
            obj,
            sub[:, :2] - obj[:, :2],
            (sub[:, 2] * sub[:, 3])[:, None],
            (obj[:, 2] * obj[:, 3])[:, None],
        ],
        dim=1,
    )


def shift_boxes(boxes: Tensor, ratio: Tensor, dx: Tensor, dy: Tensor, upper: Tensor | None = None) -> Tensor:
    """Boxes (..., 4) cxcywh shifted to centre (cx + dx*w, cy + dy*h), size (r*w, r*h), clipped to
    the image: [0, 1], or [0, upper] with ``upper`` (..., 2) = (x max, y max) broadcasting against
    ``boxes[..., :2]`` (``clip: pixel_inside``). ratio, dx, dy broadcast against ``boxes[..., 0]``
    and are relative to the box size."""
    cx, cy, w, h = boxes.unbind(-1)
    cand = torch.stack([cx + dx * w, cy + dy * h, ratio * w, ratio * h], dim=-1)
    xyxy = box_cxcywh_to_xyxy(cand)
    if upper is None:
        return box_xyxy_to_cxcywh(xyxy.clamp(0.0, 1.0))
    hi = torch.cat([upper, upper], dim=-1).expand_as(xyxy)
    return box_xyxy_to_cxcywh(torch.minimum(xyxy.clamp(min=0.0), hi))


def box_iou_cxcywh(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcast-matching cxcywh boxes (..., 4) -> (...)."""
    a, b = torch.broadcast_tensors(a, b)
    return elementwise_iou(box_cxcywh_to_xyxy(a), box_cxcywh_to_xyxy(b))


def sample_per_box(
    boxes: Tensor,
    iou_range: tuple[float, float],
    num_candidates: int = 64,
    max_rounds: int = 8,
    spread: float = 0.4,
    upper: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Shift every box (N, 4) normalised cxcywh into the closed IoU window (``upper`` (N, 2): the
    clip limits of each box's image, see :func:`shift_boxes`; None: [0, 1]).

    Returns (shifted boxes (N, 4), outside (N,) bool: no valid candidate within the budget, the
    returned box is then the best candidate seen). Loops over rounds only, never over boxes.
    """
    lo, hi = iou_range
    n = boxes.shape[0]
    out = boxes.clone()
    best_gap = torch.full((n,), float("inf"), device=boxes.device)
    todo = torch.arange(n, device=boxes.device)
    for _ in range(max_rounds):
        if todo.numel() == 0:
            break
        src = boxes[todo]
        u = torch.rand(len(todo), num_candidates, 3, device=boxes.device) * 2 - 1
        lim = None if upper is None else upper[todo][:, None]
        cand = shift_boxes(src[:, None], 1 + spread * u[..., 0], spread * u[..., 1], spread * u[..., 2], lim)
        iou = box_iou_cxcywh(src[:, None], cand)  # (n_todo, C)
        gap = (lo - iou).clamp(min=0) + (iou - hi).clamp(min=0)  # 0 inside the window
        g, pick = gap.min(dim=1)  # a candidate reaching the minimum: a valid one whenever there is one
        better = g < best_gap[todo]
        rows = todo[better]
        out[rows] = cand[better, pick[better]]
        best_gap[rows] = g[better]
        todo = todo[best_gap[todo] > 0]
    return out, best_gap > 0


def sample_official(
    boxes: Tensor,
    eligible: Tensor,
    iou_range: tuple[float, float],
    max_draws: int = 40,
    accept: float = 0.7,
    step: float = 0.04,
    upper: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The released sampler. boxes (N, 4) normalised cxcywh of the whole per-device batch; eligible
    (N,) bool (boxes that take part: pairs with an object).

    All ``max_draws`` draws are made at once; draw d is accepted when at least ``accept`` of the
    eligible boxes land in the open window; the first accepted draw shifts its in-window eligible
    boxes. Returns (boxes (N, 4), shifted (N,) bool).
    """
    lo, hi = iou_range
    ijk = torch.randint(-10, 10, (max_draws, boxes.shape[0], 3), device=boxes.device).to(boxes.dtype) * step
    lim = None if upper is None else upper[None]
    cand = shift_boxes(boxes[None], 1 + ijk[..., 0], ijk[..., 1], ijk[..., 2], lim)  # (D, N, 4)
    iou = box_iou_cxcywh(boxes[None], cand)
    inside = (iou > lo) & (iou < hi) & eligible[None]  # (D, N)
    frac = inside.sum(1).float() / eligible.sum().clamp(min=1)
    ok = (frac >= accept) & eligible.any()
    first = ok.int().argmax()  # index of the first accepted draw (0 when none: then masked below)
    take = inside[first] & ok.any()
    return torch.where(take[:, None], cand[first], boxes), take


GBS_REFERENCE_POINTS = ("boxes", "learned")


class GBSMiner(QueryMiner):
    """GBS hard queries. Group ``name`` (default "gbs") with a fixed assignment j <-> GT pair j.

    hidden_dim: D. iou_range: the IoU window. sampler: "per_box" | "official". shift: "shift"
    (hard positives), "none" (encode the unshifted GT: easy positives) or "gaussian" (GT vector plus
    ``noise_proj(N(0, I))`` added to q). clip: "image" (default: shifted boxes end at the image
    edge, [0, 1]) | "pixel_inside" (released code: at (W - 1, H - 1) pixels, which flips about 1e-3
    of the window decisions; needs ``size`` in the targets). reference_points: for detectors that decode
    reference points (``decodes_reference_points``: QPIC with ``model.query_type`` conditional /
    gaussian), "boxes" (default) makes the encoded boxes' centres the hard queries' reference points,
    as DN-DETR / DAB-DETR use the noised GT boxes as the denoising queries' anchors; "learned" lets
    the detector derive them from q like any positional query (its ``ref_point_head``, which starts
    random, so the hard queries first look at arbitrary places). With ``shift: gaussian`` the boxes are
    the unshifted GT (the noise lives in q only). Ignored by detectors with plain positional queries
    (the paper's QPIC / CDN / HOTR). Subclasses override ``hook(ctx, group, indices)`` to give the hard
    pass a cross-attention hook (CJL applies AMM).
    """

    def __init__(
        self,
        hidden_dim: int,
        iou_range: tuple[float, float] = (0.4, 0.6),
        sampler: str = "per_box",
        shift: str = "shift",
        num_candidates: int = 64,
        max_rounds: int = 8,
        clip: str = "image",
        reference_points: str = "boxes",
        name: str = "gbs",
    ):
        super().__init__()
        if clip not in ("image", "pixel_inside"):
            raise ValueError(f"GBS clip={clip!r} is not one of image, pixel_inside")
        if reference_points not in GBS_REFERENCE_POINTS:
            choices = ", ".join(GBS_REFERENCE_POINTS)
            raise ValueError(f"GBS reference_points={reference_points!r} is not one of {choices}")
        self.reference_points = reference_points
        self.clip = clip
        self.name = name
        self.iou_range = (float(iou_range[0]), float(iou_range[1]))
        self.sampler = sampler
        self.shift = shift
        self.num_candidates = num_candidates
        self.max_rounds = max_rounds
        d = hidden_dim
        self.query_embed_sp = nn.Sequential(nn.Linear(12, d), nn.ReLU(), nn.Linear(d, d))  # F_p
        self.noise_proj = nn.Linear(hidden_dim, hidden_dim) if shift == "gaussian" else None
        self.num_sampled = 0  # boxes shifted by the per_box sampler so far
        self.num_outside = 0  # ... of which no candidate reached the window (best candidate kept)

    @torch.no_grad()
    def shifted_pairs(
        self, sub: Tensor, obj: Tensor, has_obj: Tensor, upper: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Shift the (N, 4) GT boxes of the per-device batch (``shift`` mode decides whether);
        upper (N, 2): per pair the clip limits (x, y) of its image, None for [0, 1]."""
        if self.shift != "shift" or sub.shape[0] == 0:
            return sub, obj
        if self.sampler == "official":
            sub, _ = sample_official(sub, has_obj, self.iou_range, upper=upper)
            obj, _ = sample_official(obj, has_obj, self.iou_range, upper=upper)
            return sub, obj
        boxes = torch.cat([sub, obj[has_obj]])
        lim = None if upper is None else torch.cat([upper, upper[has_obj]])
        shifted, outside = sample_per_box(
            boxes, self.iou_range, self.num_candidates, self.max_rounds, upper=lim
        )
        self.num_sampled += len(boxes)
        n_out = int(outside.sum())
        if n_out:
            self.num_outside += n_out
            LOGGER.info(
                "GBS: %d of %d boxes found no shift inside IoU %s (best kept; %d of %d so far)",
                n_out,
                len(boxes),
                self.iou_range,
                self.num_outside,
                self.num_sampled,
            )
        obj = obj.clone()
        obj[has_obj] = shifted[len(sub) :]
        return shifted[: len(sub)], obj

    def build_queries(self, targets: list[dict]) -> tuple[QueryGroup, list[tuple[Tensor, Tensor]]]:
        """Per-image hard queries, padded to N = max pairs per image (at least 1): a QueryGroup with
        ``pos`` (B, N, D), ``mask`` (B, N) True on padding and ``reference`` (B, N, 4) the encoded
        boxes' centres (x_sub, y_sub, x_obj, y_obj), normalised (the subject centre for a pair without
        object; 0.5 on padding), and the fixed assignment (arange(n_i), arange(n_i))."""
        counts = [len(t["obj_labels"]) for t in targets]
        dev = self.query_embed_sp[0].weight.device
        sub = torch.cat([t["sub_boxes"] for t in targets]).to(dev).float()
        obj = torch.cat([t["obj_boxes"] for t in targets]).to(dev).float()
        has_obj = torch.cat([t["has_obj"] for t in targets]).to(dev).bool()
        sub, obj = self.shifted_pairs(sub, obj, has_obj, self.clip_limits(targets, counts, dev))
        q = torch.tanh(self.query_embed_sp(pair_vector(sub, obj)))  # (sum n_i, D)
        if self.noise_proj is not None:
            q = q + self.noise_proj(torch.randn_like(q))
        centres = torch.cat([sub[:, :2], torch.where(has_obj[:, None], obj[:, :2], sub[:, :2])], dim=1)
        n_max = max(max(counts, default=0), 1)
        slot = torch.cat([torch.arange(c, device=dev) for c in counts])  # per image, not per box
        img = torch.repeat_interleave(torch.arange(len(counts), device=dev), torch.tensor(counts, device=dev))
        query_pos = q.new_zeros(len(counts), n_max, q.shape[1])
        query_pos[img, slot] = q
        reference = sub.new_full((len(counts), n_max, 4), 0.5)
        reference[img, slot] = centres
        query_mask = torch.ones(len(counts), n_max, dtype=torch.bool, device=dev)
        query_mask[img, slot] = False
        indices = [(torch.arange(c), torch.arange(c)) for c in counts]
        return QueryGroup(query_pos, query_mask, reference), indices

    def clip_limits(self, targets: list[dict], counts: list[int], dev: torch.device) -> Tensor | None:
        """(sum n_i, 2) normalised (x, y) clip limits per pair: ((W - 1) / W, (H - 1) / H) of its
        image for ``clip: pixel_inside``; None (clip to [0, 1]) for ``image``."""
        if self.clip == "image":
            return None
        hw = torch.stack([t["size"] for t in targets]).to(dev).float()  # (B, 2) (h, w)
        per_image = torch.stack([(hw[:, 1] - 1) / hw[:, 1], (hw[:, 0] - 1) / hw[:, 0]], dim=1)
        return per_image.repeat_interleave(torch.tensor(counts, device=dev), dim=0)

    def hook(self, ctx: MiningContext, group: QueryGroup, indices):
        """Cross-attention hook of the hard pass (None: the fused attention path)."""
        return None

    def hard_queries(self, detector, targets: list[dict]) -> tuple[QueryGroup, list[tuple[Tensor, Tensor]]]:
        """``build_queries``, keeping the reference points only for a detector that decodes them."""
        group, indices = self.build_queries(targets)
        if not self.gives_reference_points(detector):
            group = QueryGroup(group.pos, group.mask)
        return group, indices

    def gives_reference_points(self, detector) -> bool:
        return self.reference_points == "boxes" and detector.decodes_reference_points

    def groups(self, ctx: MiningContext, outputs: dict, indices) -> dict[str, MinedGroup]:
        return {self.name: MinedGroup(outputs, FixedAssignment(indices), ctx.learnable_indices)}

    def joined_queries(self, detector, targets: list[dict], with_reference: bool):
        """The hard queries decoded in the learnable queries' call (block-diagonal self-attention,
        ``QueryMiner.joined_queries``; the spec's alternative to a pass of their own)."""
        if self.gives_reference_points(detector) != with_reference:
            return None
        group, indices = self.hard_queries(detector, targets)
        return group, lambda ctx, outputs: self.groups(ctx, outputs, indices)

    def forward(self, ctx: MiningContext) -> dict[str, MinedGroup]:
        group, indices = self.hard_queries(ctx.detector, ctx.targets)
        outputs = ctx.detector.decode(ctx.encoded, group, self.hook(ctx, group, indices))
        return self.groups(ctx, outputs, indices)
