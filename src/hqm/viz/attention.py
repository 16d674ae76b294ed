"""Decoder cross-attention maps of detected pairs (the paper's Figure 4 view).

``query_attention_maps`` turns the last decoder layer's recorded cross-attention scores
(``hqm.models.attention.RecordAttention``: pre-softmax, (B, T, Q, HW)) into one map per kept
triplet: softmax over the keys, mean over the T heads, reshaped to the (H', W') feature map and
cropped to the feature cells that cover the image (the encoder's padding mask). Maps stay at that
resolution (tens of cells a side, whatever the photo's size): they are resized only when drawn,
and ``attention_grid`` draws them on panel-sized thumbnails, so memory does not grow with the number
of pairs times the number of pixels. ``upsample_map`` gives a map at any size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from hqm.structures import HOIPredictions
from hqm.viz.draw import draw_pairs, draw_predictions, font, group_pairs, to_pil


def query_attention_maps(scores: Tensor, padding: Tensor, queries: list[np.ndarray]) -> list[np.ndarray]:
    """Per image ``b``, the maps (K_b, h'_b, w'_b) float32 in [0, 1] of the queries ``queries[b]``.

    scores: (B, T, Q, H'W') pre-softmax scores (padded keys at -inf); padding: (B, H', W') bool, True
    on the feature cells of the batch padding (``EncodedImages.mask`` reshaped). Each map covers
    the image's own (h', w') cells (the last row / column may reach past the image edge by less than
    one cell) and is divided by its maximum.
    """
    probs = scores.float().softmax(-1).mean(1)  # (B, Q, H'W')
    b, q, _ = probs.shape
    probs = probs.view(b, q, *padding.shape[-2:])
    out = []
    for i in range(b):
        idx = torch.as_tensor(np.asarray(queries[i], dtype=np.int64), device=probs.device)
        valid = ~padding[i]
        hi, wi = int(valid.any(1).sum()), int(valid.any(0).sum())
        maps = probs[i, idx, :hi, :wi].clamp(min=0)
        maps = maps / maps.flatten(1).amax(1).clamp(min=1e-12)[:, None, None] if len(idx) else maps
        out.append(maps.cpu().numpy().astype(np.float32))
    return out


def upsample_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h', w') map in [0, 1] resized (bilinear) to ``size`` (h, w); float32 in [0, 1]."""
    h, w = size
    if heat.shape == (h, w):
        return heat.astype(np.float32)
    img = Image.fromarray(np.clip(heat, 0, 1).astype(np.float32), "F").resize((w, h), Image.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32), 0, 1)


def overlay_heatmap(
    image: Image.Image, heat: np.ndarray, alpha: float = 0.55, cmap: str = "jet"
) -> Image.Image:
    """``heat`` (H, W) in [0, 1] coloured with a matplotlib colormap and blended over ``image``."""
    from matplotlib import colormaps

    heat = upsample_map(heat, (image.height, image.width))
    rgba = colormaps[cmap](heat)
    colored = Image.fromarray((rgba[..., :3] * 255).astype(np.uint8))
    return Image.blend(image.convert("RGB"), colored, alpha)


def attention_grid(
    image: Any,
    preds: HOIPredictions,
    maps: np.ndarray,
    top_k: int | None = 6,
    threshold: float = 0.0,
    panel: int = 256,
    cols: int = 4,
) -> Image.Image:
    """A grid: the detections, then one panel per shown pair: its query's cross-attention map over
    the image, the pair's boxes and its labels. ``maps[k]`` (any (h, w), e.g. the feature-map
    resolution of ``HOIDetector.predict(..., return_attention=True)``) belongs to row ``k`` of
    ``preds``. Everything is drawn on a thumbnail of ``panel`` pixels: the cost does not depend on
    the image's size beyond decoding it once."""
    base = to_pil(image, preds.image_size, copy=False)
    h0 = preds.image_size[0] if preds.image_size[0] > 0 else base.height
    s = panel / max(base.size)
    thumb = base.resize((max(1, round(base.width * s)), max(1, round(base.height * s))), Image.BILINEAR)
    del base
    pairs = group_pairs(preds, top_k, threshold)
    kept = preds.filter(threshold)
    # rows of ``kept`` index the filtered order; map them back to rows of ``preds``/``maps``
    order = np.argsort(-preds.scores, kind="stable")
    order = order[preds.scores[order] >= threshold]
    panels = [_fit(draw_predictions(thumb, preds, top_k=top_k, threshold=threshold, min_side=panel), panel)]
    fnt = font(max(11, panel // 20))
    for k, pair in enumerate(pairs):
        row = int(order[pair["rows"][0]]) if len(order) else 0
        heat = maps[row] if len(maps) > row else np.zeros((1, 1), np.float32)
        tile = overlay_heatmap(thumb, heat)
        up = max(1.0, panel / max(1, min(tile.size)))  # labels legible on wide or tall images
        tile = tile.resize((round(tile.width * up), round(tile.height * up)), Image.BILINEAR)
        draw_pairs(tile, kept, [pair], tile.height / h0, font_size=max(11, panel // 22))
        tile = _fit(tile, panel)
        ImageDraw.Draw(tile).text((4, panel - panel // 16 - 6), f"#{k + 1}", fill=(255, 255, 255), font=fnt)
        panels.append(tile)
    n = len(panels)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    grid = Image.new("RGB", (cols * panel + (cols - 1) * 4, rows * panel + (rows - 1) * 4), (255, 255, 255))
    for i, p in enumerate(panels):
        grid.paste(p, ((i % cols) * (panel + 4), (i // cols) * (panel + 4)))
    return grid


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Letterbox ``img`` into a ``size`` x ``size`` square (black bars)."""
    s = size / max(img.size)
    im = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.BILINEAR)
    out = Image.new("RGB", (size, size), (0, 0, 0))
    out.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return out
