"""Checkpoint loading, conversion and export.

* ``load_weights``: weights for evaluation / inference, all or nothing: an ``hqm train`` checkpoint,
  an exported directory (``hqm export``) or released QPIC / HQM / CDN weights (renamed by the
  configured detector's tables, ``hqm.zoo.layouts``); weights
  that do not fit the model raise ``WeightsMismatchError`` listing the keys.
* ``resolve_model_config``: the config that builds the model for a weights file (its own).
* ``load_pretrained``: ``model.pretrained=PATH`` for training: a raw DETR COCO checkpoint (converted
  on the fly), an ``hqm convert`` output, or QPIC / HQM / hqm weights to fine-tune.
* ``convert_state_dict`` / ``convert_detr_file``: the table-driven conversion (``hqm.zoo.tables``).
* ``export_checkpoint``: ``model.safetensors`` + ``config.yaml``.
* ``safe_torch_load``: ``torch.load(weights_only=True)`` with an explicit allow-list.
"""

from __future__ import annotations

from hqm.zoo.checkpoint_config import ResolvedConfig, resolve_model_config
from hqm.zoo.convert import (
    convert_detr_file,
    convert_state_dict,
    load_into_model,
    load_pretrained,
    log_report,
)
from hqm.zoo.export import export_checkpoint, is_exported, read_exported
from hqm.zoo.layouts import LAYOUTS, TABLES, detect_format, get_layouts
from hqm.zoo.rename import ConversionSpec, LoadReport, Rule, load_partial
from hqm.zoo.safe_load import UnsafeCheckpointError, read_state_dict, safe_torch_load
from hqm.zoo.weights import WeightsMismatchError, load_weights, weight_mismatches

__all__ = [
    "LAYOUTS",
    "TABLES",
    "ConversionSpec",
    "LoadReport",
    "ResolvedConfig",
    "Rule",
    "UnsafeCheckpointError",
    "WeightsMismatchError",
    "convert_detr_file",
    "convert_state_dict",
    "detect_format",
    "export_checkpoint",
    "get_layouts",
    "is_exported",
    "load_into_model",
    "load_partial",
    "load_pretrained",
    "load_weights",
    "log_report",
    "read_exported",
    "read_state_dict",
    "resolve_model_config",
    "safe_torch_load",
    "weight_mismatches",
]
