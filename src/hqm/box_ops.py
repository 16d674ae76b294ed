"""Box conversions and overlaps on torch tensors (continuous coordinates, no +1 convention).

The evaluators use their own numpy IoU with the +1-pixel convention of the official HICO-DET code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(b: Tensor) -> Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(b: Tensor) -> Tensor:
    x0, y0, x1, y1 = b.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(b: Tensor) -> Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union of xyxy boxes: (N, 4) x (M, 4) -> (N, M), (N, M)."""
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=1e-7), union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M). Degenerate boxes give finite values."""
    iou, union = box_iou(a, b)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return iou - (area - union) / area.clamp(min=1e-7)


def _elementwise_inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    lt = torch.max(a[..., :2], b[..., :2])
    rb = torch.min(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, box_area(a) + box_area(b) - inter


def elementwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows of two xyxy box tensors (..., 4) -> (...)."""
    inter, union = _elementwise_inter_union(a, b)
    return inter / union.clamp(min=1e-7)


def elementwise_giou(a: Tensor, b: Tensor) -> Tensor:
    """GIoU of matching rows of two xyxy box tensors (..., 4) -> (...)."""
    inter, union = _elementwise_inter_union(a, b)
    lt = torch.min(a[..., :2], b[..., :2])
    rb = torch.max(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    area = wh[..., 0] * wh[..., 1]
    return inter / union.clamp(min=1e-7) - (area - union) / area.clamp(min=1e-7)


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x), with x clamped to [eps, 1 - eps] (Deformable DETR's ``inverse_sigmoid``)."""
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def relative_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """(..., 4) raw box-head output and (..., 2) reference points (normalised x, y) -> (..., 4)
    normalised cxcywh: centre = sigmoid(delta_xy + logit(reference)), size = sigmoid(delta_wh)
    (Conditional DETR, Meng et al. 2021)."""
    xy = delta[..., :2] + inverse_sigmoid(reference)
    return torch.cat([xy, delta[..., 2:]], dim=-1).sigmoid()
