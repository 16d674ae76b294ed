"""Decoder cross-attention maps of detected pairs (the paper's Figure 4 view).

``query_attention_maps`` turns the last decoder layer's recorded cross-attention scores
(``hqm.models.attention.RecordAttention``: pre-softmax, (B, T, Q, HW)) into one map per kept
triplet: softmax over the keys, mean over the T heads, reshaped to the (H', W') feature map,
upsampled to the padded input, cropped to the image's resized extent and resized to the original
image. ``attention_grid`` renders one small panel per shown pair (heatmap overlay + the pair).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from hqm.structures import HOIPredictions
from hqm.viz.draw import draw_pairs, draw_predictions, font, group_pairs, to_pil


def query_attention_maps(
    scores: Tensor,
    feat_shape: tuple[int, int],
    padded_size: tuple[int, int],
    input_sizes: Tensor,
    orig_sizes: Tensor,
    queries: list[np.ndarray],
) -> list[np.ndarray]:
    """Per image ``b``, the maps (K_b, H0_b, W0_b) float32 in [0, 1] of the queries ``queries[b]``.

    scores: (B, T, Q, H'W') pre-softmax scores (padded keys at -inf); feat_shape: (H', W');
    padded_size: (H, W) of the padded input batch; input_sizes / orig_sizes: (B, 2) (h, w) of each
    resized input and of each original image. Each map is divided by its maximum.
    """
    probs = scores.float().softmax(-1).mean(1)  # (B, Q, H'W')
    b, q, _ = probs.shape
    probs = probs.view(b, q, *feat_shape)
    out = []
    for i in range(b):
        idx = torch.as_tensor(np.asarray(queries[i], dtype=np.int64), device=probs.device)
        h0, w0 = (int(v) for v in orig_sizes[i])
        if idx.numel() == 0:
            out.append(np.zeros((0, h0, w0), dtype=np.float32))
            continue
        maps = F.interpolate(probs[i, idx][None], size=padded_size, mode="bilinear", align_corners=False)[0]
        hi, wi = (int(v) for v in input_sizes[i])
        maps = F.interpolate(maps[None, :, :hi, :wi], size=(h0, w0), mode="bilinear", align_corners=False)[0]
        maps = maps.clamp(min=0)
        maps = maps / maps.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]
        out.append(maps.cpu().numpy().astype(np.float32))
    return out


def overlay_heatmap(
    image: Image.Image, heat: np.ndarray, alpha: float = 0.55, cmap: str = "jet"
) -> Image.Image:
    """``heat`` (H, W) in [0, 1] coloured with a matplotlib colormap and blended over ``image``."""
    from matplotlib import colormaps

    if heat.shape != (image.height, image.width):
        heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8))
        heat_img = heat_img.resize(image.size, Image.BILINEAR)
        heat = np.asarray(heat_img, dtype=np.float32) / 255.0
    rgba = colormaps[cmap](np.clip(heat, 0, 1))
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
    the image, the pair's boxes and its labels. ``maps`` (K, H0, W0) is aligned with ``preds`` rows
    (as returned by ``HOIDetector.predict(..., return_attention=True)``)."""
    base = to_pil(image, preds.image_size)
    pairs = group_pairs(preds, top_k, threshold)
    kept = preds.filter(threshold)
    # rows of ``kept`` index the filtered order; map them back to rows of ``preds``/``maps``
    order = np.argsort(-preds.scores, kind="stable")
    order = order[preds.scores[order] >= threshold]
    panels = [_fit(draw_predictions(base, preds, top_k=top_k, threshold=threshold, min_side=panel), panel)]
    fnt = font(max(11, panel // 20))
    for k, pair in enumerate(pairs):
        row = int(order[pair["rows"][0]]) if len(order) else 0
        heat = maps[row] if len(maps) > row else np.zeros((base.height, base.width), np.float32)
        tile = overlay_heatmap(base, heat)
        scale = max(1.0, panel / max(1, min(tile.size)))
        tile = tile.resize((round(tile.width * scale), round(tile.height * scale)), Image.BILINEAR)
        draw_pairs(tile, kept, [pair], scale, font_size=max(11, panel // 22))
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
