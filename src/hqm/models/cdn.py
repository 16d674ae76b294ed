"""CDN (Zhang et al., NeurIPS 2021, "Mining the Benefits of Two-stage and One-stage HOI Detection").

Shared backbone and encoder as QPIC, then two cascaded decoders::

    memory ─> pair decoder (transformer.decoder, L_p layers)        ─> boxes + object class
              query_pos = the group's positional queries (64 / 100 learnable, or mined)
                   │ last layer's normalised output embeddings
                   v
    memory ─> interaction decoder (transformer.interaction_decoder, L_i layers) ─> verbs
              query_pos = those embeddings, content from zeros

Both decoders are DETR post-norm decoders with their own final LayerNorm. Predictions of layer l
pair the pair decoder's and the interaction decoder's outputs counted from the last layer, over
min(L_p, L_i) layers (the released ``_set_aux_loss``): the top level is the last layers, the
auxiliary outputs the earlier min(L_p, L_i) - 1.

HQM: a mined group enters the pair decoder exactly like the learnable queries and its embeddings
continue into the interaction decoder (the same ``decode``); the attention hook numbers the pair
decoder's layers 0 .. L_p-1 and the interaction decoder's L_p .. L_p+L_i-1, and AMM masks the pair
decoder (``mining_layers``). ``final_norm=False`` (``amm.skip_final_norm``) skips the final norms
before the heads of both decoders; the interaction queries stay the normalised pair embeddings.

Parameter names follow YueLiao/CDN (``backbone.0.body``, ``input_proj``, ``query_embed``,
``transformer.encoder``, ``transformer.decoder``, ``transformer.interaction_decoder``,
``obj_class_embed``, ``verb_class_embed``, ``sub_bbox_embed``, ``obj_bbox_embed``), so released
weights load by name. The released ``use_matching`` head is not provided (off in the paper runs).
"""

from __future__ import annotations

from torch import Tensor, nn

from hqm.models.attention import AttentionHook
from hqm.models.backbone import Joiner, build_backbone
from hqm.models.criterion import build_criterion
from hqm.models.detector import DetectorSpec, DetrHOIModel, EncodedImages, QueryGroup
from hqm.models.heads import QPICHeadsMixin, pack_outputs
from hqm.models.matcher import build_matcher
from hqm.models.postprocess import build_postprocessor
from hqm.models.transformer import Transformer, TransformerDecoder, build_transformer


class CDN(QPICHeadsMixin, DetrHOIModel):
    """transformer: encoder + pair decoder (``transformer.decoder``); interaction_decoder: registered
    as ``transformer.interaction_decoder``. Heads: QPIC's names; boxes / objects read the pair
    decoder, verbs the interaction decoder."""

    def __init__(
        self,
        backbone: Joiner,
        transformer: Transformer,
        interaction_decoder: TransformerDecoder,
        num_obj_classes: int,
        num_verb_classes: int,
        num_queries: int = 64,
        aux_loss: bool = True,
        group_detr: int = 1,
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
        self.transformer.interaction_decoder = interaction_decoder
        for name, p in interaction_decoder.named_parameters():  # DETR's init, as the first decoder
            if p.dim() > 1 and "in_proj_weight" not in name:
                nn.init.xavier_uniform_(p)
        self.input_proj = nn.Conv2d(backbone.num_channels, d, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, d)
        self.init_heads(d, num_obj_classes, num_verb_classes)
        self.init_query_groups(group_detr)

    @property
    def pair_layers(self) -> int:
        return len(self.transformer.decoder.layers)

    @property
    def interaction_layers(self) -> int:
        return len(self.transformer.interaction_decoder.layers)

    def encode(self, images: Tensor, masks: Tensor) -> EncodedImages:
        feat, mask, pos = self.backbone(images, masks)
        src = self.input_proj(feat)
        h, w = src.shape[-2:]
        pos = pos.flatten(2).transpose(1, 2)
        mask = mask.flatten(1)
        memory = self.transformer.encoder(src.flatten(2).transpose(1, 2), pos, mask)
        return EncodedImages(memory, pos, mask, (h, w))

    @property
    def mining_layers(self) -> range:
        """AMM masks the pair decoder's cross-attention (hook layers 0 .. L_p - 1)."""
        return range(self.pair_layers)

    def decode(
        self,
        enc: EncodedImages,
        queries: QueryGroup,
        hook: AttentionHook | None = None,
        final_norm: bool = True,
    ) -> dict:
        queries.require_positional_only("CDN")
        pair_decoder = self.transformer.decoder
        joined = {"query_bias": queries.self_attn_bias}
        pair = pair_decoder(
            queries.pos, enc.memory, enc.pos, enc.mask, queries.mask, hook, final_norm, **joined
        )
        # the interaction queries are the pair decoder's last normalised output embeddings
        inter_pos = pair[-1] if final_norm else pair_decoder.norm(pair[-1])
        inter = self.transformer.interaction_decoder(
            inter_pos,
            enc.memory,
            enc.pos,
            enc.mask,
            queries.mask,
            hook,
            final_norm,
            layer_offset=self.pair_layers,
            **joined,
        )
        return pack_outputs(self.predict_cascade(pair, inter), self.aux_loss)

    def predict_cascade(self, pair: Tensor, inter: Tensor) -> list[dict[str, Tensor]]:
        """pair (L_p, B, Q, D), inter (L_i, B, Q, D) -> one output dict per paired layer (the last
        min(L_p, L_i) of each, in order): objects and boxes from ``pair``, verbs from ``inter``."""
        m = min(len(pair), len(inter))
        pair, inter = pair[-m:], inter[-m:]
        obj = self.obj_class_embed(pair)
        sub_boxes = self.sub_bbox_embed(pair).sigmoid()
        obj_boxes = self.obj_bbox_embed(pair).sigmoid()
        verb = self.verb_class_embed(inter)
        return [
            {
                "pred_obj_logits": obj[i],
                "pred_verb_logits": verb[i],
                "pred_sub_boxes": sub_boxes[i],
                "pred_obj_boxes": obj_boxes[i],
            }
            for i in range(m)
        ]


def build_cdn(cfg, num_obj_classes: int, num_verb_classes: int) -> CDN:
    """``model.dec_layers`` pair-decoder layers, ``model.cdn.interaction_layers`` interaction layers."""
    m = cfg.model
    transformer = build_transformer(m)
    interaction = TransformerDecoder(
        m.hidden_dim, m.nheads, m.dim_feedforward, m.dropout, m.cdn.interaction_layers
    )
    return CDN(
        build_backbone(m),
        transformer,
        interaction,
        num_obj_classes,
        num_verb_classes,
        num_queries=m.num_queries,
        aux_loss=m.aux_loss,
        group_detr=m.group_detr,
    )


CDN_DETECTOR = DetectorSpec(
    name="cdn",
    build_model=build_cdn,
    build_matcher=lambda cfg: build_matcher(cfg.loss),
    build_criterion=build_criterion,
    build_postprocessor=build_postprocessor,
    summary="CDN (Zhang et al., NeurIPS 2021): pair decoder -> interaction decoder, cascaded",
)
