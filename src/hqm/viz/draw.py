"""Drawing HOI triplets on an image (PIL ImageDraw).

One detected pair = the human box (white, black rim), the object box (coloured by object class), a
line joining the two box centres and one label per verb ("verb object score"). Triplets of the same
decoder query (same pair, several verbs) are drawn once with stacked labels. Small images are
upscaled for legibility (``min_side``); boxes are scaled with them.
"""

from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hqm.data.images import as_image, pil_from
from hqm.errors import UsageError
from hqm.structures import HOIPredictions

HUMAN_COLOR = (255, 255, 255)  # white with a black rim: never confused with a class colour


def class_color(index: int) -> tuple[int, int, int]:
    """A stable, well separated colour per object class (golden-ratio hue steps)."""
    h = (index * 0.618033988749895 + 0.08) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def to_pil(image: Any, size: tuple[int, int] | None = None, copy: bool = True) -> Image.Image:
    """Any input ``HOIDetector.predict`` accepts (path, PIL image, array, tensor; decoded by
    ``hqm.data.images.as_image``: EXIF orientation applied) -> an RGB PIL image, a new one unless
    ``copy=False`` (then an RGB PIL input may come back as is: read it, do not draw on it).
    ``None`` -> a grey canvas of ``size`` (h, w)."""
    if image is None:
        h, w = size if size and size[0] > 0 else (480, 640)
        return Image.new("RGB", (int(w), int(h)), (128, 128, 128))
    rgb = pil_from(as_image(image))
    return rgb.copy() if copy and rgb is image else rgb


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def group_pairs(
    preds: HOIPredictions, top_k: int | None, threshold: float, labels_per_pair: int = 3
) -> list[dict]:
    """The ``top_k`` best pairs (triplets grouped by decoder query, or by identical boxes when the
    query is unknown), each ``{"sub", "obj", "obj_label", "score", "labels": [(verb, score)]}``."""
    kept = preds.filter(threshold)
    pairs: dict[Any, dict] = {}
    for i in range(len(kept)):
        key = (
            int(kept.query_index[i])
            if kept.query_index is not None
            else (tuple(np.round(kept.sub_boxes[i], 1)), tuple(np.round(kept.obj_boxes[i], 1)))
        )
        if key not in pairs:
            if top_k is not None and len(pairs) >= top_k:
                continue
            pairs[key] = {
                "sub": kept.sub_boxes[i],
                "obj": kept.obj_boxes[i],
                "obj_label": int(kept.obj_labels[i]),
                "score": float(kept.scores[i]),
                "labels": [],
                "query": key,
                "rows": [],
            }
        pair = pairs[key]
        pair["rows"].append(i)
        if len(pair["labels"]) < labels_per_pair:
            pair["labels"].append((int(kept.verb_labels[i]), float(kept.scores[i])))
    return list(pairs.values())


def _names(preds: HOIPredictions, verb: int, obj: int) -> tuple[str, str]:
    if preds.meta is None:
        return f"verb{verb}", f"obj{obj}"
    return preds.meta.verb_names[verb], preds.meta.object_names[obj]


def draw_pairs(
    canvas: Image.Image, preds: HOIPredictions, pairs: list[dict], scale: float, font_size: int | None = None
) -> Image.Image:
    """Draw ``pairs`` (from :func:`group_pairs`) on ``canvas`` (boxes multiplied by ``scale``)."""
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    lw = max(2, round(min(w, h) / 200))
    fnt = font(font_size or max(11, round(min(w, h) / 32)))
    for pair in reversed(pairs):  # best pair drawn last, on top
        color = class_color(pair["obj_label"])
        sub = [float(v) * scale for v in pair["sub"]]
        obj = [float(v) * scale for v in pair["obj"]]
        has_obj = any(v != 0 for v in obj)
        draw.rectangle([sub[0] - 1, sub[1] - 1, sub[2] + 1, sub[3] + 1], outline=(0, 0, 0), width=lw + 2)
        draw.rectangle(sub, outline=HUMAN_COLOR, width=lw)
        if has_obj:
            draw.rectangle(obj, outline=color, width=lw)
            c1 = ((sub[0] + sub[2]) / 2, (sub[1] + sub[3]) / 2)
            c2 = ((obj[0] + obj[2]) / 2, (obj[1] + obj[3]) / 2)
            draw.line([c1, c2], fill=color, width=lw)
            r = lw + 1
            for cx, cy in (c1, c2):
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
        x, y = (obj[0], obj[1]) if has_obj else (sub[0], sub[1])
        texts = [" ".join(_names(preds, v, pair["obj_label"])) + f" {s:.2f}" for v, s in pair["labels"]]
        heights = [draw.textbbox((0, 0), t, font=fnt)[3] + 2 for t in texts]
        y = max(0, y - sum(heights)) if y - sum(heights) >= 0 else y + lw
        for t, th in zip(texts, heights):
            box = draw.textbbox((x + lw, y), t, font=fnt)
            draw.rectangle([box[0] - 2, box[1] - 1, box[2] + 2, box[3] + 1], fill=color)
            draw.text((x + lw, y), t, fill=(0, 0, 0) if sum(color) > 380 else (255, 255, 255), font=fnt)
            y += th
    return canvas


class ImageMismatchError(UsageError, ValueError):
    """The image given to draw on has another shape than the image the predictions were made on."""


def scaled_canvas(image: Any, preds: HOIPredictions, min_side: int) -> tuple[Image.Image, float]:
    """The image as RGB, upscaled so that its short side is at least ``min_side``; and the scale."""
    canvas = to_pil(image if image is not None else _default_image(preds), preds.image_size)
    h, w = preds.image_size
    if image is not None and h > 0 and w > 0:  # a resized copy is fine; another shape moves every box
        expected_width = canvas.height * w / h
        if abs(canvas.width - expected_width) > max(2.0, 0.02 * expected_width):  # 2 px: rounding
            raise ImageMismatchError(
                f"the image to draw on is {canvas.width} x {canvas.height} pixels but the predictions of "
                f"{preds.file_name or 'this image'} are for a {w} x {h} image (another shape): draw on "
                "the image they were predicted on (or a resized copy of it)"
            )
    scale = max(1.0, min_side / max(1, min(canvas.size)))
    if scale > 1.0:
        canvas = canvas.resize((round(canvas.width * scale), round(canvas.height * scale)), Image.BILINEAR)
    if preds.image_size[0] > 0 and canvas.size[1] / scale != preds.image_size[0]:
        scale = canvas.size[1] / preds.image_size[0]  # image given at another size than predicted on
    return canvas, scale


def _default_image(preds: HOIPredictions) -> str | None:
    return preds.file_name if preds.file_name and Path(preds.file_name).is_file() else None


def draw_predictions(
    image: Any, preds: HOIPredictions, top_k: int | None = 10, threshold: float = 0.0, min_side: int = 480
) -> Image.Image:
    """The ``top_k`` best pairs with score >= ``threshold`` drawn on ``image`` (path, PIL image,
    HxWx3 uint8 array, (3, H, W) tensor in [0, 1], or None: the predictions' file, else a grey
    canvas). Returns a new RGB PIL image (short side >= ``min_side``). Raises
    ``ImageMismatchError`` (a ``ValueError``) for an image of another shape than the one predicted
    on (aspect ratios more than 2% apart)."""
    canvas, scale = scaled_canvas(image, preds, min_side)
    return draw_pairs(canvas, preds, group_pairs(preds, top_k, threshold), scale)
