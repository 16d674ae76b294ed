"""QPIC (Tamura et al., CVPR 2021): DETR with HOI heads, one query per human-object pair.

``model.query_type`` other than ``embed`` adds spatial queries (``hqm.models.spatial_queries``):
reference points, relative box centres and a cross-attention prior, derived from every query group's
positional queries; ``model.box_refine`` refines their reference points layer by layer;
``model.two_stage`` selects them from pair proposals of the encoder (``hqm.models.encoder_proposals``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hqm.box_ops import relative_boxes
from hqm.models.attention import AttentionHook
from hqm.models.backbone import Joiner, build_backbone
from hqm.models.criterion import build_criterion
from hqm.models.detector import ENCODER_PROPOSALS, DetectorSpec, DetrHOIModel, EncodedImages, QueryGroup
from hqm.models.encoder_proposals import EncoderProposals
from hqm.models.heads import QPICHeadsMixin, pack_outputs
from hqm.models.matcher import build_matcher
from hqm.models.postprocess import build_postprocessor
from hqm.models.spatial_queries import build_spatial_queries
from hqm.models.transformer import Transformer, build_transformer


class QPIC(QPICHeadsMixin, DetrHOIModel):
    """Parameter names follow hitachi-rd-cv/qpic (``backbone.0.body``, ``input_proj``,
    ``query_embed``, ``transformer``, ``obj_class_embed``, ``verb_class_embed``, ``sub_bbox_embed``,
    ``obj_bbox_embed``)."""

    def __init__(
        self,
        backbone: Joiner,
        transformer: Transformer,
        num_obj_classes: int,
        num_verb_classes: int,
        num_queries: int = 100,
        aux_loss: bool = True,
        query_type: str = "embed",
        box_refine: bool = False,
        group_detr: int = 1,
        two_stage: bool = False,
    ):
        super().__init__()
        d = transformer.d_model
        self.num_queries = num_queries
        self.hidden_dim = d
        self.num_obj_classes = num_obj_classes
        self.num_verb_classes = num_verb_classes
        self.aux_loss = aux_loss
        self.backbone = backbone
        self.transformer = transformer
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, d)
        self.init_heads(d, num_obj_classes, num_verb_classes)
        # reference points / conditional spatial queries / Gaussian co-attention (None: DETR / QPIC)
        self.spatial_queries = build_spatial_queries(query_type, d, transformer.nhead)
        if box_refine and self.spatial_queries is None:
            raise ValueError(
                "model.box_refine needs reference points: set model.query_type to conditional or gaussian"
            )
        self.box_refine = box_refine
        if two_stage and self.spatial_queries is None:
            raise ValueError(
                "model.two_stage selects reference points: set model.query_type to conditional or gaussian"
            )
        # encoder pair proposals + query selection (None: the queries' own reference points)
        self.encoder_proposals = EncoderProposals(d, num_obj_classes, num_verb_classes) if two_stage else None
        self.init_query_groups(group_detr)

    def encode(self, images: Tensor, masks: Tensor) -> EncodedImages:
        feat, mask, pos = self.backbone(images, masks)
        src = self.input_proj(feat)
        h, w = src.shape[-2:]
        src = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        memory = self.transformer.encoder(src, pos, mask)
        enc = EncodedImages(memory, pos, mask, (h, w))
        if self.encoder_proposals is not None:
            enc.shared[ENCODER_PROPOSALS] = self.encoder_proposals(memory, mask, (h, w))
        return enc

    def learnable_queries(self, enc: EncodedImages) -> QueryGroup:
        """``query_embed`` for every image; with ``model.two_stage``, reference points selected from
        the encoder's pair proposals (``hqm.models.encoder_proposals``)."""
        group = super().learnable_queries(enc)
        if self.encoder_proposals is None:
            return group
        reference = self.encoder_proposals.select(enc.shared[ENCODER_PROPOSALS], enc.mask, self.num_queries)
        return QueryGroup(group.pos, group.mask, reference)

    @property
    def mining_layers(self) -> range:
        return range(len(self.transformer.decoder.layers))

    @property
    def decodes_reference_points(self) -> bool:
        return self.spatial_queries is not None

    def decode(
        self,
        enc: EncodedImages,
        queries: QueryGroup,
        hook: AttentionHook | None = None,
        final_norm: bool = True,
    ) -> dict:
        decoder = self.transformer.decoder
        args = (queries.pos, enc.memory, enc.pos, enc.mask, queries.mask, hook, final_norm)
        joined = {"query_bias": queries.self_attn_bias}
        if self.spatial_queries is None:
            return pack_outputs(self.predict(decoder(*args, **joined)), self.aux_loss)
        reference = queries.reference
        if reference is None:
            reference = self.spatial_queries.reference(queries.pos)
        elif self.training:
            # points given (model.two_stage): ref_point_head still takes part, with a zero gradient, so
            # that DDP runs without find_unused_parameters (as idle miners do, hqm.models.group_criterion)
            reference = reference + 0.0 * self.spatial_queries.reference(queries.pos)
        refine = self.refine_centres if self.box_refine else None
        prior = self.spatial_queries.cross_prior(reference, enc.mask, enc.shape, refine)
        return pack_outputs(self.predict(decoder(*args, prior, **joined), prior.references()), self.aux_loss)

    def refine_centres(self, content: Tensor, reference: Tensor) -> Tensor:
        """``model.box_refine``: the subject and object centres (B, Q, 4) that the box heads predict
        from a decoder layer's output ``content`` (B, Q, D, before the final LayerNorm) relative to
        that layer's ``reference`` (B, Q, 4)."""
        h = self.transformer.decoder.norm(content)
        sub = relative_boxes(self.sub_bbox_embed(h), reference[..., :2])
        obj = relative_boxes(self.obj_bbox_embed(h), reference[..., 2:])
        return torch.cat([sub[..., :2], obj[..., :2]], dim=-1)


def build_qpic(cfg, num_obj_classes: int, num_verb_classes: int) -> QPIC:
    m = cfg.model
    transformer = build_transformer(m)
    return QPIC(
        build_backbone(m),
        transformer,
        num_obj_classes,
        num_verb_classes,
        num_queries=m.num_queries,
        aux_loss=m.aux_loss,
        query_type=m.query_type,
        box_refine=m.box_refine,
        group_detr=m.group_detr,
        two_stage=m.two_stage,
    )


QPIC_DETECTOR = DetectorSpec(
    name="qpic",
    build_model=build_qpic,
    build_matcher=lambda cfg: build_matcher(cfg.loss),
    build_criterion=build_criterion,
    build_postprocessor=build_postprocessor,
    summary="QPIC (Tamura et al., CVPR 2021): one decoder, one query per human-object pair",
)
