"""Rename tables for ``model.detector: cdn`` (YueLiao/CDN names, verified against the published code).

CDN keeps QPIC's top-level heads and DETR's trunk; its pair decoder is ``transformer.decoder`` and
its interaction decoder ``transformer.interaction_decoder`` (layers and a final ``norm``).

DETR-R50 COCO -> CDN initialisation, two choices (``hqm convert detr-to-hoi --detector cdn --init``):

* ``paper`` (default): DETR's decoder initialises the pair decoder AND the interaction decoder
  (layer by layer, as far as each has layers; the final norm too), as in the paper's runs;
* ``released``: what the published ``convert_parameters.py`` produces: it copies DETR's decoder to
  ``stage2_decoder.*``, a name the CDN model does not have, so only the pair decoder is initialised
  and the interaction decoder starts random.

Both re-index the COCO classifier rows to the dataset's objects and copy ``bbox_embed`` to the two
box heads, as for QPIC; ``verb_class_embed`` starts random.
"""

from __future__ import annotations

from hqm.zoo.rename import ConversionSpec, Rule
from hqm.zoo.safe_load import CheckpointError
from hqm.zoo.tables import HEADS, TRUNK, CheckpointLayouts, common_layout

DECODER = r"transformer\.decoder\.(layers\..+|norm\.(?:weight|bias))"
INTERACTION = Rule(
    r"transformer\.interaction_decoder\.(layers\..+|norm\.(?:weight|bias))",
    (r"transformer.interaction_decoder.\1",),
)
DETR_HEADS = (
    Rule(r"class_embed\.(weight|bias)", (r"obj_class_embed.\1",), op="class_rows"),
    Rule(r"bbox_embed\.(layers\.\d+\.(?:weight|bias))", (r"sub_bbox_embed.\1", r"obj_bbox_embed.\1")),
)

DETR_TO_CDN = ConversionSpec(
    source="detr",
    detector="cdn",
    rules=(Rule(DECODER, (r"transformer.decoder.\1", r"transformer.interaction_decoder.\1")),)
    + TRUNK
    + DETR_HEADS,
    fresh=("verb_class_embed", "miners."),
    description="DETR COCO detector -> CDN, DETR's decoder in both decoders (the paper's runs)",
)

DETR_TO_CDN_RELEASED = ConversionSpec(
    source="detr",
    detector="cdn",
    rules=TRUNK + DETR_HEADS,
    fresh=("verb_class_embed", "transformer.interaction_decoder", "miners."),
    description="DETR COCO detector -> CDN as the published converter: interaction decoder random",
)

CDN_TO_CDN = ConversionSpec(
    source="cdn",
    detector="cdn",
    rules=TRUNK + (INTERACTION, Rule(HEADS + r"\.(.+)", (r"\1.\2",))),
    fresh=("miners.",),
    description="YueLiao/CDN released weights (CDN-S/B/L; names already ours)",
)

QPIC_TO_CDN = ConversionSpec(
    source="qpic",
    detector="cdn",
    rules=TRUNK + (Rule(HEADS + r"\.(.+)", (r"\1.\2",)),),
    fresh=("transformer.interaction_decoder", "miners."),
    description="QPIC weights (or a DETR init converted for QPIC) -> CDN: interaction decoder random",
)

OURS_CDN = ConversionSpec(
    source="ours",
    detector="cdn",
    rules=TRUNK + (INTERACTION, Rule(HEADS + r"\.(.+)", (r"\1.\2",)), Rule(r"(miners\..+)", (r"\1",))),
    description="hqm CDN checkpoints (with mining parameters)",
)


def detect_cdn_layout(state: dict) -> str:
    """``detr``, ``ours`` (with miners), ``cdn`` (an interaction decoder: YueLiao/CDN or hqm) or
    ``qpic`` (QPIC-style weights without one: an initialisation, the interaction decoder stays fresh)."""
    layout = common_layout(state)
    if layout is not None:
        return layout
    if any(k.startswith("transformer.decoder.obj_class_embed.") for k in state):
        raise CheckpointError("HQM's released QPIC weights (heads inside the decoder) are not CDN weights")
    if "obj_class_embed.weight" in state:
        return "cdn" if any(k.startswith("transformer.interaction_decoder.") for k in state) else "qpic"
    sample = ", ".join(sorted(state)[:5])
    raise CheckpointError(f"unrecognised checkpoint layout (keys like: {sample}); expected DETR, CDN or hqm")


CDN_LAYOUTS = CheckpointLayouts(
    detector="cdn",
    specs={"detr": DETR_TO_CDN, "cdn": CDN_TO_CDN, "qpic": QPIC_TO_CDN, "ours": OURS_CDN},
    detect_layout=detect_cdn_layout,
    detr_inits={"paper": DETR_TO_CDN, "released": DETR_TO_CDN_RELEASED},
)

__all__ = ["CDN_LAYOUTS", "CDN_TO_CDN", "DETR_TO_CDN", "DETR_TO_CDN_RELEASED"]
