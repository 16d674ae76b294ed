"""Dataset entry points: vocabulary, annotations and ``HOIDataset`` by dataset name or config.

``dataset`` is one of ``hico_det | vcoco | hoia | synthetic``; ``synthetic`` is the HICO-DET loader on a
root written by ``hqm.data.synthetic.generate`` (its ``annotations/meta.json`` gives the vocabulary).

Loading never writes: a root without the requested dataset raises ``DatasetError`` naming the missing
file. The synthetic benchmark is generated only by ``hqm synth`` and by ``ensure_synthetic``, which
the trainer calls when ``data.generate`` is true (``hqm demo`` sets it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

from hqm.config import DataConfig
from hqm.data import hico_det, hoia, vcoco
from hqm.data.dataset import HOIDataset
from hqm.data.records import DatasetError, DatasetNotFoundError, IssueLog, logger, parse_records
from hqm.data.transforms import build_transforms
from hqm.structures import DatasetMeta, ImageAnnotation

LOADERS: dict[str, ModuleType] = {"hico_det": hico_det, "vcoco": vcoco, "hoia": hoia, "synthetic": hico_det}
SPLITS = ("train", "test")


def _loader(dataset: str) -> ModuleType:
    if dataset not in LOADERS:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {', '.join(LOADERS)}")
    return LOADERS[dataset]


def load_meta(dataset: str, root: str | os.PathLike, root_option: str = "data.root") -> DatasetMeta:
    """Class vocabulary and validity matrix of ``dataset`` stored under ``root``.

    Raises ``DatasetNotFoundError`` when a synthetic benchmark's vocabulary file is missing; its
    message names the root as ``root_option`` (the option the user set it with: ``data.root`` in a
    config, ``--root`` for ``hqm eval-file``)."""
    _check_root_folder(root, root_option)
    if dataset == "synthetic" and not (Path(root) / hico_det.CUSTOM_VOCABULARY).is_file():
        train_hint = (
            ", or train with data.generate=true (what `hqm demo` does)" if root_option == "data.root" else ""
        )
        raise DatasetNotFoundError(
            f"no synthetic benchmark at {_root_words(root_option, root)}: "
            f"{Path(root) / hico_det.CUSTOM_VOCABULARY} not found; write one with `hqm synth --out {root}`"
            + train_hint
        )
    return _loader(dataset).load_meta(Path(root), name=dataset)


def _check_root_folder(root: str | os.PathLike, root_option: str) -> None:
    """Raise ``DatasetNotFoundError`` when ``root`` exists but is no folder (a file given as root)."""
    if os.path.exists(root) and not os.path.isdir(root):
        raise DatasetNotFoundError(
            f"{_root_words(root_option, root)} is a file, not a dataset folder: give the folder that "
            "holds annotations/ and images/"
        )


def _root_words(root_option: str, root: str | os.PathLike) -> str:
    """``data.root=R`` / ``--root R``: the root as the user wrote it; a relative one says what it is
    relative to (the current folder: a checkpoint's relative data.root read from elsewhere misses)."""
    words = f"{root_option}={root}" if not root_option.startswith("-") else f"{root_option} {root}"
    return words if Path(root).is_absolute() else f"{words} (in the current folder {Path.cwd()})"


def load_annotations(
    dataset: str,
    root: str | os.PathLike,
    split: str,
    on_bad_record: str = "error",
    check_images: bool = True,
    log: IssueLog | None = None,
    root_option: str = "data.root",
) -> list[ImageAnnotation]:
    """Parsed and validated records of ``split`` ("train" | "test").

    Boxes are absolute pixel xyxy (clamped to the image when ``check_images`` read its size), labels
    contiguous object indices, HOI rows ``[subject, object (-1: no object), verb]`` in file order.
    ``on_bad_record``: "error" raises ``DatasetError`` naming file, record and field; "skip" drops the
    bad part and logs one summary warning (logger ``hqm.data``); ``log``: collect the problems in
    this ``IssueLog`` instead (see ``parse_records``). A missing annotation file raises
    ``DatasetNotFoundError`` naming the root as ``root_option`` (see ``load_meta``).
    """
    _check_root_folder(root, root_option)
    image_folder, ann_file = split_paths(dataset, root, split)
    if not ann_file.is_file():
        img, ann = _loader(dataset).SPLITS[split]
        raise DatasetNotFoundError(
            f"no {dataset} dataset at {_root_words(root_option, root)}: {ann} not found there "
            f"(layout: {img}/ and {ann}; see the README's Datasets section)"
        )
    rules = _loader(dataset).record_rules(Path(root), split)
    return parse_records(ann_file, image_folder, rules, on_bad_record, check_images, log)


def check_split_usable(anns: list[ImageAnnotation], ann_file: Path, split: str, hint: bool = True) -> None:
    """Raise ``DatasetError`` naming ``ann_file`` when ``split`` has no record left (an empty list,
    or ``data.on_bad_record=skip`` dropped every one), or is the training split and has no HOI label
    left (nothing to learn from: e.g. every box dropped). ``hqm check-data`` reports the same
    (``hint=False``: without the pointer to itself)."""
    problem = None
    if not anns:
        problem = "no usable records (the list is empty, or data.on_bad_record=skip dropped every one)"
    elif split == "train" and not any(len(a.hois) for a in anns):
        problem = f"{len(anns)} records but no HOI label (nothing to learn from: all dropped?)"
    if problem is not None:
        tail = "; `hqm check-data` lists the problems" if hint else ""
        raise DatasetError(f"{ann_file}: the {split} split has {problem}{tail}")


def split_paths(dataset: str, root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """(image directory, annotation file) of ``split`` ("train" | "test"); each dataset module names
    them in its ``SPLITS`` table."""
    splits = _loader(dataset).SPLITS
    if split not in splits:
        raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(splits)}")
    img, ann = splits[split]
    return Path(root) / img, Path(root) / ann


def dataset_folder_holding(
    folder: str | os.PathLike, dataset: str, root: str | os.PathLike
) -> tuple[Path, str] | None:
    """The data set folder that ``folder`` (where an output would be written) is or lies in, and how
    to name it; None when it is outside them. The data set's folders: ``root`` itself (only when
    ``folder`` is ``root``: other folders under it, e.g. ``root/runs``, are not the data set's) and,
    with everything under them, the image and annotation folders of both splits and the image
    folders' parents (``images/``). Keeps ``hqm train``'s run folder and ``hqm eval
    --save-predictions`` away from the user's data (resolved paths: links and ``..`` too)."""
    top = Path(root).resolve()
    folders = {top}
    for split in SPLITS:
        images, annotations = split_paths(dataset, root, split)
        folders |= {images.resolve(), images.parent.resolve(), annotations.parent.resolve()}
    where = Path(folder).resolve()
    inside = next((f for f in sorted(folders) if where == f or (f != top and f in where.parents)), None)
    if inside is None:
        return None
    return inside, "data.root" if inside == top else f"the data set's folder {inside}"


def file_ids(dataset: str, root: str | os.PathLike) -> tuple[list[int], int]:
    """How annotation / prediction files spell classes: (category id of every contiguous object
    class, verb id offset: file verb id = contiguous verb + offset)."""
    rules = _loader(dataset).record_rules(Path(root), "test")
    ids = sorted(rules.object_index, key=rules.object_index.get)
    return ids, rules.verb_offset


def image_dir(dataset: str, root: str | os.PathLike, split: str) -> Path:
    """Folder holding the images of ``split``."""
    return split_paths(dataset, root, split)[0]


def synthetic_ready(root: str | Path) -> bool:
    """True when ``root`` holds a complete synthetic benchmark: its vocabulary, both annotation files
    and, when the generator marked it, a finished generation."""
    from hqm.data.synthetic import read_marker

    root = Path(root)
    files = [hico_det.CUSTOM_VOCABULARY] + [hico_det.SPLITS[s][1] for s in SPLITS]
    mark = read_marker(root)
    return all((root / f).is_file() for f in files) and (mark is None or bool(mark["complete"]))


def check_synthetic_preset(root: str | os.PathLike, preset: str) -> None:
    """Raise ``DatasetError`` when ``root`` holds a complete synthetic benchmark that the generator
    marked with another preset than ``preset`` (what ``ensure_synthetic`` would silently reuse)."""
    from hqm.data.synthetic import read_marker

    mark = read_marker(root) if synthetic_ready(root) else None
    if mark is not None and mark["preset"] != preset:
        raise DatasetError(
            f"{root} holds the synthetic benchmark of preset {mark['preset']!r} "
            f"({mark.get('train_size', '?')} training / {mark.get('test_size', '?')} test images), not "
            f"data.synth_preset={preset}: give another data.root, or set "
            f"data.synth_preset={mark['preset']} to train on it"
        )


def ensure_synthetic(root: str | os.PathLike, preset: str) -> Path:
    """Generate the synthetic benchmark with ``preset`` into ``root`` unless it is already there.

    A complete benchmark that the generator marked with another preset raises ``DatasetError`` (a
    demo would otherwise train and report on, say, the 16 images of the ``tiny`` preset in silence).

    Writes only into an absent or empty ``root`` or an unfinished generation of its own (see
    ``hqm.data.synthetic.generate``); a ``root`` holding other files raises ``DatasetError``. An
    absent or empty ``root`` is filled through a temporary sibling folder renamed into place, so
    concurrent processes (several ranks, several test workers) never read a half-written root.
    """
    from hqm.data.synthetic import generate

    root = Path(root)
    check_synthetic_preset(root, preset)
    if synthetic_ready(root):
        return root
    logger.info(f"generating the synthetic benchmark (preset {preset}) into {root}")
    if root.exists() and any(root.iterdir()):
        return generate(root, preset)  # refuses unless the generator made this folder
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        generate(tmp, preset)
        try:
            if root.exists():
                root.rmdir()  # empty: checked above
            tmp.rename(root)
        except OSError:
            if not synthetic_ready(root):  # not a lost race with another process
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def build_meta(cfg_data: DataConfig) -> DatasetMeta:
    """``load_meta`` for the ``data`` config (never generates data)."""
    return load_meta(cfg_data.dataset, cfg_data.root)


def build_dataset(cfg_data: DataConfig, split: str, train: bool) -> HOIDataset:
    """``HOIDataset`` of ``split`` with train (random) or test (deterministic) transforms.

    Raises ``DatasetError`` naming the missing file when ``data.root`` holds no such dataset (it
    never generates one: see ``ensure_synthetic``). With ``data.synth_stream`` the synthetic training
    split is an endless stream of fresh images (``hqm.data.synthetic_stream.SyntheticStream``).
    """
    meta = build_meta(cfg_data)
    if cfg_data.synth_stream and split == "train":
        if cfg_data.dataset != "synthetic":
            raise DatasetError(f"data.synth_stream needs data.dataset=synthetic (got {cfg_data.dataset})")
        from hqm.data.synthetic_stream import SyntheticStream

        return SyntheticStream(cfg_data.root, meta, build_transforms(cfg_data, train))
    anns = load_annotations(cfg_data.dataset, cfg_data.root, split, cfg_data.on_bad_record)
    check_split_usable(anns, split_paths(cfg_data.dataset, cfg_data.root, split)[1], split)
    return HOIDataset(
        anns, meta, image_dir(cfg_data.dataset, cfg_data.root, split), build_transforms(cfg_data, train)
    )
