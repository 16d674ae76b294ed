"""``hqm predict``: run a detector over image files and write pictures and a JSONL file.

Output folder::

    OUT/<image stem>.png        detections drawn (top-k pairs, labels "verb object score")
    OUT/<image stem>_attn.png   with --attn: detections + one cross-attention panel per shown pair
    OUT/predictions.jsonl       one line per image: HOIPredictions.to_json()
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

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
        raise FileNotFoundError(f"no images found for source={source} (a file, a folder or a glob pattern)")
    return files


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output names: the image stems, disambiguated with their parent folder when they collide."""
    stems = [p.stem for p in paths]
    dup = {s for s in stems if stems.count(s) > 1}
    return [f"{p.parent.name}_{p.stem}" if p.stem in dup else p.stem for p in paths]


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
) -> dict:
    """Predict every image of ``source``; write PNGs and ``predictions.jsonl`` into ``out``.

    ``top_k`` bounds the pairs drawn per image (the JSONL keeps every triplet with score >=
    ``threshold``, at most ``eval.max_dets``). Returns {"images", "triplets", "out"}.
    """
    from tqdm import tqdm

    from hqm.viz.attention import attention_grid
    from hqm.viz.draw import draw_predictions, to_pil

    paths = expand_sources(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = dict(zip(map(str, paths), _unique_stems(paths)))
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not progress, dynamic_ncols=True)
    n_trip = 0
    with open(out / "predictions.jsonl", "w") as jsonl:
        for items, preds, maps in detector.iter_predict(
            [str(p) for p in paths],
            threshold=threshold,
            return_attention=attention,
            batch_size=batch_size,
            size=size,
        ):
            for k, ((path, _), pred) in enumerate(zip(items, preds)):
                jsonl.write(pred.to_json() + "\n")
                n_trip += len(pred)
                image = to_pil(path)
                stem = names[str(path)]
                draw_predictions(image, pred, top_k=top_k, threshold=threshold).save(out / f"{stem}.png")
                if attention:
                    attention_grid(image, pred, maps[k], top_k=top_k, threshold=threshold).save(
                        out / f"{stem}_attn.png"
                    )
            bar.update(len(items))
    bar.close()
    return {"images": len(paths), "triplets": n_trip, "out": str(out)}
