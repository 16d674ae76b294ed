"""Hungarian matching between queries and ground-truth human-object pairs (QPIC cost)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from hqm.box_ops import box_cxcywh_to_xyxy, generalized_box_iou

Indices = list[tuple[Tensor, Tensor]]


class HungarianMatcher(nn.Module):
    """C = w_obj*C_obj + w_verb*C_verb + w_L1*C_box + w_giou*C_giou, solved per image in fp32.

    * C_obj  = -softmax probability of the GT object class;
    * C_verb = -0.5 * [ s.y / (sum y + 1e-4) + (1-s).(1-y) / (sum(1-y) + 1e-4) ] (s = verb sigmoids);
    * C_box  = max(L1_sub, L1_obj * [object exists]);
    * C_giou = max(-GIoU_sub, -GIoU_obj), with -GIoU_sub in place of the object term when the
      object is missing (V-COCO roles without object).

    forward(outputs, targets) -> list over images of (query_idx, target_idx) int64 tensors on CPU.
    """

    def __init__(
        self,
        cost_obj_class: float = 1.0,
        cost_verb_class: float = 1.0,
        cost_bbox: float = 2.5,
        cost_giou: float = 1.0,
    ):
        super().__init__()
        self.cost_obj_class = cost_obj_class
        self.cost_verb_class = cost_verb_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[Tensor]:
        """Per image the (Q, G_i) cost matrix in fp32 on the outputs' device."""
        bs, nq = outputs["pred_obj_logits"].shape[:2]
        obj_prob = outputs["pred_obj_logits"].float().flatten(0, 1).softmax(-1)
        verb_prob = outputs["pred_verb_logits"].float().flatten(0, 1).sigmoid()
        sub_boxes = outputs["pred_sub_boxes"].float().flatten(0, 1)
        obj_boxes = outputs["pred_obj_boxes"].float().flatten(0, 1)
        sizes = [len(t["obj_labels"]) for t in targets]
        if sum(sizes) == 0:
            return [sub_boxes.new_zeros(nq, 0) for _ in targets]
        t_obj = torch.cat([t["obj_labels"] for t in targets])
        t_verb = torch.cat([t["verb_labels"] for t in targets]).float()
        t_sub = torch.cat([t["sub_boxes"] for t in targets]).float()
        t_objb = torch.cat([t["obj_boxes"] for t in targets]).float()
        exists = torch.cat([t["has_obj"] for t in targets])

        c_obj = -obj_prob[:, t_obj]
        pos = verb_prob @ t_verb.T / (t_verb.sum(1)[None] + 1e-4)
        neg = (1 - verb_prob) @ (1 - t_verb).T / ((1 - t_verb).sum(1)[None] + 1e-4)
        c_verb = -0.5 * (pos + neg)
        c_sub = torch.cdist(sub_boxes, t_sub, p=1)
        c_objb = torch.cdist(obj_boxes, t_objb, p=1) * exists[None].float()
        c_box = torch.maximum(c_sub, c_objb)
        g_sub = -generalized_box_iou(box_cxcywh_to_xyxy(sub_boxes), box_cxcywh_to_xyxy(t_sub))
        g_obj = -generalized_box_iou(box_cxcywh_to_xyxy(obj_boxes), box_cxcywh_to_xyxy(t_objb))
        g_obj = torch.where(exists[None], g_obj, g_sub)
        c_giou = torch.maximum(g_sub, g_obj)
        c = (
            self.cost_obj_class * c_obj
            + self.cost_verb_class * c_verb
            + self.cost_bbox * c_box
            + self.cost_giou * c_giou
        )
        chunks = c.view(bs, nq, -1).split(sizes, dim=-1)
        return [chunks[i][i] for i in range(bs)]

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        out = []
        for c in self.cost_matrices(outputs, targets):
            c_np = c.cpu().numpy()
            if not np.isfinite(c_np).all():
                c_np = np.nan_to_num(c_np, nan=1e6, posinf=1e6, neginf=-1e6)
            qi, ti = linear_sum_assignment(c_np)
            out.append((torch.as_tensor(qi, dtype=torch.int64), torch.as_tensor(ti, dtype=torch.int64)))
        return out


def build_matcher(cfg_loss) -> HungarianMatcher:
    return HungarianMatcher(
        cfg_loss.set_cost_obj_class,
        cfg_loss.set_cost_verb_class,
        cfg_loss.set_cost_bbox,
        cfg_loss.set_cost_giou,
    )
