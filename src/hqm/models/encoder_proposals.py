"""Encoder pair proposals and query selection (``model.two_stage``), for detectors with spatial queries.

An option of the shared detector, off in the paper configs. After the two-stage variant of Deformable
DETR (Zhu et al., ICLR 2021, section 4.2 "Two-Stage Deformable DETR") and DINO's mixed query selection
(Zhang et al., ICLR 2023, section 3.3), adapted to human-object pairs:

* every encoder token t (feature-map cell centre p_t) predicts one pair with the detector's output
  contract: object class logits (C_obj + 1, last = no object), verb logits (C_verb), and a subject and
  an object box whose centres are relative to p_t (``box_ops.relative_boxes``). Heads of their own
  (Deformable DETR's ``enc_output`` + ``enc_output_norm`` then class / box heads), named
  ``encoder_proposals.*``.
* training: the proposals are one more query group ("encoder"), matched one-to-one to the GT pairs by
  the detector's Hungarian matcher and supervised with its loss terms, unmatched tokens towards "no
  object" (``group_criterion.HungarianAssignment``). This is a dense, direct signal for the encoder and
  the backbone, which otherwise learn only through the decoder's few matched queries -- what slows a
  detector trained from scratch (the README's demo section measures it).
* query selection: the ``num_queries`` tokens with the highest pair score (the largest object-class
  probability other than "no object") give the learnable queries' reference points -- their predicted
  subject and object centres, gradient stopped. The positional (and self-attention) queries stay the
  learned ``query_embed`` (DINO: "mixed" selection: anchors from the encoder, content learned).
  AMM's copies of the learnable queries keep these points; GBS's hard queries bring their own (the
  shifted boxes' centres, ``mining.gbs.reference_points=boxes``), and Group DETR's extra groups keep
  deriving theirs from their positional queries (``SpatialQueries.reference``).

The proposal group's loss terms share the learnable queries' denominators (``GroupCriterion``): with
more tokens than queries, its "no object" share of the object-class loss is larger than theirs.

Padding tokens (of images smaller than the batch) get constant predictions -- "no object" with a logit
margin of 100 and boxes centred far outside the image -- so the matcher never prefers them and they
carry no gradient; they are selected only when an image has fewer valid tokens than queries (a small
image or a map smaller than ``model.num_queries``), and those queries then start at the image centre.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqm.box_ops import relative_boxes
from hqm.models.heads import MLP, gather_rows
from hqm.models.spatial_queries import key_positions

#: where padding tokens' constant boxes are centred (normalised units): far enough that the L1 cost
#: of matching one exceeds any valid token's
PADDING_CENTRE = 10.0


class EncoderProposals(nn.Module):
    """Pair proposals from the encoder memory (see the module docstring).

    hidden_dim D; num_obj_classes C_obj (without "no object"); num_verb_classes C_verb.
    """

    def __init__(self, hidden_dim: int, num_obj_classes: int, num_verb_classes: int):
        super().__init__()
        self.enc_output = nn.Linear(hidden_dim, hidden_dim)
        self.enc_output_norm = nn.LayerNorm(hidden_dim)
        self.obj_class_embed = nn.Linear(hidden_dim, num_obj_classes + 1)
        self.verb_class_embed = nn.Linear(hidden_dim, num_verb_classes)
        self.sub_bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)
        self.obj_bbox_embed = MLP(hidden_dim, hidden_dim, 4, 3)

    def forward(self, memory: Tensor, mask: Tensor, shape: tuple[int, int]) -> dict[str, Tensor]:
        """memory (B, HW, D); mask (B, HW) bool, True on padding; shape (H, W) of the feature map ->
        ``pred_obj_logits`` (B, HW, C_obj + 1), ``pred_verb_logits`` (B, HW, C_verb),
        ``pred_sub_boxes`` / ``pred_obj_boxes`` (B, HW, 4) normalised cxcywh (no ``aux_outputs``)."""
        h = self.enc_output_norm(self.enc_output(memory))
        points = key_positions(mask, shape).to(h.dtype)  # (B, HW, 2) token centres
        obj_logits = self.obj_class_embed(h)
        verb_logits = self.verb_class_embed(h)
        sub = relative_boxes(self.sub_bbox_embed(h), points)
        obj = relative_boxes(self.obj_bbox_embed(h), points)
        pad = mask[..., None]
        if bool(pad.any()):
            no_obj = torch.full_like(obj_logits, -100.0)
            no_obj[..., -1] = 0.0
            far = sub.new_tensor([PADDING_CENTRE, PADDING_CENTRE, 1e-3, 1e-3])
            obj_logits = torch.where(pad, no_obj, obj_logits)
            verb_logits = verb_logits.masked_fill(pad, -100.0)
            sub = torch.where(pad, far, sub)
            obj = torch.where(pad, far, obj)
        return {
            "pred_obj_logits": obj_logits,
            "pred_verb_logits": verb_logits,
            "pred_sub_boxes": sub,
            "pred_obj_boxes": obj,
        }

    @staticmethod
    def select(proposals: dict[str, Tensor], mask: Tensor, k: int) -> Tensor:
        """The reference points (B, k, 4) = (x_sub, y_sub, x_obj, y_obj) of the ``k`` proposals with the
        highest pair score per image (valid tokens first), gradient stopped. Queries beyond an image's
        valid tokens (a map smaller than ``model.num_queries``) start at the image centre."""
        score = proposals["pred_obj_logits"].detach().float().softmax(-1)[..., :-1].max(-1).values
        score = score.masked_fill(mask, -1.0)
        centres = torch.cat(
            [proposals["pred_sub_boxes"].detach()[..., :2], proposals["pred_obj_boxes"].detach()[..., :2]],
            dim=-1,
        ).masked_fill(mask[..., None], 0.5)  # a padding token, if chosen, starts at the image centre
        short = k - score.shape[1]
        if short > 0:  # fewer tokens than queries: the rest start at the centre too
            score = torch.cat([score, score.new_full((score.shape[0], short), -1.0)], dim=1)
            centres = torch.cat([centres, centres.new_full((centres.shape[0], short, 4), 0.5)], dim=1)
        idx = score.topk(k, dim=1).indices  # (B, k)
        return gather_rows(centres, idx).clamp(1e-4, 1 - 1e-4)
