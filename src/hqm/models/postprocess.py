"""Model outputs -> ranked HOI triplets (``HOIPredictions``) in original-image pixels."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from hqm.box_ops import box_cxcywh_to_xyxy, box_iou
from hqm.models.heads import gather_rows
from hqm.structures import DatasetMeta, HOIPredictions


class PostProcessHOI(nn.Module):
    """QPIC post-processing.

    object score/label = max/argmax of the softmax over the real classes (no-object excluded);
    verb score = sigmoid(verb logit) * object score, times the dataset's (verb, object) validity;
    every (query, verb) is a candidate triplet; keep the ``max_dets`` best per image
    (``per_object_topk``: instead keep the union of the best ``max_dets`` per predicted object class,
    a superset that lets Known-Object evaluation apply its own cut). The subject is always a person.
    Optional CDN-style pair-wise NMS inside each (object class, verb) group: suppress when
    IoU_sub^alpha * IoU_obj^beta > thresh.
    """

    def __init__(
        self,
        meta: DatasetMeta,
        max_dets: int = 100,
        per_object_topk: bool = False,
        nms: bool = False,
        nms_thresh: float = 0.7,
        nms_alpha: float = 1.0,
        nms_beta: float = 0.5,
    ):
        super().__init__()
        self.meta = meta
        self.max_dets = max_dets
        self.per_object_topk = per_object_topk
        self.nms = nms
        self.nms_thresh, self.nms_alpha, self.nms_beta = nms_thresh, nms_alpha, nms_beta
        self.register_buffer(
            "correct_mat",
            torch.as_tensor(np.asarray(meta.correct_mat), dtype=torch.float32),
            persistent=False,
        )

    def triplet_scores(self, outputs: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(verb scores (B, Q, V) before the validity mask, object labels (B, Q), subject and object
        boxes (B, Q, 4) normalised cxcywh) of every query; QPIC's rule (class docstring)."""
        obj_prob = outputs["pred_obj_logits"].float().softmax(-1)[..., :-1]
        obj_scores, obj_labels = obj_prob.max(-1)  # (B, Q)
        verb = outputs["pred_verb_logits"].float().sigmoid() * obj_scores[..., None]
        return verb, obj_labels, outputs["pred_sub_boxes"].float(), outputs["pred_obj_boxes"].float()

    @torch.no_grad()
    def forward(self, outputs: dict, orig_sizes: Tensor, file_names: list[str]) -> list[HOIPredictions]:
        """orig_sizes: (B, 2) (h, w) of the original images."""
        verb, obj_labels, sub, obj = self.triplet_scores(outputs)
        valid = self.correct_mat.to(verb.device)[:, obj_labels].permute(1, 2, 0) > 0  # (B, Q, V)
        verb = verb.masked_fill(~valid, -1.0)  # invalid (verb, object) pairs sort last and are dropped
        h, w = orig_sizes.float().unbind(-1)
        scale = torch.stack([w, h, w, h], -1)[:, None, :].to(verb.device)
        sub = box_cxcywh_to_xyxy(sub) * scale
        obj = box_cxcywh_to_xyxy(obj) * scale
        if self.meta.no_object_class is not None:  # a role without object has an empty box
            obj = obj * (obj_labels != self.meta.no_object_class)[..., None]
        results = []
        nv = verb.shape[-1]
        for i in range(verb.shape[0]):
            flat = verb[i].flatten()
            keep = self._select(flat, obj_labels[i].repeat_interleave(nv))
            keep = keep[flat[keep] >= 0]
            q, v = keep // nv, keep % nv
            if self.nms:
                keep_nms = self._pair_nms(sub[i][q], obj[i][q], obj_labels[i][q], v, flat[keep])
                q, v, keep = q[keep_nms], v[keep_nms], keep[keep_nms]
            results.append(
                HOIPredictions(
                    file_name=file_names[i],
                    sub_boxes=sub[i][q].cpu().numpy(),
                    obj_boxes=obj[i][q].cpu().numpy(),
                    obj_labels=obj_labels[i][q].cpu().numpy(),
                    verb_labels=v.cpu().numpy(),
                    scores=flat[keep].cpu().numpy(),
                    image_size=(int(orig_sizes[i, 0]), int(orig_sizes[i, 1])),
                    query_index=q.cpu().numpy(),
                    meta=self.meta,
                )
            )
        return results

    def _select(self, scores: Tensor, obj_of: Tensor) -> Tensor:
        """Indices of kept candidates, by descending score."""
        k = min(self.max_dets, scores.numel())
        if not self.per_object_topk:
            return scores.topk(k).indices
        order = scores.argsort(descending=True, stable=True)
        labels = obj_of[order]
        # rank of each candidate within its predicted object class, in score order
        onehot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1)
        rank = (onehot.cumsum(0) * onehot).sum(-1) - 1
        return order[rank < self.max_dets]

    def _pair_nms(
        self, sub: Tensor, obj: Tensor, obj_labels: Tensor, verbs: Tensor, scores: Tensor
    ) -> Tensor:
        order = scores.argsort(descending=True, stable=True)
        sub, obj, obj_labels, verbs = sub[order], obj[order], obj_labels[order], verbs[order]
        overlap = box_iou(sub, sub)[0] ** self.nms_alpha * box_iou(obj, obj)[0] ** self.nms_beta
        same = (obj_labels[:, None] == obj_labels[None]) & (verbs[:, None] == verbs[None])
        suppress = (overlap > self.nms_thresh) & same
        keep = torch.ones(len(order), dtype=torch.bool, device=order.device)
        for i in range(len(order)):
            if keep[i]:
                keep[i + 1 :] &= ~suppress[i, i + 1 :]
        return order[keep]


class PostProcessHOTR(PostProcessHOI):
    """HOTR post-processing (Kim et al., CVPR 2021; published ``PostProcess``), then QPIC's ranking.

    Every interaction query gives one pair: the instances its human and object pointers point at
    (argmax of the pointer softmax over ``pred_hidx`` / ``pred_oidx`` (B, Q, Ni)); the pair boxes are
    those instances' boxes (``pred_boxes``, normalised cxcywh), the object class the pointed
    object instance's best real class. Score of (query, verb v) = sigmoid(action_v) x (1 -
    sigmoid(no interaction)) x the two pointer probabilities x the human instance's person
    probability x the object instance's class score. A V-COCO role without object (an object pointer
    at the human itself, the published convention) is the dataset's "no object" class with an empty
    box and object score 1. The subject is always a person (class 0).
    """

    def triplet_scores(self, outputs: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        inst_prob = outputs["pred_logits"].float().softmax(-1)[..., :-1]  # (B, Ni, C_obj)
        boxes = outputs["pred_boxes"].float()
        p_h, h_idx = outputs["pred_hidx"].float().softmax(-1).max(-1)  # (B, Q)
        p_o, o_idx = outputs["pred_oidx"].float().softmax(-1).max(-1)
        obj_scores, obj_labels = gather_rows(inst_prob, o_idx).max(-1)
        human = gather_rows(inst_prob, h_idx)[..., 0]
        if self.meta.no_object_class is not None:
            no_obj = h_idx == o_idx
            obj_labels = torch.where(no_obj, self.meta.no_object_class, obj_labels)
            obj_scores = torch.where(no_obj, torch.ones_like(obj_scores), obj_scores)
        actions = outputs["pred_actions"].float().sigmoid()
        interaction = 1 - actions[..., -1]
        pair = interaction * p_h * p_o * human * obj_scores
        verb = actions[..., :-1] * pair[..., None]
        return verb, obj_labels, gather_rows(boxes, h_idx), gather_rows(boxes, o_idx)


def build_postprocessor(cfg, meta: DatasetMeta, hotr: bool = False) -> PostProcessHOI:
    """QPIC's (QPIC, CDN) or, ``hotr``, HOTR's post-processor with the options of ``cfg.eval``."""
    e = cfg.eval
    cls = PostProcessHOTR if hotr else PostProcessHOI
    return cls(
        meta,
        e.max_dets,
        per_object_topk=e.mode == "ko",
        nms=e.nms,
        nms_thresh=e.nms_thresh,
        nms_alpha=e.nms_alpha,
        nms_beta=e.nms_beta,
    )


def build_hotr_postprocessor(cfg, meta: DatasetMeta) -> PostProcessHOTR:
    return build_postprocessor(cfg, meta, hotr=True)
