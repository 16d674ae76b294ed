"""The detector registry: every DETR-style HOI detector ``model.detector`` can name.

An entry (:class:`hqm.models.detector.DetectorSpec`) bundles the builders of the model, its matcher,
its criterion and its post-processor. Every call site -- the trainer, evaluation, the Python API,
``hqm predict`` / ``export``, the miners that need a matcher -- builds through the functions below
from ``cfg.model.detector``, and the config's choices for ``model.detector`` are this registry's
names. The registry sits above ``hqm.models`` and ``hqm.mining`` because building a model attaches
the miners of ``cfg.mining``.

Adding a detector: its model file (``hqm/models/<name>.py``, defining its ``DetectorSpec``), its
checkpoint tables (``hqm/zoo/<name>.py`` and one line in ``hqm.zoo.tables.LAYOUTS``), one line here.
"""

from __future__ import annotations

from hqm.mining import build_miners
from hqm.models.cdn import CDN_DETECTOR
from hqm.models.detector import DetectorSpec, DetrHOIModel
from hqm.models.hotr import HOTR_DETECTOR
from hqm.models.qpic import QPIC_DETECTOR

DETECTORS: dict[str, DetectorSpec] = {
    spec.name: spec for spec in (QPIC_DETECTOR, CDN_DETECTOR, HOTR_DETECTOR)
}


def detector_names() -> tuple[str, ...]:
    return tuple(DETECTORS)


def get_detector(name: str) -> DetectorSpec:
    if name not in DETECTORS:
        raise ValueError(f"unknown model.detector {name!r}; available: {', '.join(DETECTORS)}")
    return DETECTORS[name]


def build_model(cfg, num_obj_classes: int, num_verb_classes: int) -> DetrHOIModel:
    """The detector named by ``cfg.model.detector`` with the miners of ``cfg.mining`` attached.

    Raises ``ConfigError`` when the parameters of these ``model.*`` sizes do not fit in memory."""
    spec = get_detector(cfg.model.detector)
    try:
        model = spec.build_model(cfg, num_obj_classes, num_verb_classes)
    except (RuntimeError, MemoryError) as e:  # torch's CPU allocator raises RuntimeError
        if not isinstance(e, MemoryError) and "can't allocate memory" not in str(e):
            raise
        from hqm.config import ConfigError

        m = cfg.model
        raise ConfigError(
            f"the model's parameters do not fit in memory (model.hidden_dim={m.hidden_dim}, "
            f"model.dim_feedforward={m.dim_feedforward}, model.backbone={m.backbone}, "
            f"model.backbone_width={m.backbone_width}, model.num_queries={m.num_queries}): "
            "choose smaller model.* sizes"
        ) from None
    model.attach_miners(build_miners(cfg, model, matcher_factory=lambda: spec.build_matcher(cfg)))
    return model


def build_matcher(cfg):
    return get_detector(cfg.model.detector).build_matcher(cfg)


def build_criterion(cfg, num_obj_classes: int, class_counts=None):
    """The configured detector's criterion (with its matcher). ``class_counts``: the training set's
    (object, verb) label counts, needed by ``loss.reweight`` only."""
    spec = get_detector(cfg.model.detector)
    return spec.build_criterion(cfg, num_obj_classes, spec.build_matcher(cfg), class_counts)


def build_postprocessor(cfg, meta):
    return get_detector(cfg.model.detector).build_postprocessor(cfg, meta)


__all__ = [
    "DETECTORS",
    "DetectorSpec",
    "build_criterion",
    "build_matcher",
    "build_model",
    "build_postprocessor",
    "detector_names",
    "get_detector",
]
