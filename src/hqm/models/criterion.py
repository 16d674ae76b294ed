"""QPIC losses for the learnable queries (Hungarian matching) and for mined query groups.

Loss terms of one decoder layer, given an assignment (query_idx, target_idx) per image:

* ``loss_obj_ce``: cross-entropy over the object classes. Learnable queries: every query, the
  unmatched ones towards "no object" (weight ``eos_coef``). Mined groups: assigned queries only.
* ``loss_verb_ce``: CornerNet-style focal loss on sigmoid probabilities, divided by the number of
  positive labels (or the negative sum when there are none); computed in log space so it never
  produces NaN (the reference clamps nothing).
* ``loss_sub_bbox`` / ``loss_obj_bbox`` (L1) and ``loss_sub_giou`` / ``loss_obj_giou`` (1 - GIoU) on
  assigned pairs, normalised by the number of GT pairs averaged over ranks (>= 1); object-box terms
  only where the GT object exists.

A mined group arrives as ``outputs["groups"][name] = {"outputs": {...}, "assignment": ...}`` where
the assignment is either ``{"type": "fixed", "indices": Indices}`` (GBS: hard query j <-> pair j, on
every layer) or ``{"type": "learnable", "query_map": list[Tensor] | None}`` (AMM: the copies take the
learnable queries' per-layer assignment; ``query_map[i][c]`` = learnable query of copy c).
Group losses are logged as ``<group>/<term>`` and weighted by ``group_weights[group]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.box_ops import box_cxcywh_to_xyxy, elementwise_giou
from hqm.engine.distributed import all_reduce_mean
from hqm.models.matcher import HungarianMatcher, Indices

TERMS = ("loss_obj_ce", "loss_verb_ce", "loss_sub_bbox", "loss_obj_bbox", "loss_sub_giou", "loss_obj_giou")


def focal_verb_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """CornerNet focal loss: -[y log p (1-p)^2 + (1-y) log(1-p) p^2] / num_pos (>= 1 term)."""
    logits = logits.float()
    p = logits.sigmoid()
    pos = F.logsigmoid(logits) * (1 - p) ** 2 * targets
    neg = F.logsigmoid(-logits) * p**2 * (1 - targets)
    num_pos = targets.sum()
    pos_sum, neg_sum = pos.sum(), neg.sum()
    return torch.where(num_pos > 0, -(pos_sum + neg_sum) / num_pos.clamp(min=1), -neg_sum)


class SetCriterion(nn.Module):
    def __init__(self, num_obj_classes: int, matcher: HungarianMatcher, weights: dict[str, float],
                 eos_coef: float = 0.1):
        super().__init__()
        self.num_obj_classes = num_obj_classes
        self.matcher = matcher
        self.weights = weights
        empty_weight = torch.ones(num_obj_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def layer_losses(self, out: dict, targets: list[dict], indices: Indices, num_pairs: float,
                     all_queries: bool) -> dict[str, Tensor]:
        """The six terms for one layer's predictions ``out`` under ``indices``.

        all_queries: True for learnable queries (unassigned ones are "no object"/all-negative verbs);
        False for mined groups (only assigned queries are supervised).
        """
        logits = out["pred_obj_logits"].float()
        verb_logits = out["pred_verb_logits"].float()
        dev = logits.device
        b_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(dev)
        q_idx = torch.cat([q for q, _ in indices]).to(dev)
        t_obj = torch.cat([t["obj_labels"][j] for t, (_, j) in zip(targets, indices)]).to(dev)
        t_verb = torch.cat([t["verb_labels"][j] for t, (_, j) in zip(targets, indices)]).to(dev).float()
        t_sub = torch.cat([t["sub_boxes"][j] for t, (_, j) in zip(targets, indices)]).to(dev).float()
        t_objb = torch.cat([t["obj_boxes"][j] for t, (_, j) in zip(targets, indices)]).to(dev).float()
        exists = torch.cat([t["has_obj"][j] for t, (_, j) in zip(targets, indices)]).to(dev).float()

        if all_queries:
            cls_t = torch.full(logits.shape[:2], self.num_obj_classes, dtype=torch.int64, device=dev)
            cls_t[b_idx, q_idx] = t_obj
            loss_obj = F.cross_entropy(logits.transpose(1, 2), cls_t, self.empty_weight)
            verb_t = torch.zeros_like(verb_logits)
            verb_t[b_idx, q_idx] = t_verb
            loss_verb = focal_verb_loss(verb_logits, verb_t)
        else:
            # mined groups: no "no object" term; an empty batch contributes an exact zero
            sel = logits[b_idx, q_idx]
            loss_obj = F.cross_entropy(sel, t_obj) if len(t_obj) else logits.sum() * 0
            loss_verb = focal_verb_loss(verb_logits[b_idx, q_idx], t_verb)

        s_sub = out["pred_sub_boxes"][b_idx, q_idx].float()
        s_obj = out["pred_obj_boxes"][b_idx, q_idx].float()
        losses = {
            "loss_obj_ce": loss_obj,
            "loss_verb_ce": loss_verb,
            "loss_sub_bbox": (s_sub - t_sub).abs().sum() / num_pairs,
            "loss_obj_bbox": ((s_obj - t_objb).abs().sum(-1) * exists).sum() / num_pairs,
            "loss_sub_giou": (1 - elementwise_giou(box_cxcywh_to_xyxy(s_sub), box_cxcywh_to_xyxy(t_sub))).sum()
            / num_pairs,
            "loss_obj_giou": ((1 - elementwise_giou(box_cxcywh_to_xyxy(s_obj), box_cxcywh_to_xyxy(t_objb)))
                              * exists).sum() / num_pairs,
        }
        return losses

    def _all_layers(self, outputs: dict, targets: list[dict], layer_indices: list[Indices], num_pairs: float,
                    all_queries: bool, prefix: str) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum over layers and terms, and every unweighted term keyed ``<prefix><term>[_<layer>]``."""
        layers = [outputs] + list(outputs.get("aux_outputs", []))[::-1]  # last layer first
        logs: dict[str, Tensor] = {}
        total = 0.0
        for i, (out, idx) in enumerate(zip(layers, layer_indices)):
            suffix = "" if i == 0 else f"_{len(layers) - 1 - i}"
            for k, v in self.layer_losses(out, targets, idx, num_pairs, all_queries).items():
                logs[f"{prefix}{k}{suffix}"] = v
                total = total + self.weights[k] * v
        return total, logs

    def match_all_layers(self, outputs: dict, targets: list[dict]) -> list[Indices]:
        """Hungarian assignment for the last layer and every aux layer (last layer first)."""
        layers = [outputs] + list(outputs.get("aux_outputs", []))[::-1]
        return [self.matcher(o, targets) for o in layers]

    def forward(self, outputs: dict, targets: list[dict], alpha: float = 1.0,
                group_weights: dict[str, float] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (total loss, dict of every unweighted term for logging).

        total = alpha * L_learnable + sum_g group_weights[g] * L_g (+ 0 * unused miner params).
        """
        num = sum(len(t["obj_labels"]) for t in targets)
        num_pairs = max(all_reduce_mean(float(num), outputs["pred_obj_logits"].device), 1.0)
        learn_idx = outputs.get("indices") or self.match_all_layers(outputs, targets)
        total, logs = self._all_layers(outputs, targets, learn_idx, num_pairs, True, "")
        total = alpha * total
        nq = outputs["pred_obj_logits"].shape[1]
        for name, group in (outputs.get("groups") or {}).items():
            assign = group["assignment"]
            n_layers = 1 + len(group["outputs"].get("aux_outputs", []))
            if assign["type"] == "fixed":
                g_idx = [assign["indices"]] * n_layers
            else:
                g_idx = [_remap(idx, assign.get("query_map"), nq) for idx in learn_idx[:n_layers]]
            g_total, g_logs = self._all_layers(group["outputs"], targets, g_idx, num_pairs, False, f"{name}/")
            logs.update(g_logs)
            total = total + (group_weights or {}).get(name, 1.0) * g_total
        if "unused_params_zero" in outputs:
            total = total + outputs["unused_params_zero"]
        return total, logs


def _remap(indices: Indices, query_map: list[Tensor] | None, num_queries: int) -> Indices:
    """Learnable assignment -> assignment of the copies. ``query_map[i][c]`` is the learnable query
    that copy ``c`` of image ``i`` was made from; matched learnable queries without a copy drop out."""
    if query_map is None:
        return indices
    out = []
    for (q, t), qmap in zip(indices, query_map):
        inv = torch.full((num_queries,), -1, dtype=torch.int64)
        inv[qmap.cpu()] = torch.arange(len(qmap))
        c = inv[q]
        keep = c >= 0
        out.append((c[keep], t[keep]))
    return out


def build_criterion(cfg, num_obj_classes: int, matcher: HungarianMatcher) -> SetCriterion:
    lc = cfg.loss
    weights = {
        "loss_obj_ce": lc.obj_loss_coef, "loss_verb_ce": lc.verb_loss_coef,
        "loss_sub_bbox": lc.bbox_loss_coef, "loss_obj_bbox": lc.bbox_loss_coef,
        "loss_sub_giou": lc.giou_loss_coef, "loss_obj_giou": lc.giou_loss_coef,
    }
    return SetCriterion(num_obj_classes, matcher, weights, lc.eos_coef)
