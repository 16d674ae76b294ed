"""Which checkpoint layouts each registered detector loads, and the lookups the loaders use.

``LAYOUTS`` has one entry per detector of ``hqm.detectors.DETECTORS`` (a test checks they agree);
every loader (``load_weights``, ``load_into_model``, ``hqm convert``) is given the configured detector
and detects the file's layout with that detector's tables.
"""

from __future__ import annotations

from collections.abc import Iterable

from hqm.config import ConfigError
from hqm.zoo.cdn import CDN_LAYOUTS
from hqm.zoo.hotr import HOTR_LAYOUTS
from hqm.zoo.rename import ConversionSpec
from hqm.zoo.tables import QPIC_LAYOUTS, CheckpointLayouts

#: detector -> the checkpoint layouts it loads (one line per registered detector, see hqm.detectors)
LAYOUTS: dict[str, CheckpointLayouts] = {
    layouts.detector: layouts for layouts in (QPIC_LAYOUTS, CDN_LAYOUTS, HOTR_LAYOUTS)
}

#: (source layout, detector) -> spec (default DETR initialisation)
TABLES: dict[tuple[str, str], ConversionSpec] = {
    (source, det): spec for det, layouts in LAYOUTS.items() for source, spec in layouts.specs.items()
}


def get_layouts(detector: str) -> CheckpointLayouts:
    if detector not in LAYOUTS:
        raise ConfigError(f"no checkpoint tables for detector {detector!r} (have: {', '.join(LAYOUTS)})")
    return LAYOUTS[detector]


def get_spec(source: str, detector: str, init: str | None = None) -> ConversionSpec:
    """The rename table from ``source`` checkpoints to ``detector``; ``init`` picks one of the
    detector's DETR initialisations (``detr_inits``; None: its default)."""
    layouts = get_layouts(detector)
    if source == "detr" and init is not None:
        if init not in layouts.detr_inits:
            raise ConfigError(
                f"{detector}: no DETR initialisation {init!r} (have: {', '.join(layouts.detr_inits)})"
            )
        return layouts.detr_inits[init]
    if source not in layouts.specs:
        have = ", ".join(f"{s}->{d}" for s, d in sorted(TABLES))
        raise ConfigError(f"no rename table for {source} checkpoints -> {detector!r} detector (have: {have})")
    return layouts.specs[source]


def detect_format(state: dict, detector: str = "qpic", path: object = None) -> str:
    """The layout of ``state`` as the ``detector``'s checkpoint tables read it (see
    :meth:`CheckpointLayouts.detect`). A layout the detector does not load raises ``CheckpointError``
    naming ``path`` and, when another registered detector reads the file as its own weights, that
    detector (``set model.detector=...``)."""
    from hqm.zoo.safe_load import CheckpointError

    try:
        return get_layouts(detector).detect(state)
    except CheckpointError as e:
        other = read_as_weights(state, [d for d in LAYOUTS if d != detector])
        hint = f"; these look like {other[0]} weights: set model.detector={other[0]}" if other else ""
        raise CheckpointError(f"{str(path) + ': ' if path is not None else ''}{e}{hint}") from None


def read_as_weights(state: dict, detectors: Iterable[str] = tuple(LAYOUTS)) -> tuple[str, str] | None:
    """(detector, layout): the first of ``detectors`` whose tables read ``state`` as HOI weights (a
    layout other than ``detr``), or None when none does (DETR weights, or an unknown layout). In the
    default order (QPIC first) a QPIC file is QPIC's, not an initialisation of CDN's."""
    from hqm.zoo.safe_load import CheckpointError

    for detector in detectors:
        try:
            found = get_layouts(detector).detect(state)
        except CheckpointError:
            continue
        if found != "detr":
            return detector, found
    return None


def check_args(rest: dict, model, path, detector: str) -> None:
    """The detector's check of a checkpoint's training arguments (``CheckpointLayouts.check_args``)."""
    check = get_layouts(detector).check_args
    if check is not None:
        check(rest, model, path)
