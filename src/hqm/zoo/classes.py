"""COCO classifier rows -> a dataset's object classes (the ``class_rows`` conversion op).

DETR's COCO classifier ``class_embed`` has 92 outputs: index = COCO category id (1..90, with unused
ids in the gaps and at 0) and 91 = "no object". A dataset's ``obj_class_embed`` has one row per
object class followed by its own no-object row. Each object class takes the row of its COCO
counterpart, found by name; classes without a counterpart get a freshly initialised row:

* HICO-DET: the 80 COCO classes in category-id order, then row 91 (QPIC's ``convert_parameters.py``).
* V-COCO: the same 80, then one fresh row for the extra "none" object class, then row 91 (82 rows).
* HOI-A (11 objects), by :data:`ALIASES`: person -> person, cellphone -> cell phone, bike -> bicycle,
  motorbike -> motorcycle, horse -> horse, ball -> sports ball, computer -> laptop,
  document -> book; cigarette, drink and food have no single COCO class and start fresh.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from hqm.config import ConfigError
from hqm.zoo.rename import init_linear_rows, register_op
from hqm.zoo.safe_load import CheckpointError

COCO_NUM_OUTPUTS = 92
COCO_NO_OBJECT = 91

#: dataset object name -> COCO name, where the spelling or the concept differs (HOI-A)
ALIASES = {
    "cellphone": "cell_phone",
    "bike": "bicycle",
    "motorbike": "motorcycle",
    "ball": "sports_ball",
    "computer": "laptop",
    "document": "book",
}


def _norm(name: str) -> str:
    return name.lower().replace(" ", "_").replace("-", "_")


def coco_category_ids() -> dict[str, int]:
    """COCO object name (HICO-DET spelling, e.g. ``sports_ball``) -> category id."""
    from hqm.data.vocab import coco_objects

    names, ids = coco_objects()
    return {_norm(n): int(i) for n, i in zip(names, ids)}


def coco_rows(object_names: list[str]) -> list[int | None]:
    """The COCO classifier row of every object class (None: no counterpart, fresh row), plus the
    no-object row at the end."""
    ids = coco_category_ids()
    rows: list[int | None] = []
    for name in object_names:
        key = _norm(name)
        rows.append(ids.get(ALIASES.get(key, key)))
    return rows + [COCO_NO_OBJECT]


def dataset_object_names(dataset: str) -> list[str]:
    """The packaged object vocabulary of ``hico_det`` / ``vcoco`` / ``hoia`` (for ``hqm convert``)."""
    from hqm.data import vocab

    coco, _ = vocab.coco_objects()
    if dataset == "hico_det":
        return coco
    if dataset == "vcoco":
        from hqm.data.vcoco import NO_OBJECT_NAME

        return coco + [NO_OBJECT_NAME]
    if dataset == "hoia":
        return vocab.hoia_vocabulary()[0]
    raise ConfigError(f"unknown dataset {dataset!r} for class-row conversion; use hico_det, vcoco or hoia")


@register_op("class_rows")
def select_class_rows(t: Tensor, ctx: dict[str, Any]) -> tuple[Tensor, str, str]:
    """(92, D) weight or (92,) bias -> (C_obj + 1, ...) rows per ``ctx["object_names"]``."""
    names = ctx.get("object_names")
    if names is None:
        raise ValueError("class_rows conversion needs the dataset's object names (context 'object_names')")
    if t.shape[0] != COCO_NUM_OUTPUTS:
        raise CheckpointError(
            f"expected a COCO classifier with {COCO_NUM_OUTPUTS} outputs, got {tuple(t.shape)}: "
            "these are not DETR COCO weights"
        )
    rows = coco_rows(list(names))
    bias = t.dim() == 1
    # the rows' shape is the file's (a model of another width then refuses or reports the tensor)
    fan_in = int(t.shape[1]) if not bias else int(ctx.get("hidden_dim") or 256)
    out = torch.empty((len(rows),) + tuple(t.shape[1:]), dtype=t.dtype)
    missing = [i for i, r in enumerate(rows) if r is None]
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = t[r]
    if missing:
        out[missing] = init_linear_rows(len(missing), fan_in, t, bias)
    note = f"COCO rows -> {len(rows)} rows ({len(rows) - 1} classes + no-object 91)"
    fresh = ""
    if missing:
        fresh = "fresh rows " + ", ".join(f"{i} ({names[i]})" for i in missing)
    return out, note, fresh
