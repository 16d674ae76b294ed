"""HOTR's matching and losses: DETR's on the instance set, HO-pointer triplet matching on the queries.

Per forward (``HOTRCriterion``)::

    instance set (pred_logits, pred_boxes, every instance layer) ──DETR Hungarian──> instance assignment
        └─ last layer's assignment: GT instance k -> instance query ptr(k)
    targets + pointers: pair j -> sub_ptr = ptr(sub_inst[j]), obj_ptr = ptr(obj_inst[j])
                        (a role without object points at its human, as the published matcher)
    interaction queries ──HOTRMatcher (every layer)──> assignment ──PointerLossTerms──> alpha * L
    mined groups (GBS: pair j <-> hard query j; AMM: the learnable assignment) ──> beta * L_g

* Instance matching and losses reuse QPIC's code on a one-box "pair" view of the instances
  (sub = obj = the instance box, no verbs): the cost is then exactly DETR's
  ``w_class * -p(class) + w_L1 * L1 + w_giou * -GIoU`` and the losses DETR's CE with ``eos_coef``, L1
  and 1 - GIoU (``loss.obj_loss_coef``, ``loss.bbox_loss_coef``, ``loss.giou_loss_coef``; DETR
  published 1 / 5 / 2, the configs set them). They are logged as ``inst/<term>``.
* Triplet cost (published ``HungarianPairMatcher``): ``C = w_idx * (-P_h[sub_ptr]) + w_idx *
  (-P_o[obj_ptr]) + w_act * C_verb`` with P the pointer softmax, C_verb QPIC's verb cost on the
  verb sigmoids (the published code applies its formula to the raw action logits). A GT instance
  no instance query was matched to (more instances than queries) costs nothing.
* Pointer losses ``loss_hidx`` / ``loss_oidx``: cross-entropy of the assigned queries' pointer logits
  towards sub_ptr / obj_ptr, divided by the number of GT pairs (the published mean over matched
  queries). ``loss_act``: the focal loss of ``hqm.models.criterion.focal_verb_loss`` with alpha 0.25
  (published: alpha-balanced focal BCE, gamma 2) over the verbs AND the "no interaction" column
  (1 on unassigned learnable queries, 0 on assigned ones), divided by the positive verb labels.
  Mined groups: assigned queries only. The published HICO-DET ``loss_tgt`` (object CE of the pointed
  instance's DETR logits, no gradient to the pointers and none at all with DETR frozen) is omitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from hqm.models.criterion import HOILossTerms, LossNormalisers, focal_verb_loss
from hqm.models.group_criterion import GroupCriterion
from hqm.models.matcher import HungarianMatcher, Indices

INSTANCE_TERMS = ("loss_obj_ce", "loss_sub_bbox", "loss_sub_giou")  # CE, L1, 1 - GIoU of the view
POINTER_TERMS = ("loss_hidx", "loss_oidx", "loss_act")


def instance_view(out: dict) -> dict:
    """One layer's instance predictions as QPIC outputs: every instance a pair with sub = obj."""
    logits, boxes = out["pred_logits"], out["pred_boxes"]
    return {
        "pred_obj_logits": logits,
        "pred_verb_logits": logits.new_zeros(logits.shape[:2] + (0,)),
        "pred_sub_boxes": boxes,
        "pred_obj_boxes": boxes,
    }


def instance_targets(t: dict) -> dict:
    """The GT instances (``inst_boxes`` (K, 4) normalised cxcywh, ``inst_labels`` (K,)) as QPIC
    pair targets (sub = obj = the box, no verbs)."""
    boxes = t["inst_boxes"]
    return {
        "obj_labels": t["inst_labels"],
        "verb_labels": boxes.new_zeros(len(boxes), 0),
        "sub_boxes": boxes,
        "obj_boxes": boxes,
        "has_obj": torch.ones(len(boxes), dtype=torch.bool, device=boxes.device),
    }


def pointer_targets(targets: list[dict], inst_indices: Indices) -> list[dict]:
    """Targets with ``sub_ptr`` / ``obj_ptr`` (Ng,) int64: the instance query assigned to each pair's
    human / object instance (``inst_indices``: per image (query_idx, GT instance idx)); a role
    without object takes its human's; -1 where the GT instance has no query."""
    out = []
    for t, (q, k) in zip(targets, inst_indices):
        n_inst = len(t["inst_labels"])
        query_of = torch.full((n_inst + 1,), -1, dtype=torch.int64)  # last slot: index -1
        query_of[k.cpu()] = q.cpu()
        sub = t["sub_inst"].cpu()
        obj = torch.where(t["obj_inst"].cpu() >= 0, t["obj_inst"].cpu(), sub)
        dev = t["sub_inst"].device
        out.append(dict(t, sub_ptr=query_of[sub].to(dev), obj_ptr=query_of[obj].to(dev)))
    return out


class HOTRMatcher(nn.Module):
    """Triplet matching of the interaction queries (module docstring).

    forward(outputs, targets) -> per image (query_idx, pair_idx) int64 on CPU. ``targets`` carry
    ``sub_ptr`` / ``obj_ptr`` (:func:`pointer_targets`) or, when they do not (a miner calling the
    matcher on raw targets), the instance assignment is solved here from the ``pred_logits`` /
    ``pred_boxes`` every layer's outputs carry.
    """

    def __init__(self, instance_matcher: HungarianMatcher, cost_idx: float = 1.0, cost_act: float = 1.0):
        super().__init__()
        self.instance_matcher = instance_matcher
        self.cost_idx = cost_idx
        self.cost_act = cost_act

    @torch.no_grad()
    def with_pointers(self, outputs: dict, targets: list[dict]) -> list[dict]:
        if all("sub_ptr" in t for t in targets):
            return targets
        inst_idx = self.instance_matcher(instance_view(outputs), [instance_targets(t) for t in targets])
        return pointer_targets(targets, inst_idx)

    @torch.no_grad()
    def cost_matrices(self, outputs: dict, targets: list[dict]) -> list[Tensor]:
        """Per image the (Q, G_i) cost matrix in fp32."""
        targets = self.with_pointers(outputs, targets)
        p_h = outputs["pred_hidx"].float().softmax(-1)
        p_o = outputs["pred_oidx"].float().softmax(-1)
        verb = outputs["pred_verb_logits"].float().sigmoid()
        out = []
        for i, t in enumerate(targets):
            y = t["verb_labels"].float().to(verb.device)
            if len(y) == 0:
                out.append(verb.new_zeros(verb.shape[1], 0))
                continue
            pos = verb[i] @ y.T / (y.sum(1)[None] + 1e-4)
            neg = (1 - verb[i]) @ (1 - y).T / ((1 - y).sum(1)[None] + 1e-4)
            c = self.cost_act * -0.5 * (pos + neg)
            for probs, ptr in ((p_h[i], t["sub_ptr"]), (p_o[i], t["obj_ptr"])):
                ptr = ptr.to(probs.device)
                c = c - self.cost_idx * probs[:, ptr.clamp(min=0)] * (ptr >= 0)[None]
            out.append(c)
        return out

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> Indices:
        res = []
        for c in self.cost_matrices(outputs, targets):
            c_np = np.nan_to_num(c.cpu().numpy(), nan=1e6, posinf=1e6, neginf=-1e6)
            qi, ti = linear_sum_assignment(c_np)
            res.append((torch.as_tensor(qi, dtype=torch.int64), torch.as_tensor(ti, dtype=torch.int64)))
        return res


@dataclass(frozen=True)
class HOTRNormalisers:
    """Global denominators (summed over micro-batches and ranks, / world size): pairs (pointer
    losses), positives (verb labels), instances (DETR box terms), inst_weight (DETR CE weights)."""

    pairs: float
    positives: float
    instances: float
    inst_weight: float


class PointerLossTerms(nn.Module):
    """HOTR's per-layer terms (``hqm.models.group_criterion.LossTerms``) on interaction outputs whose
    targets carry ``sub_ptr`` / ``obj_ptr``. ``instance_terms``: QPIC's terms for the instance view
    (their counts give the DETR denominators); ``num_instance_queries``: Ni."""

    def __init__(
        self,
        weights: dict[str, float],
        instance_terms: HOILossTerms,
        num_instance_queries: int,
        focal_alpha: float = 0.25,
    ):
        super().__init__()
        self.weights = dict(weights)
        self.instance_terms = instance_terms
        self.num_instance_queries = num_instance_queries
        self.focal_alpha = focal_alpha

    def local_counts(self, targets: list[dict], num_queries: int) -> dict[str, float]:
        inst = self.instance_terms.local_counts(
            [instance_targets(t) for t in targets], self.num_instance_queries
        )
        return {
            "pairs": float(sum(len(t["verb_labels"]) for t in targets)),
            "positives": sum(float(t["verb_labels"].sum()) for t in targets),
            "instances": inst["pairs"],
            "inst_weight": inst["obj_weight"],
        }

    def normalisers(self, totals: dict[str, float], world_size: int) -> HOTRNormalisers:
        return HOTRNormalisers(
            pairs=max(totals["pairs"], 1.0) / world_size,
            positives=max(totals["positives"], 1.0) / world_size,
            instances=max(totals["instances"], 1.0) / world_size,
            inst_weight=max(totals["inst_weight"], 1e-12) / world_size,
        )

    def layer_losses(
        self, out: dict, targets: list[dict], indices: Indices, norms: HOTRNormalisers, all_queries: bool
    ) -> dict[str, Tensor]:
        hidx, oidx = out["pred_hidx"].float(), out["pred_oidx"].float()
        actions = out["pred_actions"].float()
        dev = actions.device
        b_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(dev)
        q_idx = torch.cat([q for q, _ in indices]).to(dev)

        def gather(key: str) -> Tensor:
            return torch.cat([t[key][j.to(t[key].device)] for t, (_, j) in zip(targets, indices)]).to(dev)

        losses = {}
        for name, logits, key in (("loss_hidx", hidx, "sub_ptr"), ("loss_oidx", oidx, "obj_ptr")):
            ptr = gather(key)
            ce = F.cross_entropy(logits[b_idx, q_idx], ptr.clamp(min=0), reduction="none")
            losses[name] = (ce * (ptr >= 0)).sum() / norms.pairs
        y = gather("verb_labels").float()
        y_full = torch.cat([y, y.new_zeros(len(y), 1)], dim=1)  # assigned: "no interaction" is 0
        if all_queries:
            target = torch.zeros_like(actions)
            target[..., -1] = 1.0  # unassigned queries: "no interaction"
            target[b_idx, q_idx] = y_full
            losses["loss_act"] = focal_verb_loss(actions, target, norms.positives, self.focal_alpha)
        else:
            losses["loss_act"] = focal_verb_loss(
                actions[b_idx, q_idx], y_full, norms.positives, self.focal_alpha
            )
        return losses

    def instance_losses(self, out: dict, inst_targets: list[dict], indices: Indices, norms: HOTRNormalisers):
        """DETR's CE / L1 / GIoU of one instance-decoder layer (QPIC's terms on the instance view)."""
        qn = LossNormalisers(norms.instances, 1.0, norms.inst_weight, norms.instances)
        terms = self.instance_terms.layer_losses(instance_view(out), inst_targets, indices, qn, True)
        return {k: terms[k] for k in INSTANCE_TERMS}


class HOTRCriterion(GroupCriterion):
    """GroupCriterion over the interaction queries and every mined group, plus DETR's losses on the
    instance set (weights ``instance_weights``, logged ``inst/<term>[_<layer>]``)."""

    def __init__(self, terms: PointerLossTerms, matcher: HOTRMatcher, instance_weights: dict[str, float]):
        super().__init__(terms, matcher)
        self.instance_weights = dict(instance_weights)

    def forward(self, outputs, targets, alpha=1.0, group_weights=None, norms=None, idle_params=()):
        """As :meth:`GroupCriterion.forward`; ``targets`` need the instance keys (``hqm.data``)."""
        nq = outputs["pred_hidx"].shape[1]
        norms = norms if norms is not None else self.normalisers([targets], nq)
        inst_t = [instance_targets(t) for t in targets]
        inst_layers = [outputs] + list(outputs.get("inst_aux_outputs", []))[::-1]
        inst_idx = [self.matcher.instance_matcher(instance_view(o), inst_t) for o in inst_layers]
        ptr_targets = pointer_targets(targets, inst_idx[0])
        total, logs = super().forward(outputs, ptr_targets, alpha, group_weights, norms, idle_params)
        for i, (o, idx) in enumerate(zip(inst_layers, inst_idx)):
            suffix = "" if i == 0 else f"_{len(inst_layers) - 1 - i}"
            for k, v in self.terms.instance_losses(o, inst_t, idx, norms).items():
                logs[f"inst/{k}{suffix}"] = v
                total = total + self.instance_weights[k] * v
        return total, logs


def build_hotr_matcher(cfg) -> HOTRMatcher:
    lc, h = cfg.loss, cfg.model.hotr
    instance = HungarianMatcher(lc.set_cost_obj_class, 0.0, lc.set_cost_bbox, lc.set_cost_giou)
    return HOTRMatcher(instance, cost_idx=h.set_cost_idx, cost_act=h.set_cost_act)


def build_hotr_criterion(cfg, num_obj_classes: int, matcher: HOTRMatcher, class_counts=None) -> HOTRCriterion:
    """``class_counts`` is accepted for the registry's signature; HOTR has no class re-weighting."""
    lc, h = cfg.loss, cfg.model.hotr
    if lc.reweight.obj or lc.reweight.verb:
        raise ValueError("loss.reweight (CDN fine-tuning) does not apply to model.detector=hotr")
    instance_terms = HOILossTerms(num_obj_classes, {}, eos_coef=lc.eos_coef)
    weights = {"loss_hidx": h.idx_loss_coef, "loss_oidx": h.idx_loss_coef, "loss_act": lc.verb_loss_coef}
    terms = PointerLossTerms(weights, instance_terms, cfg.model.num_queries, focal_alpha=h.act_focal_alpha)
    instance_weights = {
        "loss_obj_ce": lc.obj_loss_coef,
        "loss_sub_bbox": lc.bbox_loss_coef,
        "loss_sub_giou": lc.giou_loss_coef,
    }
    return HOTRCriterion(terms, matcher, instance_weights)
