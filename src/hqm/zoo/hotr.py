"""Rename tables for ``model.detector: hotr`` (kakaobrain/HOTR names, read from the published code).

Published layout (``hotr/models/hotr.py``, ``detr.py``): the instance DETR as a whole under ``detr.``
(``detr.backbone.0.body``, ``detr.input_proj``, ``detr.query_embed``, ``detr.transformer.encoder``,
``detr.transformer.decoder``, ``detr.class_embed`` (92 COCO outputs), ``detr.bbox_embed``); the
interaction branch ``interaction_transformer.encoder`` (``--share_enc``: the SAME module as DETR's
encoder, saved twice), ``interaction_transformer.decoder`` (layers + norm), the interaction queries
``query_embed`` (16 x D), ``H_Pointer_embed`` / ``O_Pointer_embed`` (3-layer MLPs D -> D -> D) and
``action_embed`` (Linear(D, C_verb + 1)). The pointer temperature is not a parameter: it lives in the
checkpoint's ``args.temperature`` (0.05 V-COCO, 0.2 HICO-DET) and must equal ``model.hotr.tau``
(:func:`check_hotr_args`).

DETR-R50 COCO -> HOTR initialisation (``hqm convert detr-to-hoi --detector hotr --init``):

* ``published`` (default): the published runs (``--frozen_weights`` DETR, ``--pretrained_dec``):
  DETR fills ``detr.*`` (classifier rows re-indexed to the dataset's objects) AND the interaction
  decoder starts as a copy of DETR's decoder; queries, pointers and actions start random.
* ``fresh``: the interaction decoder starts random too (DETR's init, as the HOTR constructor without
  ``--pretrained_dec``).

HOTR trains with ``detr.*`` frozen (``train.trainable`` in the configs).
"""

from __future__ import annotations

import os
from typing import Any

from hqm.zoo.rename import ConversionSpec, Rule
from hqm.zoo.safe_load import CheckpointError
from hqm.zoo.tables import CheckpointLayouts

INTERACTION_HEADS = (
    Rule(r"query_embed\.weight", ("query_embed.weight",)),
    Rule(r"(H_Pointer_embed|O_Pointer_embed)\.(layers\.\d\.(?:weight|bias))", (r"\1.\2",)),
    Rule(r"action_embed\.(weight|bias)", (r"action_embed.\1",)),
)
INTERACTION_DECODER = Rule(
    r"interaction_transformer\.decoder\.(layers\..+|norm\.(?:weight|bias))",
    (r"interaction_transformer.decoder.\1",),
)
DETR_TRUNK = (
    Rule(r"backbone\.0\.body\.(.+)", (r"detr.backbone.0.body.\1",)),
    Rule(r"input_proj\.(weight|bias)", (r"detr.input_proj.\1",)),
    Rule(r"query_embed\.weight", ("detr.query_embed.weight",)),
    Rule(r"transformer\.encoder\.(layers\..+)", (r"detr.transformer.encoder.\1",)),
    Rule(r"class_embed\.(weight|bias)", (r"detr.class_embed.\1",), op="class_rows"),
    Rule(r"bbox_embed\.(layers\.\d+\.(?:weight|bias))", (r"detr.bbox_embed.\1",)),
)
DETR_DECODER = r"transformer\.decoder\.(layers\..+|norm\.(?:weight|bias))"
FRESH = ("query_embed", "H_Pointer_embed", "O_Pointer_embed", "action_embed", "miners.")

DETR_TO_HOTR = ConversionSpec(
    source="detr",
    detector="hotr",
    rules=(Rule(DETR_DECODER, (r"detr.transformer.decoder.\1", r"interaction_transformer.decoder.\1")),)
    + DETR_TRUNK,
    fresh=FRESH,
    description="DETR COCO detector -> HOTR as published: DETR's decoder also in the interaction decoder",
)

DETR_TO_HOTR_FRESH = ConversionSpec(
    source="detr",
    detector="hotr",
    rules=(Rule(DETR_DECODER, (r"detr.transformer.decoder.\1",)),) + DETR_TRUNK,
    fresh=FRESH + ("interaction_transformer.decoder",),
    description="DETR COCO detector -> HOTR: interaction decoder random",
)

SHARED_ENCODER = Rule(
    r"interaction_transformer\.encoder\..+",
    (),
    note="the same tensors as detr.transformer.encoder (HOTR --share_enc)",
)

# ``detr.*`` of the published file is a complete DETR state dict: the DETR rules under that prefix
HOTR_TO_HOTR = ConversionSpec(
    source="hotr",
    detector="hotr",
    rules=tuple(
        Rule("detr\\." + r.pattern, r.targets, r.op, r.note)
        for r in (Rule(DETR_DECODER, (r"detr.transformer.decoder.\1",)),) + DETR_TRUNK
    )
    + (SHARED_ENCODER, INTERACTION_DECODER)
    + INTERACTION_HEADS,
    fresh=("miners.",),
    exact=True,
    description="kakaobrain/HOTR released weights (V-COCO / HICO-DET, 16 interaction queries)",
)

OURS_HOTR = ConversionSpec(
    source="ours", detector="hotr", rules=(Rule(r"(.+)", (r"\1",)),), description="hqm HOTR checkpoints"
)


def detect_hotr_layout(state: dict) -> str:
    """``detr`` (a COCO DETR), ``hotr`` (published: the shared encoder saved under
    ``interaction_transformer.encoder``) or ``ours`` (hqm HOTR weights); other detectors' weights are
    refused."""
    keys = set(state)
    if "class_embed.weight" in keys and "bbox_embed.layers.0.weight" in keys:
        return "detr"
    if "detr.class_embed.weight" in keys:  # HOTR's names; a converted DETR file has no pointers yet
        published = any(k.startswith("interaction_transformer.encoder.") for k in keys)
        return "hotr" if published else "ours"
    if "obj_class_embed.weight" in keys or "transformer.decoder.obj_class_embed.weight" in keys:
        raise CheckpointError(
            "QPIC / CDN / HQM weights (obj_class_embed) are not HOTR weights: set model.detector"
        )
    sample = ", ".join(sorted(state)[:5])
    raise CheckpointError(f"unrecognised checkpoint layout (keys like: {sample}); expected DETR, HOTR or hqm")


def check_hotr_args(rest: dict[str, Any], model, path: str | os.PathLike) -> None:
    """The published file's ``args.temperature`` must equal the model's ``tau`` (the pointer logits
    are similarities / tau; another tau changes every score). Raises :class:`CheckpointError` in one
    line naming both values; files without ``args`` (ours, converted) pass."""
    args = rest.get("args")
    temperature = getattr(args, "temperature", None) if args is not None else None
    if temperature is None or not hasattr(model, "tau"):
        return
    if abs(float(temperature) - float(model.tau)) > 1e-9:
        raise CheckpointError(
            f"{path} was trained with pointer temperature {float(temperature)} (args.temperature) but "
            f"model.hotr.tau={model.tau}: set model.hotr.tau={float(temperature)}"
        )


HOTR_LAYOUTS = CheckpointLayouts(
    detector="hotr",
    specs={"detr": DETR_TO_HOTR, "hotr": HOTR_TO_HOTR, "ours": OURS_HOTR},
    detect_layout=detect_hotr_layout,
    detr_inits={"published": DETR_TO_HOTR, "fresh": DETR_TO_HOTR_FRESH},
    check_args=check_hotr_args,
)

__all__ = ["DETR_TO_HOTR", "DETR_TO_HOTR_FRESH", "HOTR_LAYOUTS", "HOTR_TO_HOTR", "check_hotr_args"]
