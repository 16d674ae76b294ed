"""What ``--resume`` does with settings that differ from the checkpoint's run: apply or refuse, never
silently keep the old value while ``config.yaml`` records the new one.

Every config key falls in one of three classes:

* **refused** (:data:`REFUSED`): ``model.*``, ``data.*``, ``mining.strategy``, ``train.batch_size``,
  ``train.accumulate``, ``train.size_grouping``, ``train.seed``, ``train.trainable``, and
  ``train.size_divisibility`` when either run groups batches by size (``train.size_grouping`` > 1:
  the padded sizes decide which images share a batch). They define the weights, the data, the
  set of trained parameters or the data order (position in the epoch, random streams); a run
  resumed with another value would be neither the old run nor a new one. Resuming raises
  ``ResumeError`` naming every such key with both values.
* **no effect** (:data:`NO_EFFECT`): ``model.pretrained`` (an initialisation; the weights come from
  the checkpoint), ``data.num_workers`` (loading is seeded per sample, so the data are the same),
  ``data.generate``. Logged.
* **applied** (everything else): the schedule and the lengths (``train.epochs``, ``train.max_steps``,
  ``train.lr``, ``train.lr_backbone``, ``train.weight_decay``, ``train.lr_drop``,
  ``train.clip_max_norm``), ``eval.*``, the loss and mining weights and options, ``train.amp``,
  logging and checkpoint cadence, ``device``. Logged. The lr is a pure function of the step and the
  current config (``hqm.engine.lr_schedule``), so a new ``lr``, ``lr_drop``, ``lr_schedule``,
  ``warmup_steps`` or ``epochs`` holds from the restored step on; the trainer writes a new
  ``weight_decay`` into the restored optimiser state (``Trainer.resume``).
"""

from __future__ import annotations

from typing import Any

from hqm.config import Config, config_differences
from hqm.errors import UsageError

REFUSED = (
    "model.",
    "data.",
    "mining.strategy",
    "train.batch_size",
    "train.accumulate",
    "train.size_grouping",
    "train.seed",
    "train.trainable",
)
NO_EFFECT = ("model.pretrained", "data.num_workers", "data.generate")


class ResumeError(UsageError, ValueError):
    """``--resume`` cannot continue from the given checkpoint (the message says why and what to do)."""


def _fmt(diffs: list[tuple[str, Any, Any]]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in diffs)


def check_compatible(old: Config, new: Config, path: str) -> dict[str, list[tuple[str, Any, Any]]]:
    """Classify the differences between the checkpoint's config ``old`` and ``new``.

    Returns ``{"applied": [...], "no_effect": [...]}`` of ``(key, old, new)``. Raises ``ResumeError``
    naming every refused key (see the module docstring) and how to proceed.
    """
    diffs = config_differences(old, new)
    no_effect = [d for d in diffs if d[0].startswith(NO_EFFECT)]
    refused = [d for d in diffs if d[0].startswith(REFUSED) and d not in no_effect]
    if max(old.train.size_grouping, new.train.size_grouping) > 1:  # the padded size cuts the pools
        refused += [d for d in diffs if d[0] == "train.size_divisibility"]
    if refused:
        raise ResumeError(
            f"cannot resume from {path}: {_fmt(refused)} (that run's value -> now). These define the "
            "model, the data or the data order, so the resumed run would be another run: resume with "
            "that run's values (its config.yaml) or start a new run in another train.output_dir"
        )
    applied = [d for d in diffs if d not in no_effect]
    return {"applied": applied, "no_effect": no_effect}


def describe(changes: dict[str, list[tuple[str, Any, Any]]]) -> list[str]:
    """Log lines for the result of :func:`check_compatible`."""
    lines = []
    if changes["applied"]:
        lines.append(f"resuming with changed settings, applied from now on: {_fmt(changes['applied'])}")
    if changes["no_effect"]:
        lines.append(f"changed settings without effect on a resumed run: {_fmt(changes['no_effect'])}")
    return lines
