"""Prediction heads (QPIC names) and the conversion of decoder states into the output contract."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.box_ops import relative_boxes


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box MLP; names ``layers.N``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = F.relu(layer(x)) if i < len(self.layers) - 1 else layer(x)
        return x


class QPICHeadsMixin:
    """Object class, verb and the two box heads under their QPIC names.

    ``init_heads`` registers ``obj_class_embed`` Linear(D, C_obj + 1) (last index = no-object),
    ``verb_class_embed`` Linear(D, C_verb) and the 3-layer ``sub_bbox_embed`` / ``obj_bbox_embed``
    MLPs directly on the detector, so QPIC checkpoints load by name. ``predict(hs (L, B, Q, D))``
    returns one dict per layer with ``pred_obj_logits`` (B, Q, C_obj + 1), ``pred_verb_logits``
    (B, Q, C_verb) and ``pred_sub_boxes`` / ``pred_obj_boxes`` (B, Q, 4) normalised cxcywh.
    """

    def init_heads(self, hidden_dim: int, num_obj_classes: int, num_verb_classes: int) -> None:
        self.obj_class_embed = nn.Linear(hidden_dim, num_obj_classes + 1)
        self.verb_class_embed = nn.Linear(hidden_dim, num_verb_classes)
        self.sub_bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.obj_bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def predict(self, hs: Tensor, reference: Tensor | None = None) -> list[dict[str, Tensor]]:
        """hs (L, B, Q, D) -> one output dict per layer. ``reference``: (B, Q, 4) or, one per layer,
        (L, B, Q, 4) reference points (x_sub, y_sub, x_obj, y_obj) of spatial queries, box centres
        are then predicted relative to them (``box_ops.relative_boxes``);
        None: absolute boxes (DETR / QPIC)."""
        obj = self.obj_class_embed(hs)
        verb = self.verb_class_embed(hs)
        if reference is None:
            sub_boxes = self.sub_bbox_embed(hs).sigmoid()
            obj_boxes = self.obj_bbox_embed(hs).sigmoid()
        else:
            sub_boxes = relative_boxes(self.sub_bbox_embed(hs), reference[..., :2])
            obj_boxes = relative_boxes(self.obj_bbox_embed(hs), reference[..., 2:])
        return [
            {
                "pred_obj_logits": obj[i],
                "pred_verb_logits": verb[i],
                "pred_sub_boxes": sub_boxes[i],
                "pred_obj_boxes": obj_boxes[i],
            }
            for i in range(hs.shape[0])
        ]


def gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, N, C), idx (B, Q) int64 -> (B, Q, C): row ``idx[b, q]`` of ``x[b]`` (HOTR's pointed
    instances)."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def pack_outputs(per_layer: list[dict[str, Tensor]], aux_loss: bool = True) -> dict:
    """Last layer's predictions at the top level, earlier layers under ``aux_outputs``."""
    out = dict(per_layer[-1])
    if aux_loss:
        out["aux_outputs"] = per_layer[:-1]
    return out
