"""HOI loss terms of QPIC-style detectors (QPIC, CDN) and the criterion that applies them to groups.

Loss terms of one decoder layer, given an assignment (query_idx, target_idx) per image:

* ``loss_obj_ce``: cross-entropy over the object classes. Learnable queries: every query, the
  unmatched ones towards "no object" (weight ``eos_coef``), a weighted mean. Mined groups: assigned
  queries only, a mean over the assigned pairs.
* ``loss_verb_ce``: CornerNet-style focal loss on sigmoid probabilities, divided by the number of
  positive labels (or the negative sum when there are none); computed in log space so it never
  produces NaN (the reference clamps nothing). ``verb_focal_alpha`` (CDN: 0.5) weighs the positive
  term by alpha and the negative one by 1 - alpha (QPIC: no weighting). With alpha 0.5, CDN's verb
  coefficient 2 gives the same gradient as QPIC's coefficient 1.
* ``loss_sub_bbox`` / ``loss_obj_bbox`` (L1) and ``loss_sub_giou`` / ``loss_obj_giou`` (1 - GIoU) on
  assigned pairs; object-box terms only where the GT object exists. Normaliser
  (``obj_box_norm``): ``pairs`` (default, the spec: every GT pair) or ``pairs_with_object`` (the
  released QPIC / CDN / HQM code: pairs that have an object, + 1e-4; 0.80x on a V-COCO batch with one
  object-less pair out of five).

Normalisers (:class:`LossNormalisers`) are global: every denominator above is counted from the
targets (``local_counts``), summed over micro-batches and ranks by the group criterion
(``hqm.models.group_criterion``) and divided by the world size. Counting from the targets equals
counting over the assignment whenever every GT pair is assigned (at most Nq pairs per image; GBS
assigns every pair, AMM every matched one); with more pairs than queries the verb denominator also
counts the positives of the unassigned pairs.

CDN's decoupled fine-tuning re-weights the object and verb classes (``reweighting``, see
``hqm.models.class_reweighting``); the object CE of the learnable queries is then a weighted mean
over the batch's own queries (the weights change every step, so there is no global count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.box_ops import box_cxcywh_to_xyxy, elementwise_giou
from hqm.models.class_reweighting import ClassReweighting
from hqm.models.group_criterion import GroupCriterion
from hqm.models.matcher import HungarianMatcher, Indices

TERMS = ("loss_obj_ce", "loss_verb_ce", "loss_sub_bbox", "loss_obj_bbox", "loss_sub_giou", "loss_obj_giou")
OBJ_BOX_NORMS = ("pairs", "pairs_with_object")


def focal_verb_loss(
    logits: Tensor,
    targets: Tensor,
    normaliser: float | Tensor | None = None,
    alpha: float | None = None,
    pos_weights: Tensor | None = None,
) -> Tensor:
    """CornerNet focal loss: -[a w y log p (1-p)^2 + (1-a) (1-y) log(1-p) p^2] / normaliser.

    ``normaliser`` defaults to the number of positive labels in ``targets`` (at least 1: the positive
    term is exactly zero without positives, so this is the negative sum then). ``alpha``: None for
    a = 1 on both terms (QPIC), else a (CDN: 0.5). ``pos_weights`` (C_verb,): per-class weights w of
    the positive term (CDN re-weighting), None for 1."""
    logits = logits.float()
    p = logits.sigmoid()
    pos = F.logsigmoid(logits) * (1 - p) ** 2 * targets
    neg = F.logsigmoid(-logits) * p**2 * (1 - targets)
    if pos_weights is not None:
        pos = pos * pos_weights
    if alpha is not None:
        pos, neg = alpha * pos, (1 - alpha) * neg
    if normaliser is None:
        normaliser = targets.sum().clamp(min=1)
    return -(pos.sum() + neg.sum()) / normaliser


@dataclass(frozen=True)
class LossNormalisers:
    """Global loss denominators: (count summed over ranks and micro-batches) / world size.

    pairs: GT pairs (box terms, mined object CE), at least 1 in total; positives: positive verb
    labels, at least 1 in total; obj_weight: sum of the learnable object-CE class weights;
    obj_pairs: GT pairs with an object + 1e-4 (``obj_box_norm: pairs_with_object``)."""

    pairs: float
    positives: float
    obj_weight: float
    obj_pairs: float = 1.0


class HOILossTerms(nn.Module):
    """The six QPIC terms of one layer (``hqm.models.group_criterion.LossTerms``).

    weights: term -> coefficient; eos_coef: the no-object class weight; verb_focal_alpha: see
    :func:`focal_verb_loss`; obj_box_norm: ``pairs`` | ``pairs_with_object``; reweighting: CDN's
    dynamic class re-weighting, or None.
    """

    def __init__(
        self,
        num_obj_classes: int,
        weights: dict[str, float],
        eos_coef: float = 0.1,
        verb_focal_alpha: float | None = None,
        obj_box_norm: str = "pairs",
        reweighting: ClassReweighting | None = None,
    ):
        super().__init__()
        if obj_box_norm not in OBJ_BOX_NORMS:
            raise ValueError(f"obj_box_norm={obj_box_norm!r} is not one of {OBJ_BOX_NORMS}")
        self.num_obj_classes = num_obj_classes
        self.weights = dict(weights)
        self.eos_coef = eos_coef
        self.verb_focal_alpha = verb_focal_alpha
        self.obj_box_norm = obj_box_norm
        self.reweighting = reweighting
        empty_weight = torch.ones(num_obj_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    def local_counts(self, targets: list[dict], num_queries: int) -> dict[str, float]:
        """Counts of one (micro-)batch. The Hungarian matcher assigns min(n_i, Nq) queries of image i
        to a real class (weight 1); the other queries take the no-object weight ``eos_coef``."""
        n = [len(t["obj_labels"]) for t in targets]
        matched = sum(min(k, num_queries) for k in n)
        return {
            "pairs": float(sum(n)),
            "positives": sum(float(t["verb_labels"].sum()) for t in targets),
            "obj_weight": matched + self.eos_coef * (len(targets) * num_queries - matched),
            "obj_pairs": sum(float(t["has_obj"].sum()) for t in targets),
        }

    def normalisers(self, totals: dict[str, float], world_size: int) -> LossNormalisers:
        return LossNormalisers(
            pairs=max(totals["pairs"], 1.0) / world_size,
            positives=max(totals["positives"], 1.0) / world_size,
            obj_weight=max(totals["obj_weight"], 1e-12) / world_size,
            obj_pairs=totals["obj_pairs"] / world_size + 1e-4,
        )

    def _learnable_class_terms(
        self, logits: Tensor, verb_logits: Tensor, cls_t: Tensor, verb_t: Tensor, norms: LossNormalisers
    ) -> tuple[Tensor, Tensor]:
        if self.reweighting is None:
            # weighted mean with a global denominator (sum of the weights over ranks / world size)
            ce = F.cross_entropy(logits.transpose(1, 2), cls_t, self.empty_weight, reduction="sum")
            loss_obj = ce / norms.obj_weight
            return loss_obj, focal_verb_loss(verb_logits, verb_t, norms.positives, self.verb_focal_alpha)
        obj_w, verb_w = self.reweighting(cls_t, verb_t, training=self.training)
        loss_obj = F.cross_entropy(logits.transpose(1, 2), cls_t, obj_w.to(logits.device))
        loss_verb = focal_verb_loss(
            verb_logits, verb_t, norms.positives, self.verb_focal_alpha, verb_w.to(logits.device)
        )
        return loss_obj, loss_verb

    def layer_losses(
        self, out: dict, targets: list[dict], indices: Indices, norms: LossNormalisers, all_queries: bool
    ) -> dict[str, Tensor]:
        """The six terms for one layer's predictions ``out`` under ``indices``."""
        logits = out["pred_obj_logits"].float()
        verb_logits = out["pred_verb_logits"].float()
        dev = logits.device
        b_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(dev)
        q_idx = torch.cat([q for q, _ in indices]).to(dev)

        def gather(key: str) -> Tensor:
            return torch.cat([t[key][j] for t, (_, j) in zip(targets, indices)]).to(dev)

        t_obj = gather("obj_labels")
        t_verb, t_sub, t_objb = (
            gather("verb_labels").float(),
            gather("sub_boxes").float(),
            gather("obj_boxes").float(),
        )
        exists = gather("has_obj").float()

        if all_queries:
            cls_t = torch.full(logits.shape[:2], self.num_obj_classes, dtype=torch.int64, device=dev)
            cls_t[b_idx, q_idx] = t_obj
            verb_t = torch.zeros_like(verb_logits)
            verb_t[b_idx, q_idx] = t_verb
            loss_obj, loss_verb = self._learnable_class_terms(logits, verb_logits, cls_t, verb_t, norms)
        else:
            # mined groups: no "no object" term; an empty batch contributes an exact zero
            sel = logits[b_idx, q_idx]
            loss_obj = (
                F.cross_entropy(sel, t_obj, reduction="sum") / norms.pairs if len(t_obj) else logits.sum() * 0
            )
            loss_verb = focal_verb_loss(
                verb_logits[b_idx, q_idx], t_verb, norms.positives, self.verb_focal_alpha
            )

        obj_norm = norms.pairs if self.obj_box_norm == "pairs" else norms.obj_pairs
        s_sub = out["pred_sub_boxes"][b_idx, q_idx].float()
        s_obj = out["pred_obj_boxes"][b_idx, q_idx].float()
        giou_sub = elementwise_giou(box_cxcywh_to_xyxy(s_sub), box_cxcywh_to_xyxy(t_sub))
        giou_obj = elementwise_giou(box_cxcywh_to_xyxy(s_obj), box_cxcywh_to_xyxy(t_objb))
        return {
            "loss_obj_ce": loss_obj,
            "loss_verb_ce": loss_verb,
            "loss_sub_bbox": (s_sub - t_sub).abs().sum() / norms.pairs,
            "loss_obj_bbox": ((s_obj - t_objb).abs().sum(-1) * exists).sum() / obj_norm,
            "loss_sub_giou": (1 - giou_sub).sum() / norms.pairs,
            "loss_obj_giou": ((1 - giou_obj) * exists).sum() / obj_norm,
        }


def loss_weights(cfg_loss) -> dict[str, float]:
    lc = cfg_loss
    return {
        "loss_obj_ce": lc.obj_loss_coef,
        "loss_verb_ce": lc.verb_loss_coef,
        "loss_sub_bbox": lc.bbox_loss_coef,
        "loss_obj_bbox": lc.bbox_loss_coef,
        "loss_sub_giou": lc.giou_loss_coef,
        "loss_obj_giou": lc.giou_loss_coef,
    }


def build_criterion(
    cfg, num_obj_classes: int, matcher: HungarianMatcher, class_counts=None
) -> GroupCriterion:
    """The group criterion with the HOI loss terms of ``cfg.loss``. ``class_counts``: the training
    set's (object, verb) label counts, needed by ``loss.reweight`` (CDN fine-tuning)."""
    lc = cfg.loss
    reweighting = None
    if lc.reweight.obj or lc.reweight.verb:
        if class_counts is None:
            raise ValueError("loss.reweight needs the training set's class counts")
        reweighting = ClassReweighting(
            obj_counts=class_counts[0],
            verb_counts=class_counts[1],
            reweight_obj=lc.reweight.obj,
            reweight_verb=lc.reweight.verb,
            eos_coef=lc.eos_coef,
            p_obj=lc.reweight.p_obj,
            p_verb=lc.reweight.p_verb,
            queue_size=lc.reweight.queue_size,
            static=lc.reweight.static,
        )
    terms = HOILossTerms(
        num_obj_classes,
        loss_weights(lc),
        eos_coef=lc.eos_coef,
        verb_focal_alpha=lc.verb_focal_alpha if lc.verb_focal_alpha > 0 else None,
        obj_box_norm=lc.obj_box_norm,
        reweighting=reweighting,
    )
    return GroupCriterion(terms, matcher)
