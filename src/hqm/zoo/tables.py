"""Rename tables, one per (source checkpoint layout, our detector).

Layouts (verified against the public code; see the report in ``docs`` / the zoo tests):

* ``detr``: facebookresearch/detr COCO checkpoints (``detr-r50-e632da11.pth``, entry ``model``):
  ``backbone.0.body.*`` (torchvision ResNet, frozen BN buffers), ``input_proj``, ``query_embed``
  (100 x 256), ``transformer.encoder.layers.N.*``, ``transformer.decoder.layers.N.*``,
  ``transformer.decoder.norm``, ``class_embed`` (92 x 256) and ``bbox_embed.layers.{0,1,2}``.
* ``qpic``: hitachi-rd-cv/qpic checkpoints: the DETR trunk names plus ``obj_class_embed``,
  ``verb_class_embed``, ``sub_bbox_embed``, ``obj_bbox_embed`` at the top level (our names).
* ``hqm``: MuchHair/HQM checkpoints: the same trunk, but the four heads live inside the decoder
  (``transformer.decoder.obj_class_embed`` ...), and GBS's F_p is ``query_embed_sp.layers.{0,1}``
  (MLP 12 -> D -> D).
* ``ours``: checkpoints written by ``hqm train`` (identity).

Adding CDN or HOTR = one more table here, e.g. ``(detr, cdn)`` sending the DETR decoder to CDN's
pair decoder, plus one registry line in :data:`TABLES`.
"""

from __future__ import annotations

from hqm.zoo.rename import ConversionSpec, Rule

#: where our GBS miner keeps F_p: ``nn.Sequential(Linear(12, D), ReLU, Linear(D, D))`` (hqm.mining.gbs)
GBS_FP_PREFIX = "miners.gbs.query_embed_sp"

HEADS = r"(obj_class_embed|verb_class_embed|sub_bbox_embed|obj_bbox_embed)"

#: backbone, input projection, encoder, decoder layers, decoder norm, learnable queries: same names
TRUNK = (
    Rule(r"backbone\.0\.body\.(.+)", (r"backbone.0.body.\1",)),
    Rule(r"input_proj\.(weight|bias)", (r"input_proj.\1",)),
    Rule(r"query_embed\.weight", ("query_embed.weight",)),
    Rule(r"transformer\.encoder\.(layers\..+)", (r"transformer.encoder.\1",)),
    Rule(r"transformer\.decoder\.(layers\..+|norm\.(?:weight|bias))", (r"transformer.decoder.\1",)),
)

DETR_TO_QPIC = ConversionSpec(
    source="detr",
    detector="qpic",
    rules=TRUNK
    + (
        Rule(r"class_embed\.(weight|bias)", (r"obj_class_embed.\1",), op="class_rows"),
        Rule(r"bbox_embed\.(layers\.\d+\.(?:weight|bias))", (r"sub_bbox_embed.\1", r"obj_bbox_embed.\1")),
    ),
    fresh=("verb_class_embed", "miners."),
    description="DETR COCO detector -> QPIC initialisation (QPIC convert_parameters.py semantics)",
)

QPIC_TO_QPIC = ConversionSpec(
    source="qpic",
    detector="qpic",
    rules=TRUNK + (Rule(HEADS + r"\.(.+)", (r"\1.\2",)),),
    fresh=("miners.",),
    description="hitachi-rd-cv/qpic released weights (names already ours)",
)

HQM_TO_QPIC = ConversionSpec(
    source="hqm",
    detector="qpic",
    rules=TRUNK
    + (
        Rule(r"transformer\.decoder\." + HEADS + r"\.(.+)", (r"\1.\2",)),
        # HQM's MLP(12, D, D, 2) layers 0 / 1 = our nn.Sequential(Linear, ReLU, Linear) entries 0 / 2
        Rule(r"query_embed_sp\.layers\.0\.(weight|bias)", (GBS_FP_PREFIX + r".0.\1",)),
        Rule(r"query_embed_sp\.layers\.1\.(weight|bias)", (GBS_FP_PREFIX + r".2.\1",)),
    ),
    description="MuchHair/HQM released weights (heads under transformer.decoder., F_p = query_embed_sp)",
)

OURS = ConversionSpec(
    source="ours", detector="qpic", rules=(Rule(r"(.+)", (r"\1",)),), description="hqm checkpoints"
)

#: (source layout, detector) -> spec
TABLES: dict[tuple[str, str], ConversionSpec] = {
    ("detr", "qpic"): DETR_TO_QPIC,
    ("qpic", "qpic"): QPIC_TO_QPIC,
    ("hqm", "qpic"): HQM_TO_QPIC,
    ("ours", "qpic"): OURS,
}

SOURCES = ("detr", "qpic", "hqm", "ours")


def get_spec(source: str, detector: str) -> ConversionSpec:
    if (source, detector) not in TABLES:
        have = ", ".join(f"{s}->{d}" for s, d in sorted(TABLES))
        raise ValueError(f"no rename table for {source} checkpoints -> {detector!r} detector (have: {have})")
    return TABLES[(source, detector)]


def detect_format(state: dict) -> str:
    """Guess the layout of a state dict from its key names."""
    keys = set(state)
    if any(k.startswith("transformer.decoder.obj_class_embed.") for k in keys):
        return "hqm"
    if "class_embed.weight" in keys and "bbox_embed.layers.0.weight" in keys:
        return "detr"
    if "obj_class_embed.weight" in keys:
        # hqm-only parameters: mining modules, spatial queries (released QPIC has neither)
        ours = any(k.startswith(("miners.", "spatial_queries.")) for k in keys)
        return "ours" if ours else "qpic"
    sample = ", ".join(sorted(keys)[:5])
    raise ValueError(f"unrecognised checkpoint layout (keys like: {sample}); expected DETR, QPIC, HQM or hqm")
