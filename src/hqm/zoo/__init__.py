"""Checkpoint loading, conversion and export.

* ``load_weights``: weights for evaluation / inference: an ``hqm train`` checkpoint, an exported
  directory (``hqm export``) or released QPIC / HQM weights (renamed by table).
* ``load_pretrained``: ``model.pretrained=PATH`` for training: a raw DETR COCO checkpoint (converted
  on the fly), an ``hqm convert`` output, or QPIC / HQM / hqm weights to fine-tune.
* ``convert_state_dict`` / ``convert_detr_file``: the table-driven conversion (``hqm.zoo.tables``).
* ``export_checkpoint``: ``model.safetensors`` + ``config.yaml``.
* ``safe_torch_load``: ``torch.load(weights_only=True)`` with an explicit allow-list.
"""

from __future__ import annotations

import logging
import os

import torch

from hqm.zoo.convert import (
    convert_detr_file,
    convert_state_dict,
    load_into_model,
    load_pretrained,
    log_report,
)
from hqm.zoo.export import export_checkpoint, is_exported, read_exported
from hqm.zoo.rename import ConversionSpec, LoadReport, Rule, load_partial
from hqm.zoo.safe_load import UnsafeCheckpointError, read_state_dict, safe_torch_load
from hqm.zoo.tables import TABLES, detect_format

LOG = logging.getLogger("hqm.zoo")


def load_weights(
    model: torch.nn.Module,
    path: str | os.PathLike,
    object_names: list[str] | None = None,
    detector: str = "qpic",
) -> LoadReport:
    """Load trained weights for evaluation / inference.

    ``hqm train`` checkpoints and exported directories load strictly (mining parameters may be
    absent or extra: they never influence inference). QPIC / HQM released weights go through their
    rename table; anything the model keeps at random initialisation is logged as a warning.
    """
    state, _ = read_state_dict(path)
    source = detect_format(state)
    if source in ("ours", "qpic"):
        own_miners = any(k.startswith("miners.") for k in model.state_dict())
        if not own_miners:
            state = {k: v for k, v in state.items() if not k.startswith("miners.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("miners.")]
        if missing or unexpected:
            LOG.warning(
                "loaded %s with %d missing and %d unexpected keys: %s",
                path,
                len(missing),
                len(unexpected),
                ", ".join((missing + unexpected)[:10]),
            )
        return LoadReport(loaded=[k for k in state if k not in unexpected], fresh=missing, ignored=unexpected)
    report = load_into_model(model, path, detector, object_names, source)
    log_report(report, path)
    heads_fresh = [k for k in report.fresh if not k.startswith("miners.")]
    if heads_fresh:
        LOG.warning(
            "%s: %d parameters of the model were not in the checkpoint (random): %s",
            path,
            len(heads_fresh),
            ", ".join(heads_fresh[:10]),
        )
    return report


__all__ = [
    "TABLES",
    "ConversionSpec",
    "LoadReport",
    "Rule",
    "UnsafeCheckpointError",
    "convert_detr_file",
    "convert_state_dict",
    "detect_format",
    "export_checkpoint",
    "is_exported",
    "load_into_model",
    "load_partial",
    "load_pretrained",
    "load_weights",
    "log_report",
    "read_exported",
    "read_state_dict",
    "safe_torch_load",
]
