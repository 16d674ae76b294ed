"""Parsing and validation of HICO-format annotation records (shared by HICO-DET, V-COCO and HOI-A).

All three datasets use the same record schema (PPDM/QPIC conversion)::

    {"file_name": str,
     "annotations": [{"bbox": [x1, y1, x2, y2] (pixels), "category_id": int}, ...],
     "hoi_annotation": [{"subject_id": int, "object_id": int, "category_id": int}, ...]}

and differ only in the id -> index mappings captured by ``RecordRules``. Every problem is reported
with the file, the record index, its ``file_name`` and the offending field. ``on_bad_record="error"``
raises ``DatasetError`` on the first problem; ``"skip"`` drops the bad box / HOI / record and logs one
summary warning (logger ``hqm.data``) with counts per kind and the first few messages.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hqm.errors import UserError
from hqm.structures import ImageAnnotation

logger = logging.getLogger("hqm.data")

# Real annotations overshoot the image border by up to a pixel (1-based MATLAB coordinates).
BOX_TOLERANCE = 1.0
_MAX_LOGGED_MESSAGES = 5
_EXPECTED = {"bbox": "a list of 4 finite numbers", "category_id": "an integer"}


class DatasetError(UserError, ValueError):
    """An annotation file, record or field is invalid (the message names file, record and field)."""


class DatasetNotFoundError(DatasetError):
    """``data.root`` holds no dataset of the requested kind (the message names the missing file); a
    usage error (exit code 2): the config points at the wrong folder."""

    exit_code = 2


@dataclass(frozen=True)
class RecordRules:
    """How one dataset maps annotation ids to contiguous indices.

    object_index:       category id -> contiguous object index.
    num_verbs:          number of verb classes; a verb index must lie in ``0..num_verbs-1``.
    verb_offset:        verb index = ``category_id - verb_offset`` (1 for HICO-DET/HOI-A, 0 for V-COCO).
    allow_no_object:    ``object_id == -1`` means "the role has no object" (V-COCO) instead of an error.
    drop_invalid_verbs: HOIs with an out-of-range verb are dropped and counted, never an error
                        (HOI-A training files contain verb 0).
    """

    object_index: dict[int, int]
    num_verbs: int
    verb_offset: int
    allow_no_object: bool = False
    drop_invalid_verbs: bool = False


class IssueLog:
    """Collects problems of one annotation file: raises (``error``) or counts them (``skip``).

    ``counts`` / ``notes``: problems / documented drops per kind; ``messages``: the first few
    messages; ``examples``: the first few messages of each kind (``hqm check-data``)."""

    def __init__(self, path: Path, on_bad_record: str, examples_per_kind: int = 3) -> None:
        if on_bad_record not in ("error", "skip"):
            raise ValueError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
        self.path = path
        self.mode = on_bad_record
        self.counts: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.messages: list[str] = []
        self.examples: dict[str, list[str]] = {}
        self.examples_per_kind = examples_per_kind

    def report(self, kind: str, index: int | None, file_name: str | None, field: str, problem: str) -> None:
        """One problem of ``kind`` in record ``index`` (None: the record is known by its file name)."""
        name = "<unknown>" if file_name is None else repr(file_name)
        where = f"record {index} (file_name {name})" if index is not None else f"file_name {name}"
        message = f"{self.path}: {where}: field '{field}': {problem}"
        if self.mode == "error":
            raise DatasetError(message + " (set data.on_bad_record=skip to drop bad records)")
        self.counts[kind] += 1
        if len(self.messages) < _MAX_LOGGED_MESSAGES:
            self.messages.append(message)
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.examples_per_kind:
            shown.append(message)

    def note(self, kind: str, n: int = 1) -> None:
        """Count a documented, always-applied drop (not an error in either mode)."""
        self.notes[kind] += n

    def flush(self) -> None:
        """Log one summary warning when anything was skipped or dropped."""
        if not self.counts and not self.notes:
            return
        parts = [f"{k}: {v}" for k, v in sorted((self.counts + self.notes).items())]
        text = f"{self.path}: dropped bad annotations ({', '.join(parts)})"
        if self.messages:
            text += "; first problems:\n  " + "\n  ".join(self.messages)
        logger.warning(text)


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


def _as_box(v: Any) -> list[float] | None:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        return None
    return [float(x) for x in v]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header only (PIL opens lazily, no pixel decoding)."""
    with Image.open(path) as im:
        return im.size


def _size_or_error(path: Path) -> tuple[int, int] | str:
    if not path.is_file():
        return f"image {path} not found"
    try:
        return image_size(path)
    except OSError as e:
        return f"image {path} unreadable: {e}"


def read_image_sizes(paths: list[Path], threads: int = 8) -> list[tuple[int, int] | str]:
    """Header sizes of many images (threads hide file-system latency); an error message per failure."""
    if len(paths) < 64:
        return [_size_or_error(p) for p in paths]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(_size_or_error, paths, chunksize=64))


def load_json(path: Path, error: type[UserError] = DatasetError) -> Any:
    """The JSON value in ``path``, read as JSON's own encodings allow (UTF-8, with or without a BOM;
    UTF-16 / UTF-32, detected by ``json.loads``). Raises ``error`` (default ``DatasetError``) naming
    the file for text in another encoding (e.g. latin-1: the offending byte and its offset) and for
    invalid JSON; ``OSError`` as ``open`` raises it."""
    raw = Path(path).read_bytes()
    try:
        return json.loads(raw)
    except UnicodeDecodeError as e:
        raise error(
            f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}; latin-1 or another "
            "legacy encoding?): save it as UTF-8, the encoding JSON files use"
        ) from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON: {e}") from None


def read_json_list(path: Path) -> list[Any]:
    """Load an annotation file that must hold a JSON list of records (see :func:`load_json`)."""
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    data = load_json(path)
    if not isinstance(data, list):
        raise DatasetError(
            f"{path}: the top level must be a list of image records, got {type(data).__name__}"
        )
    return data


def _parse_boxes(
    rec: dict, idx: int, fn: str, size: tuple[int, int] | None, rules: RecordRules, log: IssueLog
):
    """Validated boxes: (kept xyxy list, labels list, old index -> new index or None)."""
    boxes, labels, remap = [], [], []
    for j, ann in enumerate(rec["annotations"]):
        field = f"annotations[{j}]"
        box = _as_box(ann.get("bbox")) if isinstance(ann, dict) else None
        cat = _as_int(ann.get("category_id")) if isinstance(ann, dict) else None
        remap.append(None)
        if box is None or cat is None:
            what = "bbox" if box is None else "category_id"
            got = ann.get(what) if isinstance(ann, dict) else ann
            log.report(
                "malformed_box", idx, fn, f"{field}.{what}", f"expected {_EXPECTED[what]}, got {got!r}"
            )
            continue
        if cat not in rules.object_index:
            log.report(
                "unknown_category", idx, fn, f"{field}.category_id", f"unknown object category id {cat}"
            )
            continue
        x1, y1, x2, y2 = box
        if x2 <= x1 or y2 <= y1:
            log.report("inverted_box", idx, fn, f"{field}.bbox", f"box {box} has x2<=x1 or y2<=y1")
            continue
        if size is not None:
            w, h = size
            t = BOX_TOLERANCE
            if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
                log.report(
                    "box_outside_image", idx, fn, f"{field}.bbox", f"box {box} outside the {w}x{h} image"
                )
                continue
            x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
            y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
            if x2 <= x1 or y2 <= y1:
                log.report("inverted_box", idx, fn, f"{field}.bbox", f"box {box} is empty inside the image")
                continue
        remap[j] = len(boxes)
        boxes.append([x1, y1, x2, y2])
        labels.append(rules.object_index[cat])
    return boxes, labels, remap


def _parse_hois(rec: dict, idx: int, fn: str, remap: list[int | None], rules: RecordRules, log: IssueLog):
    """Validated ``[subject, object, verb]`` rows pointing into the kept boxes."""
    rows = []
    n = len(remap)
    for k, hoi in enumerate(rec["hoi_annotation"]):
        field = f"hoi_annotation[{k}]"
        if not isinstance(hoi, dict):
            log.report("malformed_hoi", idx, fn, field, f"expected an object, got {hoi!r}")
            continue
        vals = {key: _as_int(hoi.get(key)) for key in ("subject_id", "object_id", "category_id")}
        bad = [key for key, v in vals.items() if v is None]
        if bad:
            log.report(
                "malformed_hoi", idx, fn, f"{field}.{bad[0]}", f"expected an integer, got {hoi.get(bad[0])!r}"
            )
            continue
        sub, obj, verb_id = vals["subject_id"], vals["object_id"], vals["category_id"]
        verb = verb_id - rules.verb_offset
        if not 0 <= verb < rules.num_verbs:
            if rules.drop_invalid_verbs:
                log.note("invalid_verb_dropped")
            else:
                lo, hi = rules.verb_offset, rules.verb_offset + rules.num_verbs - 1
                log.report(
                    "verb_out_of_range",
                    idx,
                    fn,
                    f"{field}.category_id",
                    f"verb id {verb_id} not in {lo}..{hi}",
                )
            continue
        if not 0 <= sub < n:
            log.report("missing_box", idx, fn, f"{field}.subject_id", f"index {sub} out of range ({n} boxes)")
            continue
        if obj == -1 and rules.allow_no_object:
            new_obj = -1
        elif not 0 <= obj < n:
            extra = " (-1 'no object' is only valid for V-COCO)" if obj == -1 else ""
            log.report(
                "missing_box", idx, fn, f"{field}.object_id", f"index {obj} out of range ({n} boxes){extra}"
            )
            continue
        else:
            new_obj = remap[obj]
        new_sub = remap[sub]
        if new_sub is None or new_obj is None:
            log.note("hoi_on_dropped_box")  # the box problem itself was already reported
            continue
        rows.append([new_sub, new_obj, verb])
    return rows


def parse_record(rec: dict, rules: RecordRules, source: str, index: int = 0) -> ImageAnnotation:
    """One record (the schema above) -> ``ImageAnnotation``, strictly: any problem raises
    ``DatasetError`` naming ``source`` (used for records that are generated, not read from a file)."""
    log = IssueLog(Path(source), "error")
    fn = rec["file_name"]
    boxes, labels, remap = _parse_boxes(rec, index, fn, None, rules, log)
    hois = _parse_hois(rec, index, fn, remap, rules, log)
    return ImageAnnotation(
        file_name=fn,
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64).reshape(-1),
        hois=np.asarray(hois, dtype=np.int64).reshape(-1, 3),
        width=int(rec.get("width", 0)),
        height=int(rec.get("height", 0)),
    )


def parse_records(
    path: Path,
    image_dir: Path,
    rules: RecordRules,
    on_bad_record: str = "error",
    check_images: bool = True,
    log: IssueLog | None = None,
) -> list[ImageAnnotation]:
    """Parse and validate one annotation file.

    With ``check_images`` every image must exist; its size is read from the header, boxes outside the
    image (beyond a 1-pixel tolerance) are errors and the others are clamped to it. Without it, image
    sizes stay 0 and boxes are not clamped. Returns one ``ImageAnnotation`` per kept record, in file
    order, with boxes as absolute pixel xyxy and HOI rows ``[subject, object (-1: none), verb]``. A
    ``file_name`` listed again is a problem of the later record (``duplicate_file_name``: the first
    is kept), as is any record that cannot be read.
    ``log``: collect the problems there (its own mode applies; no summary is logged) instead of a
    fresh ``IssueLog`` whose summary is logged at the end.
    """
    own_log = log is None
    log = IssueLog(path, on_bad_record) if log is None else log
    out: list[ImageAnnotation] = []
    records = read_json_list(path)
    sizes: dict[int, tuple[int, int] | str] = {}
    if check_images:
        named = [
            i for i, r in enumerate(records) if isinstance(r, dict) and isinstance(r.get("file_name"), str)
        ]
        sizes = dict(zip(named, read_image_sizes([image_dir / records[i]["file_name"] for i in named])))
    first_record: dict[str, int] = {}
    for idx, rec in enumerate(records):
        fn = rec.get("file_name") if isinstance(rec, dict) else None
        fn = fn if isinstance(fn, str) else None
        if not isinstance(rec, dict):
            log.report(
                "malformed_record", idx, None, "<record>", f"expected an object, got {type(rec).__name__}"
            )
            continue
        problem = None
        for key, typ in (("file_name", str), ("annotations", list), ("hoi_annotation", list)):
            if not isinstance(rec.get(key), typ):
                got = "missing" if key not in rec else f"got {type(rec[key]).__name__}"
                problem = (key, f"expected {typ.__name__} ({got})")
                break
        if problem is not None:
            log.report("malformed_record", idx, fn, *problem)
            continue
        if fn in first_record:  # the image would count twice in training and evaluation
            log.report(
                "duplicate_file_name", idx, fn, "file_name", f"listed before, in record {first_record[fn]}"
            )
            continue
        first_record[fn] = idx
        size = sizes.get(idx) if check_images else None
        if isinstance(size, str):  # no file, or one whose header is not an image's
            kind = "unreadable_image" if (image_dir / fn).is_file() else "missing_image"
            log.report(kind, idx, fn, "file_name", size)
            continue
        boxes, labels, remap = _parse_boxes(rec, idx, fn, size, rules, log)
        hois = _parse_hois(rec, idx, fn, remap, rules, log)
        out.append(
            ImageAnnotation(
                file_name=fn,
                boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                labels=np.asarray(labels, dtype=np.int64).reshape(-1),
                hois=np.asarray(hois, dtype=np.int64).reshape(-1, 3),
                width=size[0] if size else 0,
                height=size[1] if size else 0,
            )
        )
    if own_log:
        log.flush()
    return out
