"""The evaluator interface (reset / process / evaluate), rank gathering, the factory and the printer.

Life cycle (detectron2 style)::

    evaluator = build_evaluator("hico_det", meta, test_annotations, train_annotations)
    evaluator.reset()
    for batch in loader:
        evaluator.process(postprocess(model(batch)))      # list[HOIPredictions], any batching/order
    metrics = evaluator.evaluate()                         # flat dict[str, float], same on every rank
    rows = evaluator.per_class["default"]                  # per-class table(s) of the last evaluate()

``process`` immediately reduces each image to a small, picklable record (e.g. the per-image top-100
cut and class ids), keyed by ``file_name``. Under ``torch.distributed`` ``evaluate`` all-gathers those
records (``all_gather_object``), de-duplicates them by ``file_name`` (DistributedSampler pads the last
batch with repeated images; the first copy in rank order wins, all copies are equal) and computes the
metrics on every rank. Computation always walks the images in test-annotation order, so results do
not depend on batching, process order or the number of ranks.

Metric values are fractions in [0, 1]; :func:`format_table` prints AP-like values as percentages.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from hqm.config import ConfigError
from hqm.distributed import all_gather_object, get_world_size
from hqm.structures import DatasetMeta, HOIPredictions, ImageAnnotation

Record = Any  # an evaluator-specific picklable per-image summary


def merge_records(per_rank: Iterable[dict[str, Record]]) -> dict[str, Record]:
    """Union of per-rank ``{file_name: record}`` dicts; the first occurrence (lowest rank) wins.

    This is the de-duplication path used by :meth:`HOIEvaluator.evaluate` after the all-gather; it
    is a plain function so tests can simulate any number of ranks without ``torch.distributed``.
    """
    merged: dict[str, Record] = {}
    for records in per_rank:
        for name, rec in records.items():
            merged.setdefault(name, rec)
    return merged


def gather_records(records: dict[str, Record]) -> dict[str, Record]:
    """All-gather ``records`` over the default process group (identity when not distributed)."""
    if get_world_size() == 1:
        return records
    return merge_records(all_gather_object(records))


class HOIEvaluator(ABC):
    """Accumulates per-image predictions and computes dataset metrics.

    Subclasses implement :meth:`_reduce` (one ``HOIPredictions`` -> a small record, or ``None`` to
    drop it) and :meth:`_compute` (all records -> metrics and per-class tables).

    After :meth:`evaluate`, ``self.per_class`` maps a table name (e.g. ``"default"``, ``"ko"``,
    ``"role_S1"``) to a list of rows ``{"name", "ap", "max_recall", "n_gt", "n_det", ...}``; ``ap``
    and ``max_recall`` are NaN for classes without ground truth (excluded from the means).
    """

    def __init__(self) -> None:
        self._records: dict[str, Record] = {}
        self.per_class: dict[str, list[dict[str, Any]]] = {}
        self.num_unknown_images = 0

    def reset(self) -> None:
        """Forget everything processed so far."""
        self._records = {}
        self.per_class = {}
        self.num_unknown_images = 0

    def process(self, predictions: Sequence[HOIPredictions]) -> None:
        """Add the predictions of some images. An image seen twice keeps its first record.

        Raises ``ValueError`` naming the image and the triplet index when a score is NaN or infinite
        (a NaN ranks anywhere and an inf first: a silent drop or rank would change the metric)."""
        for pred in predictions:
            if pred.file_name in self._records:
                continue
            scores = np.asarray(pred.scores, dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(scores))
            if bad.size:
                raise ValueError(
                    f"predictions of image {pred.file_name!r}: triplet {int(bad[0])} has score "
                    f"{scores[bad[0]]} ({bad.size} non-finite scores); evaluation needs finite scores"
                )
            rec = self._reduce(pred)
            if rec is None:
                self.num_unknown_images += 1
                continue
            self._records[pred.file_name] = rec

    @property
    def records(self) -> dict[str, Record]:
        """This process's per-image records, ``{file_name: record}`` (what the all-gather ships)."""
        return self._records

    def evaluate(self) -> dict[str, float]:
        """Gather over ranks (if distributed) and compute the flat metric dict (fractions in [0, 1])."""
        return self.compute_from(gather_records(self._records))

    def compute_from(self, records: dict[str, Record]) -> dict[str, float]:
        """Metrics of explicit records (e.g. ``merge_records`` of several evaluators' ``records``)."""
        metrics, tables = self._compute(records)
        self.per_class = tables
        return metrics

    @abstractmethod
    def _reduce(self, pred: HOIPredictions) -> Record | None:
        """Per-image summary kept until ``evaluate``; ``None`` for an image not in the test set."""

    @abstractmethod
    def _compute(
        self, records: dict[str, Record]
    ) -> tuple[dict[str, float], dict[str, list[dict[str, Any]]]]:
        """Metrics and per-class tables from the merged records."""


def build_evaluator(
    dataset: str,
    meta: DatasetMeta,
    test_annotations: list[ImageAnnotation],
    train_annotations: list[ImageAnnotation] | None = None,
    mode: str = "default",
    max_dets: int | None = 100,
    ap_thresholds: str = "matlab",
) -> HOIEvaluator:
    """The evaluator of a dataset.

    dataset: ``hico_det`` | ``synthetic`` (HICO-DET semantics) | ``vcoco`` | ``hoia``.
    mode: HICO-DET only: ``default`` | ``ko`` (Known-Object) | ``both``.
    ap_thresholds: HICO-DET only: the 11-point recall thresholds, ``matlab`` (official, default) |
        ``numpy`` (QPIC-family Python evaluators) | ``exact`` (see :mod:`hqm.evaluation.ap`);
        V-COCO and HOI-A use all-point AP, which has no thresholds.
    max_dets: per-image cut on the triplets (HICO-DET, HOI-A). V-COCO's ``vsrl_eval`` has no such
        cut, so it is not applied there.
    train_annotations: HICO-DET needs them for the rare / non-rare split (keys omitted without).
    """
    name = dataset.lower().replace("-", "_")
    if name in ("hico_det", "hico", "synthetic"):
        from hqm.evaluation.hico_det import HICODetEvaluator

        return HICODetEvaluator(
            meta,
            test_annotations,
            train_annotations,
            mode=mode,
            max_dets=max_dets,
            ap_thresholds=ap_thresholds,
        )
    if name in ("vcoco", "v_coco"):
        from hqm.evaluation.vcoco import VCOCOEvaluator

        return VCOCOEvaluator(meta, test_annotations)
    if name in ("hoia", "hoi_a"):
        from hqm.evaluation.hoia import HOIAEvaluator

        return HOIAEvaluator(meta, test_annotations, max_dets=max_dets)
    raise ConfigError(f"unknown dataset {dataset!r}; expected one of hico_det, synthetic, vcoco, hoia")


_PERCENT_PREFIXES = ("mAP", "AP", "mean_max_recall")


def format_table(metrics: dict[str, float], title: str | None = None) -> str:
    """A console table with a unit column: AP / recall values in percent (2 decimals; the metrics
    dict and ``--json`` hold fractions in [0, 1]), other values as they are."""
    if not metrics:
        return "(no metrics)"
    width = max(len(k) for k in metrics)
    lines = []
    if title:
        lines.append(title)
    lines.append(f"{'metric':<{width}}  {'value':>8}  unit")
    lines.append("-" * (width + 16))
    for key, val in metrics.items():
        percent = key.startswith(_PERCENT_PREFIXES)
        if isinstance(val, float) and math.isnan(val):
            text = "n/a"
        elif percent:
            text = f"{100.0 * val:.2f}"
        elif float(val).is_integer():
            text = f"{int(val)}"
        else:
            text = f"{val:.4f}"
        lines.append(f"{key:<{width}}  {text:>8}  {'%' if percent else ''}".rstrip())
    return "\n".join(lines)


def format_class_table(rows: list[dict[str, Any]], limit: int | None = None) -> str:
    """A per-class table (name, AP %, max recall %, #GT, #det) from ``evaluator.per_class[...]``."""
    width = max([len(str(r["name"])) for r in rows] + [5])
    out = [f"{'class':<{width}}  {'AP %':>6}  {'rec %':>6}  {'#gt':>6}  {'#det':>7}"]
    for r in rows[:limit]:
        ap = "n/a" if math.isnan(r["ap"]) else f"{100 * r['ap']:.2f}"
        rec = "n/a" if math.isnan(r["max_recall"]) else f"{100 * r['max_recall']:.2f}"
        out.append(f"{r['name']:<{width}}  {ap:>6}  {rec:>6}  {r['n_gt']:>6}  {r['n_det']:>7}")
    return "\n".join(out)
