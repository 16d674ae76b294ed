"""HOTR (Kim et al., CVPR 2021, "HOTR: End-to-End Human-Object Interaction Detection with Transformers").

An instance detector (DETR) and an interaction decoder in parallel over the same encoder memory::

    memory ─> instance decoder (detr.transformer.decoder, Ni instance queries) ─> boxes + classes
                     │ last layer's output, L2-normalised: the instance set (B, Ni, D),
                     │ computed ONCE per image and kept in EncodedImages.shared["instances"]
                     v
    memory ─> interaction decoder (interaction_transformer.decoder, Nh queries) ─> per query:
                 human pointer  = normalise(H_Pointer_embed(h)) . instances^T / tau   (B, Nh, Ni)
                 object pointer = normalise(O_Pointer_embed(h)) . instances^T / tau   (B, Nh, Ni)
                 actions        = action_embed(h): C_verb verbs + 1 "no interaction"  (sigmoids)

A triplet is (the instance the human pointer points at, the verb, the instance the object pointer
points at); a V-COCO role without object points its object pointer at the human itself (the
published matcher's convention), read back as "no object" by the post-processor.

Outputs (``forward`` contract of :class:`hqm.models.detector.DetrHOIModel`, HOTR's names beside the
QPIC ones so the evaluators, API, ``predict --attn`` and export work unchanged):

* ``pred_hidx`` / ``pred_oidx`` (B, Nh, Ni) pointer logits; ``pred_actions`` (B, Nh, C_verb + 1);
* ``pred_logits`` (B, Ni, C_obj + 1) / ``pred_boxes`` (B, Ni, 4) normalised cxcywh: the instance
  set's last layer (repeated in every interaction layer's dict, as the published ``_set_aux_loss``);
* ``pred_verb_logits`` (B, Nh, C_verb) = the verb columns of ``pred_actions``; ``pred_obj_logits``
  (B, Nh, C_obj + 1), ``pred_sub_boxes`` / ``pred_obj_boxes`` (B, Nh, 4): the class logits and boxes
  of the pointed (argmax) instances (no gradient to the pointers, as HOTR's ``return_obj_class``);
* ``aux_outputs``: the same per earlier interaction layer; ``inst_aux_outputs``: ``pred_logits`` /
  ``pred_boxes`` of the earlier instance-decoder layers (DETR's auxiliary loss).

HQM: every query group (learnable ``query_embed``, GBS's encoded shifted pairs, AMM's copies) enters
the interaction decoder as positional queries and points into the same shared instance set; the
hook numbers the interaction decoder's layers 0 .. L_i - 1 (the instance decoder runs without hook:
it is not a query group) and AMM masks them (``mining_layers``).

Parameter names follow kakaobrain/HOTR (``detr.backbone.0.body``, ``detr.input_proj``,
``detr.query_embed``, ``detr.transformer.{encoder,decoder}``, ``detr.class_embed``,
``detr.bbox_embed``, ``interaction_transformer.decoder``, ``query_embed``, ``H_Pointer_embed``,
``O_Pointer_embed``, ``action_embed``); the published ``interaction_transformer.encoder`` is the
same module as DETR's encoder and is not registered twice (``hqm.zoo.hotr`` maps it). The
temperature ``tau`` is not a parameter (``model.hotr.tau``; the published value lives in the
checkpoint's ``args``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hqm.models.attention import AttentionHook
from hqm.models.backbone import Joiner, build_backbone
from hqm.models.detector import DetectorSpec, DetrHOIModel, EncodedImages, QueryGroup
from hqm.models.heads import MLP, gather_rows, pack_outputs
from hqm.models.hotr_losses import build_hotr_criterion, build_hotr_matcher
from hqm.models.postprocess import build_hotr_postprocessor
from hqm.models.transformer import Transformer, TransformerDecoder, build_transformer

INSTANCES = "instances"  # key of the shared instance set in EncodedImages.shared


class DETRInstances(nn.Module):
    """DETR (Carion et al., ECCV 2020) under its own names: backbone, input_proj, transformer
    (encoder + instance decoder), query_embed (Ni, D), class_embed Linear(D, C_obj + 1) (last index:
    no object), bbox_embed MLP(D, D, 4, 3) + sigmoid -> normalised cxcywh."""

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int, num_queries: int):
        super().__init__()
        d = transformer.d_model
        self.backbone = backbone
        self.transformer = transformer
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, d)
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)


class HOTR(DetrHOIModel):
    """detr: the instance detector (frozen in the published runs: ``train.trainable``); the
    interaction decoder is registered as ``interaction_transformer.decoder``. ``num_queries``: the
    interaction queries Nh (16 published); ``tau``: the pointer temperature."""

    #: decode points into the instance set of ``EncodedImages.shared`` (one per image): every mined
    #: group takes a decoder call of its own
    shares_decoder_calls = False

    def __init__(
        self,
        detr: DETRInstances,
        interaction_decoder: TransformerDecoder,
        num_obj_classes: int,
        num_verb_classes: int,
        num_queries: int = 16,
        tau: float = 0.05,
        aux_loss: bool = True,
    ):
        super().__init__()
        if not tau > 0:
            raise ValueError(f"HOTR pointer temperature tau must be > 0, got {tau}")
        d = detr.transformer.d_model
        self.num_queries = num_queries
        self.hidden_dim = d
        self.num_obj_classes = num_obj_classes
        self.num_verb_classes = num_verb_classes
        self.tau = float(tau)
        self.aux_loss = aux_loss
        self.detr = detr
        self.interaction_transformer = nn.Module()
        self.interaction_transformer.decoder = interaction_decoder
        for name, p in interaction_decoder.named_parameters():  # DETR's init
            if p.dim() > 1 and "in_proj_weight" not in name:
                nn.init.xavier_uniform_(p)
        self.query_embed = nn.Embedding(num_queries, d)
        self.H_Pointer_embed = MLP(d, d, d, 3)
        self.O_Pointer_embed = MLP(d, d, d, 3)
        self.action_embed = nn.Linear(d, num_verb_classes + 1)  # last: "no interaction"

    @property
    def backbone(self) -> Joiner:
        """The instance detector's backbone (registered once, as ``detr.backbone``)."""
        return self.detr.backbone

    @property
    def num_instance_queries(self) -> int:
        return self.detr.query_embed.weight.shape[0]

    @property
    def interaction_layers(self) -> int:
        return len(self.interaction_transformer.decoder.layers)

    def encode(self, images: Tensor, masks: Tensor) -> EncodedImages:
        feat, mask, pos = self.detr.backbone(images, masks)
        src = self.detr.input_proj(feat)
        h, w = src.shape[-2:]
        pos = pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        memory = self.detr.transformer.encoder(src.flatten(2).transpose(1, 2), pos, mask)
        return EncodedImages(memory, pos, mask, (h, w))

    def instances(self, enc: EncodedImages) -> dict[str, Tensor]:
        """The instance set of ``enc``'s images, computed once and cached in ``enc.shared``:
        ``repr`` (B, Ni, D) L2-normalised last-layer embeddings, ``logits`` (L, B, Ni, C_obj + 1),
        ``boxes`` (L, B, Ni, 4) normalised cxcywh (every instance-decoder layer)."""
        if INSTANCES not in enc.shared:
            bsz = enc.memory.shape[0]
            query = self.detr.query_embed.weight[None].expand(bsz, -1, -1)
            hs = self.detr.transformer.decoder(query, enc.memory, enc.pos, enc.mask)
            enc.shared[INSTANCES] = {
                "repr": F.normalize(hs[-1], p=2, dim=-1),
                "logits": self.detr.class_embed(hs),
                "boxes": self.detr.bbox_embed(hs).sigmoid(),
            }
        return enc.shared[INSTANCES]

    @property
    def mining_layers(self) -> range:
        """AMM masks the interaction decoder's cross-attention (hook layers 0 .. L_i - 1)."""
        return range(self.interaction_layers)

    def decode(
        self,
        enc: EncodedImages,
        queries: QueryGroup,
        hook: AttentionHook | None = None,
        final_norm: bool = True,
    ) -> dict:
        queries.require_positional_only("HOTR")
        if queries.self_attn_bias is not None:
            raise ValueError("HOTR decodes one query group per call (QueryGroup.self_attn_bias must be None)")
        inst = self.instances(enc)
        decoder = self.interaction_transformer.decoder
        hs = decoder(queries.pos, enc.memory, enc.pos, enc.mask, queries.mask, hook, final_norm)
        out = pack_outputs(self.predict(hs, inst), self.aux_loss)
        if self.aux_loss:
            out["inst_aux_outputs"] = [
                {"pred_logits": lg, "pred_boxes": bx}
                for lg, bx in zip(inst["logits"][:-1], inst["boxes"][:-1])
            ]
        return out

    def predict(self, hs: Tensor, inst: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """hs (L, B, Q, D) interaction embeddings -> one output dict per layer (module docstring)."""
        h_ptr = F.normalize(self.H_Pointer_embed(hs), p=2, dim=-1)
        o_ptr = F.normalize(self.O_Pointer_embed(hs), p=2, dim=-1)
        hidx = torch.einsum("lbqd,bnd->lbqn", h_ptr, inst["repr"]) / self.tau
        oidx = torch.einsum("lbqd,bnd->lbqn", o_ptr, inst["repr"]) / self.tau
        actions = self.action_embed(hs)
        logits, boxes = inst["logits"][-1], inst["boxes"][-1]
        out = []
        for i in range(hs.shape[0]):
            h_arg, o_arg = hidx[i].detach().argmax(-1), oidx[i].detach().argmax(-1)
            out.append(
                {
                    "pred_hidx": hidx[i],
                    "pred_oidx": oidx[i],
                    "pred_actions": actions[i],
                    "pred_logits": logits,
                    "pred_boxes": boxes,
                    "pred_verb_logits": actions[i][..., :-1],
                    "pred_obj_logits": gather_rows(logits, o_arg),
                    "pred_sub_boxes": gather_rows(boxes, h_arg),
                    "pred_obj_boxes": gather_rows(boxes, o_arg),
                }
            )
        return out


def build_hotr(cfg, num_obj_classes: int, num_verb_classes: int) -> HOTR:
    """``model.num_queries`` instance queries and ``model.dec_layers`` instance-decoder layers (DETR);
    ``model.hotr.num_hoi_queries`` interaction queries, ``model.hotr.interaction_layers`` layers."""
    m, h = cfg.model, cfg.model.hotr
    transformer = build_transformer(m)
    interaction = TransformerDecoder(
        m.hidden_dim, m.nheads, m.dim_feedforward, m.dropout, h.interaction_layers
    )
    detr = DETRInstances(build_backbone(m), transformer, num_obj_classes, m.num_queries)
    return HOTR(
        detr,
        interaction,
        num_obj_classes,
        num_verb_classes,
        num_queries=h.num_hoi_queries,
        tau=h.tau,
        aux_loss=m.aux_loss,
    )


HOTR_DETECTOR = DetectorSpec(
    name="hotr",
    build_model=build_hotr,
    build_matcher=build_hotr_matcher,
    build_criterion=build_hotr_criterion,
    build_postprocessor=build_hotr_postprocessor,
    summary="HOTR (Kim et al., CVPR 2021): DETR instances + interaction decoder with HO pointers",
)
