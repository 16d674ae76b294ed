"""Detectors, matcher, criterion and post-processor.

``DETECTORS`` maps ``model.detector`` to a builder ``(cfg, num_obj_classes, num_verb_classes)``;
a new detector is one file plus one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from hqm.config import ConfigError
from hqm.models.criterion import SetCriterion, build_criterion
from hqm.models.detector import DetrHOIModel
from hqm.models.matcher import HungarianMatcher, build_matcher
from hqm.models.postprocess import PostProcessHOI, build_postprocessor
from hqm.models.qpic import build_qpic

DETECTORS: dict[str, Callable[..., DetrHOIModel]] = {
    "qpic": build_qpic,
}


def build_model(cfg, num_obj_classes: int, num_verb_classes: int) -> DetrHOIModel:
    """The detector named by ``cfg.model.detector`` with the miners of ``cfg.mining`` attached."""
    name = cfg.model.detector
    if name not in DETECTORS:
        raise ConfigError(f"unknown model.detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    model = DETECTORS[name](cfg, num_obj_classes, num_verb_classes)
    from hqm.mining import build_miners

    model.attach_miners(build_miners(cfg, model))
    return model


__all__ = [
    "DETECTORS",
    "DetrHOIModel",
    "HungarianMatcher",
    "PostProcessHOI",
    "SetCriterion",
    "build_criterion",
    "build_matcher",
    "build_model",
    "build_postprocessor",
]
