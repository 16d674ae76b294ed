"""Converting and loading foreign checkpoints: DETR initialisation, QPIC / HQM released weights.

Two steps, each reported (:class:`hqm.zoo.rename.LoadReport`):

1. ``convert_state_dict``: rename with the table of (detected layout, detector), re-index the COCO
   classifier rows for the dataset's object classes;
2. ``load_partial``: load what fits the model by name and shape (DETR's 100 queries -> the first
   ``num_queries`` rows), leave the rest at its random initialisation, list what was skipped.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch
from torch import Tensor, nn

from hqm.errors import UsageError
from hqm.progress import counted
from hqm.zoo import classes as _classes  # noqa: F401  (registers the "class_rows" op)
from hqm.zoo.layouts import check_args, detect_format, get_spec, read_as_weights
from hqm.zoo.rename import LoadReport, apply_spec, entry_key, load_partial
from hqm.zoo.safe_load import CheckpointError, read_state_dict

LOG = logging.getLogger("hqm.zoo")


def convert_state_dict(
    state: dict[str, Tensor],
    detector: str = "qpic",
    source: str | None = None,
    object_names: list[str] | None = None,
    hidden_dim: int | None = None,
    init: str | None = None,
) -> tuple[dict[str, Tensor], LoadReport]:
    """``state`` (any layout ``detector`` loads; detected when ``source`` is None) -> its names.

    ``object_names``: the dataset's object classes (needed for a DETR classifier, see
    ``hqm.zoo.classes``); ``hidden_dim``: the fan-in of fresh classifier bias rows when the file has
    no ``query_embed.weight`` to read its own width from; ``init``: which DETR initialisation of the
    detector (None: its default, see ``hqm.zoo.cdn``). Returns the converted state dict and what
    happened to every source key.
    """
    source = source or detect_format(state, detector)
    spec = get_spec(source, detector, init)
    if "query_embed.weight" in state:  # the file's width: fan-in of freshly initialised class rows
        hidden_dim = int(state["query_embed.weight"].shape[1])
    out, report = apply_spec(state, spec, {"object_names": object_names, "hidden_dim": hidden_dim})
    if spec.fresh:
        report.fresh.extend(f"{p}*: not in a {source} checkpoint (random init)" for p in spec.fresh)
    return out, report


def _merge(conversion: LoadReport, loading: LoadReport) -> LoadReport:
    """One report for convert + load: conversion's reshaped/ignored/fresh-rows notes win over the
    loader's plain "loaded" for the same key; the loader's fresh list replaces the table's guess."""
    reshaped = {entry_key(e) for e in conversion.reshaped}
    renamed = {entry_key(e): e for e in conversion.loaded}
    merged = LoadReport(
        loaded=[renamed.get(k, k) for k in loading.loaded if k not in reshaped],
        reshaped=[e for e in conversion.reshaped if entry_key(e) in loading.loaded] + loading.reshaped,
        fresh=loading.fresh + [e for e in conversion.fresh if not entry_key(e).endswith("*")],
        ignored=conversion.ignored + loading.ignored,
        misfit=list(loading.misfit),
        unknown=list(loading.unknown),
        partial=list(loading.partial),
    )
    return merged


def load_into_model(
    model: nn.Module,
    path: str | os.PathLike,
    detector: str = "qpic",
    object_names: list[str] | None = None,
    source: str | None = None,
) -> LoadReport:
    """Load any supported checkpoint file (DETR, QPIC, HQM, ours, converted, exported directory)
    into ``model`` as far as names and shapes allow; returns the report."""
    state, rest = read_state_dict(path)
    check_args(rest, model, path, detector)
    hidden = getattr(model, "hidden_dim", None)
    source = source or detect_format(state, detector, path)
    converted, conv_report = convert_state_dict(state, detector, source, object_names, hidden)
    report = _merge(conv_report, load_partial(model, converted))
    trained_as = (rest.get("config") or {}).get("model", {}).get("detector")
    report.whole = "converted" not in rest and trained_as == detector  # (any layout it is read as)
    return report


def log_report(report: LoadReport, path: str | os.PathLike, level: int = logging.INFO) -> None:
    LOG.log(level, "loaded %s: %s", path, report.counts())
    for name in ("reshaped", "fresh", "ignored"):
        for entry in getattr(report, name):
            LOG.log(level, "  %s: %s", name, entry)


#: classifier heads whose rows follow the dataset's vocabulary (objects, verbs, HOTR's actions):
#: weights trained on another data set do not fit them, and fine-tuning starts them fresh
VOCABULARY_HEAD = re.compile(r"(^|\.)(\w*class_embed|action_embed)(\.\d+)?\.(weight|bias)$")
BACKBONE_BLOCK = re.compile(r"^(backbone\.\d+\.body\.layer\d+)\.\d+\.")
#: the config key of each transformer layer stack (the longest suffix first)
LAYER_KEYS = {
    "interaction_transformer.decoder.layers": "model.hotr.interaction_layers",
    "interaction_decoder.layers": "model.cdn.interaction_layers",
    "encoder.layers": "model.enc_layers",
    "decoder.layers": "model.dec_layers",
}
LAYER_STACK = re.compile(r"^((?!backbone\.).*(?:encoder|decoder)\.layers)\.(\d+)\.")  # transformer layers


def _stacks(keys, pattern: re.Pattern) -> set[str]:
    return {m.group(1) for k in keys if (m := pattern.match(entry_key(k)))}


def _entry(entries: list[str], key: str) -> str:
    """The report entry of bare ``key`` (it carries the shapes or the reason), else the key."""
    return next((e for e in entries if entry_key(e) == key), key)


def pretrained_problem(report: LoadReport, model: nn.Module) -> str | None:
    """Why a ``model.pretrained`` load leaves part of the model random behind the user's back, or
    None. Refused, as QPIC's own ``load_state_dict`` refuses them: tensors of other shapes
    (``model.backbone`` / ``model.backbone_width``; ``model.backbone_out`` for ``input_proj``;
    ``model.hidden_dim``, ``model.dim_feedforward``, ...), a backbone with fewer or more blocks per
    stage than the model's (ResNet-18 vs -34 weights), a transformer layer stack with fewer layers
    than the model's, an encoder or decoder stack with no layers in a file that has other transformer
    layers, and fewer query rows than ``model.num_queries``. Not refused: classifier rows
    of another vocabulary (:data:`VOCABULARY_HEAD`, fine-tuning on another data set), modules and
    backbone stages the model does not have, more transformer layers than the model's (the first
    ones are used, as CDN-S starts from DETR's first 3 of 6 decoder layers) and more query rows
    (DETR's 100 queries cut to ``model.num_queries``); those are listed as ignored / reshaped. Nor are
    a CDN / HOTR interaction decoder absent from DETR or QPIC weights or a conversion (refused when
    the file is a checkpoint trained as this detector, ``LoadReport.whole``) and a file without
    transformer layers (a backbone with heads): they start fresh, listed as such."""
    misfit = [k for k in report.misfit if k.startswith("backbone.")]
    if misfit:
        return (
            f"{counted(len(misfit), 'backbone tensor')} of other shapes than this model's (e.g. "
            f"{_entry(report.ignored, misfit[0])}), so its backbone would stay random; build the "
            "backbone the weights were trained with (model.backbone, model.backbone_width: 64 for "
            "DETR / QPIC / HQM)"
        )
    own_stages = _stacks(model.state_dict(), BACKBONE_BLOCK)
    deeper = [k for k in report.unknown if (m := BACKBONE_BLOCK.match(k)) and m.group(1) in own_stages]
    loaded_backbone = any(entry_key(e).startswith("backbone.") for e in report.loaded)
    shallower = [k for k in report.fresh if k.startswith("backbone.")] if loaded_backbone else []
    if deeper or shallower:
        example = f"{deeper[0]} is not in the model" if deeper else f"the model's {shallower[0]} is not in it"
        return (
            f"its backbone has {'more' if deeper else 'fewer'} blocks than this model's ({example}; "
            f"{counted(len(deeper or shallower), 'such tensor')}), so the backbone would be initialised "
            "from another network; build the backbone the weights were trained with (model.backbone: "
            "resnet18 / 34 / 50 / 101)"
        )
    other = [k for k in report.misfit if not VOCABULARY_HEAD.search(k)]
    if other:
        if all(k.startswith("input_proj.") for k in other):  # the backbone's output: C5 weights, C4 model
            cause = "the backbone output the weights were trained with (model.backbone_out: layer4 = C5)"
        else:
            cause = "the model the weights were trained with (model.hidden_dim, model.dim_feedforward, ...)"
        return (
            f"{counted(len(other), 'tensor')} outside the backbone of other shapes than this model's (e.g. "
            f"{_entry(report.ignored, other[0])}), so {'it' if len(other) == 1 else 'they'} would stay "
            f"random; build {cause}"
        )
    loaded_stacks = _stacks(report.loaded, LAYER_STACK)
    missing = [k for k in report.fresh if (m := LAYER_STACK.match(k)) and m.group(1) in loaded_stacks]
    if missing:
        stack = LAYER_STACK.match(missing[0]).group(1)
        matches = (LAYER_STACK.match(entry_key(e)) for e in report.loaded)
        layers = {int(m.group(2)) for m in matches if m and m.group(1) == stack}
        key = next((v for k, v in LAYER_KEYS.items() if stack.endswith(k)), "the layer count")
        return (
            f"it has {counted(len(layers), 'layer')} in {stack}, fewer than this model (the model's "
            f"{missing[0]} is not in it), so those layers would stay random; set {key}={len(layers)}"
        )
    # a whole DETR stack absent while the other loads: a truncated or filtered file (every supported
    # layout has both; the interaction stacks of CDN / HOTR may start fresh, see the conversion specs,
    # unless the file is a checkpoint trained as this very detector)
    own_stacks = _stacks(model.state_dict(), LAYER_STACK)
    empty = sorted(s for s in own_stacks - loaded_stacks if report.whole or "interaction" not in s)
    if loaded_stacks and empty:
        key = next(v for k, v in LAYER_KEYS.items() if empty[0].endswith(k))
        return (
            f"it has no layers for {empty[0]} but has {', '.join(sorted(loaded_stacks))}, so "
            f"{empty[0]} would stay random ("
            + (
                "the file is a checkpoint of this detector, which has that stack"
                if "interaction" in empty[0]
                else "DETR, QPIC, HQM, CDN and HOTR weights have encoder and decoder layers"
            )
            + ": is the file truncated or filtered?); give the complete weights file"
            + (f", or set {key}=0 if they were trained without it" if key == "model.enc_layers" else "")
        )
    if report.partial:
        return (
            f"it has fewer query rows than model.num_queries ({_entry(report.reshaped, report.partial[0])}), "
            "so the other queries would stay random; set model.num_queries to at most the file's rows"
        )
    return None


def load_pretrained(model: nn.Module, path: str, cfg, meta) -> LoadReport:
    """``model.pretrained=PATH``: a raw DETR COCO checkpoint (converted on the fly for ``meta``'s
    object classes), a file written by ``hqm convert``, or QPIC / HQM / hqm weights to fine-tune.

    Raises ``CheckpointError`` naming the file when the weights would leave part of the model at
    random while the user believes it initialised (:func:`pretrained_problem`). Classifier rows of
    another vocabulary start fresh with one WARNING line."""
    report = load_into_model(model, path, cfg.model.detector, list(meta.object_names))
    problem = pretrained_problem(report, model)
    if problem:
        raise CheckpointError(f"model.pretrained={path}: {problem}")
    heads = [k for k in report.misfit if VOCABULARY_HEAD.search(k)]
    if heads:
        LOG.warning(
            "model.pretrained=%s: %d classifier tensors of another vocabulary start fresh (e.g. %s)",
            path,
            len(heads),
            _entry(report.ignored, heads[0]),
        )
    log_report(report, path)
    return report


class NotDetrWeightsError(UsageError, CheckpointError):
    """``hqm convert detr-to-hoi`` was given HOI weights (a usage error: exit code 2); the message
    says what the file is and how to use it (:func:`not_detr_weights`)."""


#: how a message names each layout the checkpoint tables detect (see their ``detect_layout``)
LAYOUT_NAMES = {
    "ours": "hqm",
    "qpic": "QPIC",
    "hqm": "HQM's released",
    "cdn": "CDN",
    "hotr": "HOTR's released",
}


def not_detr_weights(path: str | os.PathLike, state: dict, rest: dict) -> str | None:
    """What ``hqm convert detr-to-hoi`` says of a file that already holds HOI weights (a run's
    checkpoint, released QPIC / HQM / CDN / HOTR weights, an earlier conversion): what it is and how
    to use it as it is; None for anything else (DETR weights; an unknown layout is named by
    :func:`detect_format`). Their detector is the one the file's config names, else the first whose
    tables read it (:func:`read_as_weights`)."""
    converted, config = rest.get("converted"), rest.get("config")
    if isinstance(converted, dict):
        det = converted.get("detector", "qpic")
        return (
            f"{path} is already an initialisation written by hqm convert (DETR -> {det}), not DETR "
            f"weights: use it as it is (model.pretrained={path}{_with_detector(det)})"
        )
    detector = (config.get("model") or {}).get("detector") if isinstance(config, dict) else None
    if detector is not None:
        return (
            f"{path} is already a trained {detector} checkpoint (hqm, with its config), not DETR weights: "
            f"use it directly (hqm eval {path}, or model.pretrained={path}{_with_detector(detector)} to "
            "start a run from it)"
        )
    found = read_as_weights(state)
    if found is None:
        return None
    det, layout = found
    return (
        f"{path} already holds trained {det} weights ({LAYOUT_NAMES.get(layout, layout)} layout, no hqm "
        f"config), not DETR weights: use them directly (hqm eval CONFIG weights={path}, or "
        f"model.pretrained={path}{_with_detector(det)} to start a run from them)"
    )


def _with_detector(detector: str) -> str:
    return "" if detector == "qpic" else f" with model.detector={detector}"


def convert_detr_file(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    detector: str = "qpic",
    dataset: str = "hico_det",
    init: str | None = None,
    overwrite: bool = False,
) -> LoadReport:
    """``hqm convert detr-to-hoi``: write an initialisation file (plain data, ``weights_only``-safe)
    with the converted state dict under ``model`` and the conversion report. ``init``: the
    detector's DETR initialisation (CDN: ``paper`` (default) or ``released``, see ``hqm.zoo.cdn``).
    A file of HOI weights (any detector's, or an earlier conversion) raises ``NotDetrWeightsError``
    saying how to use it as it is. An existing ``out_path`` is refused (``UsageError``) unless
    ``overwrite``; the input never is one; the file is written atomically (``hqm.output``)."""
    import io

    from hqm import __version__
    from hqm.output import check_new_output, write_atomic
    from hqm.zoo.classes import dataset_object_names

    spec = get_spec("detr", detector, init)  # an unknown detector or init fails before reading
    out_path = check_new_output(out_path, overwrite, (in_path,))
    state, rest = read_state_dict(in_path)
    trained = not_detr_weights(in_path, state, rest)
    if trained:
        raise NotDetrWeightsError(trained)
    source = detect_format(state, detector, in_path)
    if source != "detr":
        raise CheckpointError(
            f"{in_path}: expected a DETR checkpoint (class_embed / bbox_embed), found "
            f"{'hqm' if source == 'ours' else source} weights"
        )
    names = dataset_object_names(dataset)
    converted, report = convert_state_dict(state, detector, "detr", names, init=init)
    payload: dict[str, Any] = {
        "model": converted,
        "converted": {
            "source": "detr",
            "detector": detector,
            "init": spec.description,
            "dataset": dataset,
            "object_names": names,
            "from": str(in_path),
        },
        "report": report.to_dict(),
        "version": __version__,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(out_path, buffer.getvalue(), "write the converted weights to")
    return report
