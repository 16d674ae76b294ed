"""``hqm check-data CONFIG``: validate a dataset (annotations and images) without training.

The checks are the loaders' own (this module only runs them and sums up), in collecting mode instead
of stopping at the first problem:

* every annotation record of both splits goes through ``parse_records`` (``hqm.data.records``) with an
  ``IssueLog`` that counts each kind of problem (malformed record, unknown category, box outside the
  image, verb out of range, missing image, ...) and keeps the first few messages of each;
* every image of a kept record is decoded fully with the one decoder training uses
  (``hqm.data.images.read_image``, stored pixel order): a truncated or corrupt file that only fails
  when its pixels are read is found here, not hours into a run (``decode=False``: headers only);
* a file name listed twice in one split is reported (the evaluation refuses it).

The summary counts images (records kept / in the file), labelled pairs (distinct subject-object
pairs), HOI labels, classes and the rare classes (valid (verb, object) classes with fewer than 10
training instances, the HICO-DET definition, applied to every dataset).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hqm.config import DataConfig
from hqm.data.build import SPLITS, check_split_usable, load_annotations, load_meta, split_paths
from hqm.data.images import ImageDecodeError, read_image
from hqm.data.records import DatasetError, IssueLog
from hqm.evaluation.hico_det import RARE_THRESHOLD, hoi_class_index, training_counts
from hqm.progress import track
from hqm.structures import ImageAnnotation


@dataclass
class SplitSummary:
    """Counts of one split. ``records``: in the annotation file; ``images``: records kept (their
    image exists and, with decoding, decodes); ``pairs``: distinct (subject, object) pairs with a
    label; ``hois``: (subject, object, verb) labels."""

    split: str
    annotation_file: str
    image_folder: str
    records: int = 0
    images: int = 0
    boxes: int = 0
    pairs: int = 0
    hois: int = 0


@dataclass
class DataReport:
    """The result of :func:`check_dataset`. ``problems``: count per kind; ``examples``: the first
    messages of each kind; ``notes``: documented drops that are not problems (e.g. HOI-A's verb 0)."""

    dataset: str
    root: str
    object_classes: int = 0
    verb_classes: int = 0
    hoi_classes: int = 0
    rare_classes: int = 0
    unseen_classes: int = 0
    splits: list[SplitSummary] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def _decode_all(
    anns: list[ImageAnnotation], folder: Path, log: IssueLog, show: bool
) -> list[ImageAnnotation]:
    """The records whose image decodes; the others reported as ``undecodable_image``."""

    def decode(ann: ImageAnnotation) -> str | None:
        try:
            read_image(folder / ann.file_name, exif_transpose=False)
        except ImageDecodeError as e:
            return str(e)
        return None

    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without holding the GIL
        results = list(track(pool.map(decode, anns), len(anns), f"decode {folder.name}", "images", show))
    kept = []
    for ann, problem in zip(anns, results):
        if problem is None:
            kept.append(ann)
        else:
            log.report("undecodable_image", None, ann.file_name, "file_name", problem)
    return kept


def _check_split(
    cfg_data: DataConfig, split: str, decode: bool, show: bool, report: DataReport
) -> list[ImageAnnotation]:
    folder, ann_file = split_paths(cfg_data.dataset, cfg_data.root, split)
    summary = SplitSummary(split, str(ann_file), str(folder))
    report.splits.append(summary)
    log = IssueLog(ann_file, "skip")
    try:
        anns = load_annotations(cfg_data.dataset, cfg_data.root, split, "skip", True, log)
    except DatasetError as e:  # no file, not JSON, not a list: the split cannot be read at all
        log.counts["unreadable_annotation_file"] += 1
        log.examples["unreadable_annotation_file"] = [str(e)]
        anns = []
    else:  # parse_records drops a whole record for exactly these kinds (others drop boxes / HOIs)
        dropped = ("malformed_record", "missing_image", "unreadable_image", "duplicate_file_name")
        summary.records = len(anns) + sum(log.counts[kind] for kind in dropped)
    if decode:
        anns = _decode_all(anns, folder, log, show)
    if not log.counts["unreadable_annotation_file"]:
        try:
            check_split_usable(anns, ann_file, split, hint=False)
        except DatasetError as e:  # training / evaluation would refuse the split
            log.counts["unusable_split"] += 1
            log.examples["unusable_split"] = [str(e)]
    summary.images = len(anns)
    summary.boxes = sum(len(a.boxes) for a in anns)
    summary.hois = sum(len(a.hois) for a in anns)
    summary.pairs = sum(len({(s, o) for s, o, _ in a.hois.tolist()}) for a in anns)
    for kind, n in log.counts.items():
        report.problems[kind] = report.problems.get(kind, 0) + n
    for kind, shown in log.examples.items():
        report.examples.setdefault(kind, []).extend(shown)
    for kind, n in log.notes.items():
        report.notes[kind] = report.notes.get(kind, 0) + n
    return anns


def check_dataset(cfg_data: DataConfig, decode: bool = True, show_progress: bool = True) -> DataReport:
    """Check ``cfg_data.dataset`` at ``cfg_data.root`` (see the module docstring); never raises for a
    problem in the records or images (they are in the report), only for a root without the dataset's
    vocabulary (``DatasetNotFoundError``, ``DatasetError``)."""
    meta = load_meta(cfg_data.dataset, cfg_data.root)
    report = DataReport(cfg_data.dataset, str(cfg_data.root))
    report.object_classes, report.verb_classes = meta.num_obj_classes, meta.num_verb_classes
    per_split = {split: _check_split(cfg_data, split, decode, show_progress, report) for split in SPLITS}
    index = hoi_class_index(meta.correct_mat)
    counts = training_counts(index, per_split["train"])
    report.hoi_classes = int(counts.shape[0])
    report.rare_classes = int((counts < RARE_THRESHOLD).sum())
    report.unseen_classes = int((counts == 0).sum())
    return report


def format_report(report: DataReport, shown: int = 3) -> str:
    """The console summary of ``report`` (at most ``shown`` examples per kind of problem)."""
    lines = [
        f"dataset {report.dataset} at {report.root}",
        f"  classes: {report.object_classes} objects, {report.verb_classes} verbs, {report.hoi_classes} "
        f"valid HOI classes ({report.rare_classes} rare: < {RARE_THRESHOLD} training instances; "
        f"{report.unseen_classes} with none)",
    ]
    for s in report.splits:
        lines.append(
            f"  {s.split}: {s.images} images kept of {s.records} records, {s.pairs} labelled pairs, "
            f"{s.hois} HOI labels, {s.boxes} boxes ({s.annotation_file}; images in {s.image_folder})"
        )
    if report.notes:
        lines.append(
            "  documented drops (not problems): " + ", ".join(f"{k}: {v}" for k, v in report.notes.items())
        )
    if report.ok:
        lines.append("  problems: none")
        return "\n".join(lines)
    total = sum(report.problems.values())
    lines.append(f"  problems: {total} ({len(report.problems)} kinds); first examples:")
    for kind, n in sorted(report.problems.items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind}: {n}")
        lines += [f"      {m}" for m in report.examples.get(kind, [])[:shown]]
    lines.append(
        "  training with data.on_bad_record=error stops at the first of these; data.on_bad_record=skip "
        "drops them (and logs a count)"
    )
    return "\n".join(lines)
