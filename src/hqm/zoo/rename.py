"""Table-driven state-dict conversion and a shape-aware partial loader, both with a report.

A conversion from one checkpoint layout to one of our detectors is a :class:`ConversionSpec`: an
ordered list of :class:`Rule` ``(regex over the source key -> target key templates, op)``. The first
rule whose pattern matches the whole source key decides:

* ``targets == ()``: the key is dropped on purpose (reported as ignored, with the rule's note);
* several targets: the tensor is copied to each (DETR's ``bbox_embed`` -> ``sub_`` and ``obj_bbox_embed``);
* ``op`` names a tensor transform from :data:`OPS` (``"copy"``; ``"class_rows"`` re-indexes the
  classifier rows of a COCO detector to the dataset's object classes, see ``hqm.zoo.classes``).

Source keys no rule matches are reported as ignored; never silently dropped. Adding a detector
(CDN, HOTR) or a released layout is one more table in ``hqm.zoo.tables``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Rule:
    """``pattern`` (regex, full match on the source key) -> ``targets`` (``re`` templates, ``\\1``...)."""

    pattern: str
    targets: tuple[str, ...]
    op: str = "copy"
    note: str = ""


@dataclass(frozen=True)
class ConversionSpec:
    """How a checkpoint layout (``source``) maps onto one of our detectors (``detector``).

    ``fresh`` lists target-key prefixes this conversion leaves to their random initialisation
    (reported when converting without a model, e.g. ``verb_class_embed``).
    """

    source: str
    detector: str
    rules: tuple[Rule, ...]
    fresh: tuple[str, ...] = ()
    description: str = ""
    #: True when the table is the published model's own layout: its row selections (HOTR's COCO
    #: classifier inside the checkpoint) and dropped aliases (HOTR's encoder saved twice) are part of
    #: reading the file, and ``load_weights`` (all or nothing) accepts them
    exact: bool = False


@dataclass
class LoadReport:
    """What happened to every key: ``loaded`` by name, ``reshaped`` (rows selected / truncated),
    ``fresh`` (left at the model's random initialisation) and ``ignored`` (source keys not used).
    Entries start with the key (the target key, ``"target <- source"`` for renames), then an optional
    ``": reason"``. Two lists name bare keys among ``ignored``, for callers that must refuse such a
    load (``model.pretrained``): ``misfit``, model keys whose tensor had another shape than the
    model's, and ``unknown``, keys the model does not have; ``partial`` names the ``reshaped`` keys
    whose file tensor had fewer rows than the model's (the rest stayed random). They are not part of
    ``to_dict`` / ``summary``, which show those keys under ``ignored`` / ``reshaped``; nor is
    ``whole``."""

    loaded: list[str] = field(default_factory=list)
    reshaped: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    misfit: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    #: the file is a trained model of the loading detector (an hqm checkpoint whose config names it,
    #: not a conversion): every layer stack of the model must be in it (``pretrained_problem``)
    whole: bool = False

    def extend(self, other: LoadReport) -> LoadReport:
        for name in ("loaded", "reshaped", "fresh", "ignored", "misfit", "unknown", "partial"):
            getattr(self, name).extend(getattr(other, name))
        return self

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "loaded": list(self.loaded),
            "reshaped": list(self.reshaped),
            "fresh": list(self.fresh),
            "ignored": list(self.ignored),
        }

    def counts(self) -> str:
        return (
            f"{len(self.loaded)} loaded, {len(self.reshaped)} reshaped, {len(self.fresh)} fresh, "
            f"{len(self.ignored)} ignored"
        )

    def summary(self, verbose: bool = True) -> str:
        """Printable report; ``verbose=False`` lists the loaded keys by count only."""
        lines = [f"checkpoint conversion: {self.counts()}"]
        for name in ("loaded", "reshaped", "fresh", "ignored"):
            keys = getattr(self, name)
            if name == "loaded" and not verbose:
                continue
            lines.append(f"{name} ({len(keys)}):")
            lines.extend(f"  {k}" for k in keys)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary(verbose=False)


def entry_key(entry: str) -> str:
    """The model key a :class:`LoadReport` entry is about (``"target <- source: reason"`` -> target)."""
    return entry.split(" <- ")[0].split(":")[0]


#: op name -> fn(source tensor, context) -> (tensor, note or "", fresh rows description or "")
OPS: dict[str, Callable[[Tensor, dict[str, Any]], tuple[Tensor, str, str]]] = {
    "copy": lambda t, ctx: (t, "", ""),
}


def register_op(name: str):
    """Decorator adding a tensor transform usable as ``Rule.op``."""

    def deco(fn):
        OPS[name] = fn
        return fn

    return deco


def apply_spec(
    state: dict[str, Tensor], spec: ConversionSpec, context: dict[str, Any] | None = None
) -> tuple[dict[str, Tensor], LoadReport]:
    """Rename (and transform) ``state`` with ``spec``. ``context`` feeds the ops (e.g. object names)."""
    context = context or {}
    compiled = [(re.compile(r.pattern), r) for r in spec.rules]
    out: dict[str, Tensor] = {}
    report = LoadReport()
    for key, tensor in state.items():
        match = next(((m, r) for p, r in compiled if (m := p.fullmatch(key))), None)
        if match is None:
            report.ignored.append(f"{key}: no rule in the {spec.source}->{spec.detector} table")
            continue
        m, rule = match
        if not rule.targets:
            report.ignored.append(f"{key}: {rule.note or 'dropped by the table'}")
            continue
        if rule.op not in OPS:
            raise KeyError(f"rule {rule.pattern!r} names an unknown op {rule.op!r}")
        new, note, fresh = OPS[rule.op](tensor, context)
        for template in rule.targets:
            target = m.expand(template)
            out[target] = new.clone()
            shown = target if target == key else f"{target} <- {key}"
            if note:
                report.reshaped.append(f"{shown}: {note}")
            else:
                report.loaded.append(shown)
            if fresh:
                report.fresh.append(f"{target}: {fresh}")
    return out, report


def init_linear_rows(rows: int, fan_in: int, like: Tensor, bias: bool) -> Tensor:
    """Rows initialised like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) for weight (rows, fan_in)
    or bias (rows,)."""
    bound = 1.0 / math.sqrt(fan_in)
    shape = (rows,) if bias else (rows, fan_in)
    return torch.empty(shape, dtype=like.dtype).uniform_(-bound, bound)


#: keys whose first dimension may differ between checkpoint and model (the first rows are kept)
ROW_RESIZABLE = ("query_embed.weight",)


def load_partial(
    model: nn.Module, state: dict[str, Tensor], row_resizable: tuple[str, ...] = ROW_RESIZABLE
) -> LoadReport:
    """Load every tensor of ``state`` whose name and shape match ``model``; report the rest.

    A key in ``row_resizable`` (or ending in ``.`` + one, HOTR's ``detr.query_embed.weight``) with a
    different number of rows (DETR's 100 queries vs the model's
    ``num_queries``) gets its first rows copied (``reshaped``). Other shape mismatches and unknown
    keys are ``ignored`` with a reason; model keys not provided stay ``fresh``.
    """
    own = model.state_dict()
    report = LoadReport()
    new: dict[str, Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.ignored.append(f"{key}: not in the model")
            report.unknown.append(key)
            continue
        target = own[key]
        if value.shape == target.shape:
            new[key] = value.to(target.dtype)
            report.loaded.append(key)
        elif (
            any(key == k or key.endswith(f".{k}") for k in row_resizable)
            and value.shape[1:] == target.shape[1:]
        ):
            n = min(value.shape[0], target.shape[0])
            t = target.clone()
            t[:n] = value[:n].to(target.dtype)
            new[key] = t
            report.reshaped.append(f"{key}: {tuple(value.shape)} -> first {n} rows of {tuple(target.shape)}")
            if n < target.shape[0]:
                report.partial.append(key)
        else:
            report.ignored.append(
                f"{key}: shape {tuple(value.shape)} does not fit the model's {tuple(target.shape)}"
            )
            report.misfit.append(key)
    for key in own:
        if key not in new and not key.endswith("num_batches_tracked"):
            report.fresh.append(key)
    model.load_state_dict(new, strict=False)
    return report
