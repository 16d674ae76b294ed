"""QPIC losses for the learnable queries (Hungarian matching) and for mined query groups.

Loss terms of one decoder layer, given an assignment (query_idx, target_idx) per image:

* ``loss_obj_ce``: cross-entropy over the object classes. Learnable queries: every query, the
  unmatched ones towards "no object" (weight ``eos_coef``), a weighted mean. Mined groups: assigned
  queries only, a mean over the assigned pairs.
* ``loss_verb_ce``: CornerNet-style focal loss on sigmoid probabilities, divided by the number of
  positive labels (or the negative sum when there are none); computed in log space so it never
  produces NaN (the reference clamps nothing).
* ``loss_sub_bbox`` / ``loss_obj_bbox`` (L1) and ``loss_sub_giou`` / ``loss_obj_giou`` (1 - GIoU) on
  assigned pairs, normalised by the number of GT pairs; object-box terms only where the GT object exists.

Normalisers are global (``LossNormalisers``): every denominator above (GT pairs, positive verb
labels, the class-weight sum of the learnable object CE) is counted from the targets, summed over
ranks (one all-reduce per call) and divided by the world size, so that DDP's gradient average over
ranks gives exactly the gradient of a single process holding the whole global batch. The trainer
sums the counts of all micro-batches of an accumulation window too, so ``batch 2 x accumulate 2``
equals ``batch 4``. In one process without accumulation nothing changes: the denominators are the
batch's own counts, at least 1 (the class-weight sum is always > 0). Counting from the targets
equals counting over the assignment whenever every GT pair is assigned (at most Nq pairs per image;
GBS assigns every pair, AMM every matched one); with more pairs than queries the verb denominator
also counts the positives of the unassigned pairs.

A mined group arrives as ``outputs["groups"][name] = {"outputs": {...}, "assignment": ...}`` where
the assignment is either ``{"type": "fixed", "indices": Indices}`` (GBS: hard query j <-> pair j, on
every layer) or ``{"type": "learnable", "query_map": list[Tensor] | None}`` (AMM: the copies take the
learnable queries' per-layer assignment; ``query_map[i][c]`` = learnable query of copy c).
Group losses are logged as ``<group>/<term>`` and weighted by ``group_weights[group]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.box_ops import box_cxcywh_to_xyxy, elementwise_giou
from hqm.engine.distributed import all_reduce_sum, get_world_size
from hqm.models.matcher import HungarianMatcher, Indices

TERMS = ("loss_obj_ce", "loss_verb_ce", "loss_sub_bbox", "loss_obj_bbox", "loss_sub_giou", "loss_obj_giou")


def focal_verb_loss(logits: Tensor, targets: Tensor, normaliser: float | None = None) -> Tensor:
    """CornerNet focal loss: -[y log p (1-p)^2 + (1-y) log(1-p) p^2] / normaliser.

    ``normaliser`` defaults to the number of positive labels in ``targets`` (at least 1: the positive
    term is exactly zero without positives, so this is the negative sum then)."""
    logits = logits.float()
    p = logits.sigmoid()
    pos = F.logsigmoid(logits) * (1 - p) ** 2 * targets
    neg = F.logsigmoid(-logits) * p**2 * (1 - targets)
    if normaliser is None:
        normaliser = targets.sum().clamp(min=1)
    return -(pos.sum() + neg.sum()) / normaliser


@dataclass(frozen=True)
class LossNormalisers:
    """Global loss denominators: (count summed over ranks and micro-batches) / world size.

    pairs: GT pairs (box terms, mined object CE), at least 1 in total; positives: positive verb
    labels, at least 1 in total; obj_weight: sum of the learnable object-CE class weights."""

    pairs: float
    positives: float
    obj_weight: float

    @staticmethod
    def local_counts(targets: list[dict], num_queries: int, eos_coef: float) -> list[float]:
        """[pairs, positive verb labels, learnable object-CE weight sum] of one (micro-)batch.
        The Hungarian matcher assigns min(n_i, Nq) queries of image i to a real class (weight 1);
        the other queries take the no-object weight ``eos_coef``."""
        n = [len(t["obj_labels"]) for t in targets]
        matched = sum(min(k, num_queries) for k in n)
        positives = sum(float(t["verb_labels"].sum()) for t in targets)
        return [float(sum(n)), positives, matched + eos_coef * (len(targets) * num_queries - matched)]

    @classmethod
    def from_counts(cls, counts: list[float], reduce: bool = True) -> LossNormalisers:
        """Sum ``counts`` over ranks (one all-reduce when ``reduce``) and divide by the world size."""
        total = all_reduce_sum(counts) if reduce else list(counts)
        world = get_world_size() if reduce else 1
        return cls(max(total[0], 1.0) / world, max(total[1], 1.0) / world, max(total[2], 1e-12) / world)


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_obj_classes: int,
        matcher: HungarianMatcher,
        weights: dict[str, float],
        eos_coef: float = 0.1,
    ):
        super().__init__()
        self.num_obj_classes = num_obj_classes
        self.matcher = matcher
        self.weights = weights
        empty_weight = torch.ones(num_obj_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def normalisers(self, targets: list[dict], num_queries: int) -> LossNormalisers:
        """Global normalisers of one batch (all-reduced over ranks)."""
        counts = LossNormalisers.local_counts(targets, num_queries, float(self.empty_weight[-1]))
        return LossNormalisers.from_counts(counts)

    def layer_losses(
        self, out: dict, targets: list[dict], indices: Indices, norms: LossNormalisers, all_queries: bool
    ) -> dict[str, Tensor]:
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
            # weighted mean with a global denominator (sum of the weights over ranks / world size)
            loss_obj = (
                F.cross_entropy(logits.transpose(1, 2), cls_t, self.empty_weight, reduction="sum")
                / norms.obj_weight
            )
            verb_t = torch.zeros_like(verb_logits)
            verb_t[b_idx, q_idx] = t_verb
            loss_verb = focal_verb_loss(verb_logits, verb_t, norms.positives)
        else:
            # mined groups: no "no object" term; an empty batch contributes an exact zero
            sel = logits[b_idx, q_idx]
            loss_obj = (
                F.cross_entropy(sel, t_obj, reduction="sum") / norms.pairs if len(t_obj) else logits.sum() * 0
            )
            loss_verb = focal_verb_loss(verb_logits[b_idx, q_idx], t_verb, norms.positives)

        num_pairs = norms.pairs
        s_sub = out["pred_sub_boxes"][b_idx, q_idx].float()
        s_obj = out["pred_obj_boxes"][b_idx, q_idx].float()
        losses = {
            "loss_obj_ce": loss_obj,
            "loss_verb_ce": loss_verb,
            "loss_sub_bbox": (s_sub - t_sub).abs().sum() / num_pairs,
            "loss_obj_bbox": ((s_obj - t_objb).abs().sum(-1) * exists).sum() / num_pairs,
            "loss_sub_giou": (
                1 - elementwise_giou(box_cxcywh_to_xyxy(s_sub), box_cxcywh_to_xyxy(t_sub))
            ).sum()
            / num_pairs,
            "loss_obj_giou": (
                (1 - elementwise_giou(box_cxcywh_to_xyxy(s_obj), box_cxcywh_to_xyxy(t_objb))) * exists
            ).sum()
            / num_pairs,
        }
        return losses

    def _all_layers(
        self,
        outputs: dict,
        targets: list[dict],
        layer_indices: list[Indices],
        norms: LossNormalisers,
        all_queries: bool,
        prefix: str,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum over layers and terms, and every unweighted term keyed
        ``<prefix><term>[_<layer>]``."""
        layers = [outputs] + list(outputs.get("aux_outputs", []))[::-1]  # last layer first
        logs: dict[str, Tensor] = {}
        total = 0.0
        for i, (out, idx) in enumerate(zip(layers, layer_indices)):
            suffix = "" if i == 0 else f"_{len(layers) - 1 - i}"
            for k, v in self.layer_losses(out, targets, idx, norms, all_queries).items():
                logs[f"{prefix}{k}{suffix}"] = v
                total = total + self.weights[k] * v
        return total, logs

    def match_all_layers(self, outputs: dict, targets: list[dict]) -> list[Indices]:
        """Hungarian assignment for the last layer and every aux layer (last layer first)."""
        layers = [outputs] + list(outputs.get("aux_outputs", []))[::-1]
        return [self.matcher(o, targets) for o in layers]

    def forward(
        self,
        outputs: dict,
        targets: list[dict],
        alpha: float = 1.0,
        group_weights: dict[str, float] | None = None,
        norms: LossNormalisers | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Returns (total loss, dict of every unweighted term for logging).

        total = alpha * L_learnable + sum_g group_weights[g] * L_g (+ 0 * unused miner params).
        ``norms``: the global denominators (default: this batch's, all-reduced over ranks; the
        trainer passes those of a whole accumulation window).
        """
        nq = outputs["pred_obj_logits"].shape[1]
        norms = norms or self.normalisers(targets, nq)
        learn_idx = outputs.get("indices") or self.match_all_layers(outputs, targets)
        total, logs = self._all_layers(outputs, targets, learn_idx, norms, True, "")
        total = alpha * total
        for name, group in (outputs.get("groups") or {}).items():
            assign = group["assignment"]
            n_layers = 1 + len(group["outputs"].get("aux_outputs", []))
            if assign["type"] == "fixed":
                g_idx = [assign["indices"]] * n_layers
            else:
                g_idx = [_remap(idx, assign.get("query_map"), nq) for idx in learn_idx[:n_layers]]
            g_total, g_logs = self._all_layers(group["outputs"], targets, g_idx, norms, False, f"{name}/")
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
        "loss_obj_ce": lc.obj_loss_coef,
        "loss_verb_ce": lc.verb_loss_coef,
        "loss_sub_bbox": lc.bbox_loss_coef,
        "loss_obj_bbox": lc.bbox_loss_coef,
        "loss_sub_giou": lc.giou_loss_coef,
        "loss_obj_giou": lc.giou_loss_coef,
    }
    return SetCriterion(num_obj_classes, matcher, weights, lc.eos_coef)
