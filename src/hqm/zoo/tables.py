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
* ``cdn``: YueLiao/CDN checkpoints: the QPIC names plus ``transformer.interaction_decoder.*``
  (tables in ``hqm.zoo.cdn``).
* ``ours``: checkpoints written by ``hqm train`` (identity).

Each detector has its :class:`CheckpointLayouts` (the sources it loads, how to detect them, its DETR
initialisations); ``hqm.zoo.layouts.LAYOUTS`` lists them by detector name. Adding HOTR = its tables
in ``hqm/zoo/hotr.py`` plus one entry in ``LAYOUTS``.
* ``hotr``: kakaobrain/HOTR checkpoints (``detr.*`` + the interaction branch; ``hqm.zoo.hotr``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hqm.zoo.rename import ConversionSpec, Rule
from hqm.zoo.safe_load import CheckpointError

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


def common_layout(state: dict) -> str | None:
    """The layouts every detector's tables know: ``detr`` (a DETR detector: the initialisation of
    every HOI detector) and ``ours`` (an hqm checkpoint with mining parameters), else None."""
    keys = set(state)
    if "class_embed.weight" in keys and "bbox_embed.layers.0.weight" in keys:
        return "detr"
    # hqm-only parameters: mining modules, spatial queries (released QPIC / CDN have neither)
    if "obj_class_embed.weight" in keys and any(k.startswith(("miners.", "spatial_queries.")) for k in keys):
        return "ours"
    return None


def _unknown_transformer_parts(state: dict, known: tuple[str, ...]) -> list[str]:
    parts = {k.split(".")[1] for k in state if k.startswith("transformer.") and k.count(".") > 1}
    return sorted(p for p in parts if p not in known)


def detect_qpic_layout(state: dict) -> str:
    """``detr``, ``ours``, ``hqm`` (heads inside the decoder) or ``qpic``. A state dict with other
    transformer parts (CDN's ``transformer.interaction_decoder``) is another detector's: refused."""
    foreign = _unknown_transformer_parts(state, ("encoder", "decoder"))
    if foreign:
        raise CheckpointError(
            f"the checkpoint has transformer.{foreign[0]}.*, which QPIC does not have: another "
            f"detector's weights (model.detector=cdn for transformer.interaction_decoder)"
        )
    layout = common_layout(state)
    if layout is not None:
        return layout
    if any(k.startswith("transformer.decoder.obj_class_embed.") for k in state):
        return "hqm"
    if "obj_class_embed.weight" in state:
        return "qpic"
    sample = ", ".join(sorted(state)[:5])
    raise CheckpointError(
        f"unrecognised checkpoint layout (keys like: {sample}); expected DETR, QPIC, HQM or hqm weights"
    )


@dataclass(frozen=True)
class CheckpointLayouts:
    """The checkpoint layouts one detector loads: ``specs`` (source layout -> rename table),
    ``detect_layout`` (state dict -> one of the ``specs`` keys, or ``CheckpointError`` naming the problem)
    and, for the DETR initialisation, named alternatives ``detr_inits`` (the first is the default)."""

    detector: str
    specs: dict[str, ConversionSpec]
    detect_layout: Callable[[dict], str]
    detr_inits: dict[str, ConversionSpec] = field(default_factory=dict)
    #: ``(the checkpoint's non-weight entries, model, path) -> None``: refuses (``CheckpointError``)
    #: a file whose training arguments do not fit the model (HOTR's temperature), or None
    check_args: Callable[[dict, Any, Any], None] | None = None

    def detect(self, state: dict) -> str:
        layout = self.detect_layout(state)
        if layout not in self.specs:  # a table bug, not a user error
            raise KeyError(f"{self.detector}: detected layout {layout!r} has no rename table")
        return layout


QPIC_LAYOUTS = CheckpointLayouts(
    detector="qpic",
    specs={"detr": DETR_TO_QPIC, "qpic": QPIC_TO_QPIC, "hqm": HQM_TO_QPIC, "ours": OURS},
    detect_layout=detect_qpic_layout,
    detr_inits={"paper": DETR_TO_QPIC},
)
