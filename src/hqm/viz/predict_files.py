"""``hqm predict``: run a detector over image files and write pictures and a JSONL file.

Output folder::

    OUT/<name>.png        detections drawn (top-k pairs, labels "verb object score")
    OUT/<name>_attn.png   with --attn: detections + one cross-attention panel per shown pair
    OUT/predictions.jsonl one line per image: HOIPredictions.to_json() (``file_name``: the input path)

``<name>`` is the image's stem; inputs whose output files would coincide (``a.jpg`` and ``a.png``,
``x.jpg`` and ``x_attn.jpg`` with --attn, ``d1/a.jpg`` and ``d2/a.jpg``) all get longer names
(``a_jpg``, ``a_png``; then ``<folder>_<stem>_<ext>``; then an index), so no input's results
overwrite another's. ``OUT`` must not be a folder holding input images (the source folder): an
input is never overwritten. Output files left there by an earlier run (``predictions.jsonl`` or a
picture this run would write) are refused unless ``overwrite`` (``hqm predict --overwrite``); other
files in ``OUT`` are never touched. Images are decoded with EXIF orientation applied
(``hqm.data.images``); a file that cannot be decoded is skipped with one warning line and counted.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

from hqm.config import ConfigError
from hqm.errors import NotFoundError, UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_sources(source: str | os.PathLike) -> list[Path]:
    """A file, a folder (its images, sorted, not recursive) or a glob pattern -> image paths."""
    p = Path(source)
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


def check_existing_outputs(out: Path, stems: list[str], attention: bool, overwrite: bool) -> None:
    """Refuse (``UsageError``) when ``out`` already holds a file this run would write, unless
    ``overwrite``: ``predictions.jsonl``, ``<name>.png`` and, with ``attention``, ``<name>_attn.png``."""
    if overwrite or not out.is_dir():
        return
    files = (
        ["predictions.jsonl"]
        + [f"{s}.png" for s in stems]
        + ([f"{s}_attn.png" for s in stems] if attention else [])
    )
    found = [f for f in files if (out / f).exists()]
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise UsageError(
            f"out={out} already holds {shown} from an earlier run: choose another folder, or pass "
            "--overwrite to replace them"
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
    ``threshold``, at most ``eval.max_dets``). Files that cannot be decoded are skipped with a
    warning. Returns {"images" (predicted), "skipped", "triplets", "out", "renamed": {input: name}}.
    Raises ``ValueError`` for an ``out`` that holds input images or is a file, ``UsageError`` when it
    holds output files of an earlier run and ``overwrite`` is False.
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
    out.mkdir(parents=True, exist_ok=True)
    names = dict(zip(map(str, paths), stems))
    bar = Progress(len(paths), "predict", "images", enabled=progress)
    n_img = n_trip = 0
    with open(out / "predictions.jsonl", "w") as jsonl:
        for items, preds, maps in detector.iter_predict(
            [str(p) for p in paths],
            threshold=threshold,
            return_attention=attention,
            batch_size=batch_size,
            size=size,
            skip_unreadable=True,
        ):
            for k, ((path, _), pred) in enumerate(zip(items, preds)):
                jsonl.write(pred.to_json() + "\n")
                n_trip += len(pred)
                image = to_pil(path, copy=False)
                stem = names[str(path)]
                draw_predictions(image, pred, top_k=top_k, threshold=threshold).save(out / f"{stem}.png")
                if attention:
                    attention_grid(image, pred, maps[k], top_k=top_k, threshold=threshold).save(
                        out / f"{stem}_attn.png"
                    )
            n_img += len(items)
            bar.update(n_img)
    bar.close()
    renamed = {str(p): n for p, n in zip(paths, stems) if n != p.stem}
    return {
        "images": n_img,
        "skipped": len(paths) - n_img,
        "triplets": n_trip,
        "out": str(out),
        "renamed": renamed,
    }
