"""Which config builds the model for a weights file (``hqm eval``, ``hqm predict``, ``HOIDetector``).

Weights that carry an hqm config (``hqm train`` checkpoints, ``hqm export`` folders) define their
model: that config is used, with the ``key=value`` overrides the user typed applied on top (an
override of a ``model.*`` key then has to match the weights, or loading refuses them). A config
*file* given as well (``hqm eval CONFIG weights=CKPT``, ``from_checkpoint(..., config=NAME)``) is not
applied; the values it would change are reported, so nothing differs silently. Released QPIC / HQM
weights carry no config: there the given config (required) and the overrides are used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from hqm.config import Config, ConfigError, config_differences, config_from_dict, load_config, merge_overrides
from hqm.zoo.weights import load_weights

#: config keys that shape the model or the evaluation (others, e.g. train.lr, do not matter here)
RELEVANT = ("model.", "data.", "eval.", "train.amp", "device")


@dataclass
class ResolvedConfig:
    """``cfg``: the config to build and evaluate the model with; ``not_applied``: "key: checkpoint ->
    given" for each relevant value of the given config file that was not used; ``overridden``: the
    same for the overrides that were applied and differ from the checkpoint's config."""

    cfg: Config
    not_applied: list[str] = field(default_factory=list)
    overridden: list[str] = field(default_factory=list)

    def notes(self, config_name: str | os.PathLike | None = None) -> list[str]:
        """Printable lines for the user (empty when nothing differs)."""
        lines = []
        if self.not_applied:
            lines.append(
                f"the checkpoint's own config is used; {config_name or 'the given config'} would change "
                f"{', '.join(self.not_applied)} (pass them as key=value to apply them)"
            )
        if self.overridden:
            lines.append(f"overriding the checkpoint's config: {', '.join(self.overridden)}")
        return lines

    def load_weights(self, model, path, object_names, checkpoint=None):
        """``hqm.zoo.load_weights`` of ``path`` into ``model`` built from ``cfg``: the detector's
        rename tables, and a mismatch names the ``model.*`` overrides first (see there)."""
        return load_weights(
            model,
            path,
            object_names,
            self.cfg.model.detector,
            checkpoint=checkpoint,
            overridden=self.overridden,
        )


def _show(diffs: list[tuple[str, Any, Any]]) -> list[str]:
    return [f"{k} {a!r} -> {b!r}" for k, a, b in diffs]


def resolve_model_config(
    info: dict[str, Any],
    path: str | os.PathLike,
    config: str | os.PathLike | None = None,
    overrides: list[str] | None = None,
    missing_config: str | None = None,
) -> ResolvedConfig:
    """The config for the weights ``path`` whose non-tensor entries are ``info`` (see the module
    docstring). Raises ``ConfigError`` when the weights carry no config and none is given: its
    message is ``missing_config`` (the caller's syntax for naming one), else a generic one."""
    overrides = list(overrides or [])
    own = info.get("config")
    if not isinstance(own, dict):
        if config is None:
            raise ConfigError(
                missing_config
                or f"{path} carries no hqm config (released weights?): give the config to build its "
                f"model with: HOIDetector.from_checkpoint({str(path)!r}, config='qpic_r50_hico') in "
                f"Python, hqm predict qpic_r50_hico weights={path} on the command line"
            )
        return ResolvedConfig(load_config(config, overrides))
    try:
        base = config_from_dict(own)
    except ConfigError as e:  # an edited export's config.yaml, or weights of another hqm version
        raise ConfigError(f"{path}: its config: {e}", e.key) from None
    try:
        cfg = config_from_dict(merge_overrides(own, overrides))
    except ConfigError as e:
        detector = (own.get("model") or {}).get("detector", "qpic")
        # the key's own message first: a bad value is not a detector mismatch
        raise ConfigError(f"{e} (overrides for {path}, trained as model.detector={detector})") from None
    resolved = ResolvedConfig(cfg, overridden=_show(config_differences(base, cfg, RELEVANT)))
    if config is not None:
        given = load_config(config, overrides)
        resolved.not_applied = _show(config_differences(cfg, given, RELEVANT))
    return resolved
