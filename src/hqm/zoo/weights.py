"""Trained weights for evaluation and inference: all or nothing.

``load_weights`` puts an ``hqm train`` checkpoint, an ``hqm export`` folder or released QPIC / HQM /
CDN weights (layout detected and renamed with the configured detector's tables, ``hqm.zoo.layouts``)
into a model only when they fit it exactly: every model weight present in the file with the same
shape and no file weight left over. Mining
parameters (``miners.*``) are the one exception: they never influence inference, so a file may carry
them or not. Otherwise :class:`WeightsMismatchError` lists every missing, unexpected and mis-shaped
key before a single weight is copied: a model is never evaluated half random.

Training initialisations (``model.pretrained``: a DETR detector, converted weights) are partial by
design and go through ``hqm.zoo.convert.load_pretrained`` instead.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from hqm.errors import UsageError
from hqm.zoo.convert import convert_state_dict
from hqm.zoo.layouts import check_args, detect_format, get_spec
from hqm.zoo.rename import LoadReport
from hqm.zoo.safe_load import read_state_dict

_SHOWN = 6  # keys listed per kind in the error message


class WeightsMismatchError(UsageError, ValueError):
    """Weights do not fit the model (the message lists the keys); nothing was loaded."""


def _listing(kind: str, keys: list[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {kind} ({', '.join(keys[:_SHOWN])}{more})"


def weight_mismatches(model: nn.Module, state: dict[str, Tensor]) -> dict[str, list[str]]:
    """``{"missing", "unexpected", "misshaped"}``: model keys absent from ``state``, ``state`` keys not
    in the model and keys whose shapes differ ("key: file shape vs model shape"). ``miners.*`` keys
    and BatchNorm ``num_batches_tracked`` counters (unused at inference) are never counted missing."""
    own = model.state_dict()
    return {
        "missing": [
            k
            for k in own
            if k not in state and not k.startswith("miners.") and not k.endswith("num_batches_tracked")
        ],
        "unexpected": [k for k in state if k not in own],
        "misshaped": [
            f"{k}: {tuple(v.shape)} in the file vs {tuple(own[k].shape)} in the model"
            for k, v in state.items()
            if k in own and v.shape != own[k].shape
        ],
    }


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    object_names: list[str] | None = None,
    detector: str = "qpic",
    checkpoint: tuple[dict[str, Tensor], dict[str, Any]] | None = None,
    overridden: list[str] | tuple[str, ...] = (),
) -> LoadReport:
    """Load the weights file ``path`` (or ``checkpoint``: its already read ``read_state_dict(path)``,
    state dict and rest) into ``model``, all or nothing. The detector's check of the file's training
    arguments runs either way (HOTR: ``args.temperature`` against ``model.hotr.tau``).

    ``object_names`` / ``detector`` drive the rename tables for foreign layouts. Returns the report
    (``loaded``; ``ignored``: mining parameters the model does not have). Raises
    :class:`WeightsMismatchError` (a ``ValueError``) naming the file and listing the keys when the
    weights do not fit; the model is then unchanged. ``overridden``: "key old -> new" for the
    ``model.*`` overrides applied to the weights' own config (``ResolvedConfig.overridden``); a
    mismatch then names them first, as the likely cause.
    """
    state, rest = checkpoint if checkpoint is not None else read_state_dict(path)
    check_args(rest, model, path, detector)
    source = detect_format(state, detector, path)
    conversion = LoadReport()
    exact = source == "ours" or get_spec(source, detector).exact
    if source != "ours":
        hidden = getattr(model, "hidden_dim", None)
        state, conversion = convert_state_dict(state, detector, source, object_names, hidden)
    own = model.state_dict()
    extra_miners = [k for k in state if k.startswith("miners.") and k not in own]
    state = {k: v for k, v in state.items() if k not in extra_miners}
    problems = weight_mismatches(model, state)
    notes = [e for e in conversion.reshaped + conversion.ignored if not e.startswith("miners.")]
    if exact:  # the published layout's own row selection / aliases: part of reading it
        notes = [e for e in conversion.ignored if not e.startswith("miners.") and ": no rule in" in e]
    if any(problems.values()) or notes:
        parts = [
            _listing(kind, keys)
            for kind, keys in (
                ("missing from the file", problems["missing"]),
                ("not in the model", problems["unexpected"]),
                ("with another shape", problems["misshaped"]),
                (f"changed when converting the {source} layout", notes),
            )
            if keys
        ]
        cause = [o for o in overridden if o.startswith("model.")]
        first = f"drop the override {', '.join(cause)} (the checkpoint's value -> yours): " if cause else ""
        raise WeightsMismatchError(
            first
            + f"{path} does not fit the model (nothing was loaded: the rest would stay random): "
            + "; ".join(parts)
            + ". Build the model from the checkpoint's own config (no model.* overrides), or name the "
            "config the weights were trained with"
        )
    with torch.no_grad():
        model.load_state_dict(state, strict=False)  # strict but for the mining parameters
    return LoadReport(
        loaded=list(state),
        reshaped=list(conversion.reshaped),
        ignored=conversion.ignored + [f"{k}: mining parameters (unused)" for k in extra_miners],
    )
