"""``hqm predict``: run a detector over image files and write pictures and a JSONL file.

Output folder::

    OUT/<name>.png        detections drawn (top-k pairs, labels "verb object score")
    OUT/<name>_attn.png   with --attn: detections + one cross-attention panel per shown pair
    OUT/predictions.jsonl one line per image: HOIPredictions.to_json() (``file_name``: the input path)

``<name>`` is the image's stem; inputs whose output files would coincide (``a.jpg`` and ``a.png``,
``x.jpg`` and ``x_attn.jpg`` with --attn, ``d1/a.jpg`` and ``d2/a.jpg``) all get longer names
(``a_jpg``, ``a_png``; then ``<folder>_<stem>_<ext>``; then an index), so no input's results
overwrite another's. ``OUT`` must not be a folder holding input images (the source folder). Files
already at the names this run would write (``predictions.jsonl`` or a picture) are refused unless
``overwrite`` (``hqm predict --overwrite``); a symbolic link or a folder at such a name is always
refused. Every output is written to a new temporary file in ``OUT`` and moved onto its name
(``os.replace``): nothing is written through a link, and a hard link's other names (an input
image, a file elsewhere) keep their content. Other files in ``OUT`` are never touched. Images are
decoded with EXIF orientation applied (``hqm.data.images``); a file that cannot be decoded, or an
image too elongated for the resize, is skipped with one warning line and counted. A run that
predicts no image writes no ``predictions.jsonl`` and removes the folders it created.
"""

from __future__ import annotations

import glob
import itertools
import os
from collections import Counter
from pathlib import Path

from hqm.config import ConfigError
from hqm.errors import NotFoundError, UsageError, output_error, write_fault
from hqm.output import make_dirs, open_new, remove_empty_dirs, replacing, temp_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_sources(source: str | os.PathLike) -> list[Path]:
    """A file, a folder (its images, sorted, not recursive) or a glob pattern -> image paths.
    Raises ``NotFoundError`` when ``source`` does not exist (and is no pattern) or holds no image."""
    p = Path(source)
    if not p.exists() and not glob.has_magic(str(source)):
        raise NotFoundError(f"source={source} does not exist: give an image file, a folder or a glob pattern")
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(
            Path(q)
            for q in glob.glob(str(source), recursive=True)
            if Path(q).suffix.lower() in IMAGE_SUFFIXES
        )
    if not files:
        raise NotFoundError(f"no images found for source={source} (a file, a folder or a glob pattern)")
    return files


def output_names(paths: list[Path], attention: bool = False) -> list[str]:
    """One output name per input such that no two inputs share an output file (``<name>.png``,
    ``<name>_attn.png`` with ``attention``) and none is ``predictions.jsonl``. Inputs in conflict all
    move to the next, longer form: stem -> stem_ext -> folder_stem_ext -> folder_stem_ext_index."""
    forms = [
        lambda i, p: p.stem,
        lambda i, p: f"{p.stem}_{p.suffix[1:].lower()}",
        lambda i, p: f"{p.parent.name}_{p.stem}_{p.suffix[1:].lower()}",
        lambda i, p: f"{p.parent.name}_{p.stem}_{p.suffix[1:].lower()}_{i}",  # unique by the index
    ]

    def files(name: str) -> list[str]:
        return [f"{name}.png"] + ([f"{name}_attn.png"] if attention else [])

    level = [0] * len(paths)
    while True:
        names = [forms[level[i]](i, p) for i, p in enumerate(paths)]
        claims = Counter(f for n in names for f in files(n))
        clash = [i for i, n in enumerate(names) if any(claims[f] > 1 for f in files(n))]
        if not clash:
            return names
        for i in clash:
            level[i] = min(level[i] + 1, len(forms) - 1)


def check_output_dir(out: Path, paths: list[Path]) -> None:
    """Refuse an ``out`` that is a file or a folder holding input images (writing there could replace
    an input: ``a.png`` drawn over the picture ``a.png``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out={out} is a file; give a folder for the predictions")
    target = out.resolve()
    inside = [p for p in paths if p.resolve().parent == target]
    if inside:
        raise ConfigError(
            f"out={out} holds the input images (e.g. {inside[0]}); writing the predictions there could "
            f"replace them: choose another folder, e.g. out={out.resolve().name}_hoi"
        )


def output_files(stems: list[str], attention: bool) -> list[str]:
    """The file names a run writes into ``out``: ``predictions.jsonl``, ``<name>.png`` and, with
    ``attention``, ``<name>_attn.png``."""
    return (
        ["predictions.jsonl"]
        + [f"{s}.png" for s in stems]
        + ([f"{s}_attn.png" for s in stems] if attention else [])
    )


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_existing_outputs(out: Path, stems: list[str], attention: bool, overwrite: bool) -> None:
    """Raise ``UsageError`` (one line) when a name this run would write in ``out``
    (:func:`output_files`) is a symbolic link (dangling or not: it leads outside ``out``) or not a
    plain file (a folder), and, unless ``overwrite``, when a file is already there."""
    if not out.is_dir():
        return
    found = [f for f in output_files(stems, attention) if os.path.lexists(out / f)]
    links = [f for f in found if (out / f).is_symlink()]
    if links:
        raise UsageError(
            f"out={out}: {_listed([f'{f} -> {os.readlink(out / f)}' for f in links])} "
            f"{'is a symbolic link' if len(links) == 1 else 'are symbolic links'}, where this run would "
            f"write its own file (never through a link): remove {'it' if len(links) == 1 else 'them'} or "
            "choose another folder"
        )
    odd = [f for f in found if not (out / f).is_file()]
    if odd:
        raise UsageError(
            f"out={out}: {_listed(odd)} {'is' if len(odd) == 1 else 'are'} not a plain file (a folder?), "
            "where this run would write a file: move it away or choose another folder"
        )
    if found and not overwrite:
        new = next(f"{out}_{k}" for k in itertools.count(2) if not os.path.lexists(f"{out}_{k}"))
        raise UsageError(
            f"out={out} already holds {_listed(found)}: this run would write "
            f"{'a file of that name' if len(found) == 1 else 'files of those names'}. Predict into a new "
            "folder (e.g. "
            f"out={new}), or pass --overwrite to replace {'it' if len(found) == 1 else 'them'}"
        )


def predict_to_dir(
    detector,
    source: str | os.PathLike,
    out: str | os.PathLike,
    threshold: float = 0.0,
    top_k: int = 10,
    attention: bool = False,
    batch_size: int | None = None,
    size: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Predict every image of ``source``; write PNGs and ``predictions.jsonl`` into ``out``.

    ``top_k`` bounds the pairs drawn per image (the JSONL keeps every triplet with score >=
    ``threshold``, at most ``eval.max_dets``). Files that cannot be decoded, and images too elongated
    for the resize, are skipped with a warning. When no image is predicted, no ``predictions.jsonl``
    is written (an earlier one is kept) and the folders this call created are removed. Returns
    {"images" (predicted), "skipped", "triplets", "out", "renamed": {input: name}}.
    Raises ``NotFoundError`` when ``source`` does not exist or holds no image; ``ConfigError`` (a
    ``ValueError``) for an ``out`` that holds input images or is a file, or a refused ``size``;
    ``UsageError`` when a name it would write in ``out`` is a link or a folder, or already a file and
    ``overwrite`` is False, or ``out`` cannot be created there; ``OutputError`` when the disk refuses
    a write (permission, space).
    """
    from hqm.progress import Progress
    from hqm.viz.attention import attention_grid
    from hqm.viz.draw import draw_predictions, to_pil

    paths = expand_sources(source)
    out = Path(out)
    check_output_dir(out, paths)
    stems = output_names(paths, attention)
    check_existing_outputs(out, stems, attention, overwrite)
    detector.input_size(size)  # a refused size (too large) before anything is written
    created = make_dirs(out, "out")
    names = dict(zip(map(str, paths), stems))
    bar = Progress(len(paths), "predict", "images", enabled=progress)
    jsonl_path = out / "predictions.jsonl"
    jsonl_tmp = temp_path(jsonl_path)
    n_img = n_trip = 0
    try:
        with open_new(jsonl_tmp, "w") as jsonl:
            for items, preds, maps in detector.iter_predict(
                [str(p) for p in paths],
                threshold=threshold,
                return_attention=attention,
                batch_size=batch_size,
                size=size,
                skip_unreadable=True,
            ):
                for k, ((path, _), pred) in enumerate(zip(items, preds)):
                    image = to_pil(path, copy=False)
                    stem = names[str(path)]
                    with replacing(out / f"{stem}.png") as f:
                        draw_predictions(image, pred, top_k=top_k, threshold=threshold).save(f, format="PNG")
                    if attention:
                        with replacing(out / f"{stem}_attn.png") as f:
                            grid = attention_grid(image, pred, maps[k], top_k=top_k, threshold=threshold)
                            grid.save(f, format="PNG")
                    jsonl.write(pred.to_json() + "\n")  # listed once its pictures are written
                    n_img += 1
                    n_trip += len(pred)
                bar.update(n_img)
    except OSError as e:
        if write_fault(e):
            raise output_error(f"out={out}", e, "write to") from None
        raise
    finally:
        bar.close()
        if n_img:  # also after a failure: the file lists the images whose pictures were written
            os.replace(jsonl_tmp, jsonl_path)
        else:
            jsonl_tmp.unlink(missing_ok=True)
            remove_empty_dirs(created)
    renamed = {str(p): n for p, n in zip(paths, stems) if n != p.stem}
    return {
        "images": n_img,
        "skipped": len(paths) - n_img,
        "triplets": n_trip,
        "out": str(out),
        "renamed": renamed,
    }
