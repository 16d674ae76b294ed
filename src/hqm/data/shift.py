"""Evaluation on moved content (``eval.shift``): people and objects away from where training saw them.

The motivation of Hard-Positive Query Mining (Zhong et al., ECCV 2022, section 1 and Fig. 1) is that
a DETR-style HOI detector's queries learn the *positions* where humans and objects appear in
training, and so fail when they appear elsewhere. ``eval.shift = m`` (a magnitude in [0, 1]) measures
that: every test image's content is rescaled about the image centre by a factor s and translated by
(dx, dy), drawn per image from a generator seeded by ``(eval.shift_seed, record index)`` (the same
images move the same way for every model):

* s = (1 + m) ** u, u ~ U(-1, 1): from 1 / (1 + m) (shrunk) to 1 + m (zoomed in, edges cropped);
* (dx, dy) = (m / 2) * (W cos a, H sin a), a ~ U(0, 2 pi): up to half the image at m = 1.

The canvas keeps its size (W, H); uncovered pixels take the image's mean colour. Each annotated box
is moved with the image (x' = s (x - W/2) + W/2 + dx, same for y; pixel-edge xyxy coordinates, the
convention of PIL's affine transform) and clipped to the canvas. A ground-truth pair whose human box,
or existing object box, keeps less than ``MIN_VISIBLE`` of its moved area inside the canvas is no
longer gradable and is dropped from the ground truth; the count is logged. ``m = 0`` is the identity.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageStat

from hqm.data.dataset import HOIDataset
from hqm.structures import ImageAnnotation

LOGGER = logging.getLogger("hqm.data")

#: a moved box keeping less than this fraction of its area inside the image drops its pairs
MIN_VISIBLE = 0.5


@dataclass(frozen=True)
class ContentShift:
    """Scale ``scale`` about the centre of a ``width`` x ``height`` image, then move by ``dx``, ``dy``
    pixels."""

    scale: float
    dx: float
    dy: float
    width: int
    height: int

    def apply(self, boxes: np.ndarray) -> np.ndarray:
        """(N, 4) pixel xyxy -> the moved boxes (N, 4), not clipped."""
        cx, cy = self.width / 2.0, self.height / 2.0
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.empty_like(b)
        out[:, 0::2] = self.scale * (b[:, 0::2] - cx) + cx + self.dx
        out[:, 1::2] = self.scale * (b[:, 1::2] - cy) + cy + self.dy
        return out


def draw_shift(magnitude: float, width: int, height: int, seed: int, index: int) -> ContentShift:
    """The shift of record ``index`` (see the module docstring); deterministic in (seed, index)."""
    if not 0.0 <= magnitude <= 1.0:
        raise ValueError(f"eval.shift={magnitude} must lie in [0, 1]")
    rng = np.random.default_rng([int(seed), int(index)])
    u, angle = rng.uniform(-1.0, 1.0), rng.uniform(0.0, 2.0 * math.pi)
    scale = (1.0 + magnitude) ** u
    r = magnitude / 2.0
    return ContentShift(scale, r * width * math.cos(angle), r * height * math.sin(angle), width, height)


def shift_image(image: Image.Image, shift: ContentShift) -> Image.Image:
    """The moved image (same size), bilinear, uncovered pixels in the image's mean colour."""
    s = shift.scale
    cx, cy = shift.width / 2.0, shift.height / 2.0
    # PIL's AFFINE maps each output point (x, y) to the input point (a x + b y + c, d x + e y + f)
    data = (1 / s, 0.0, cx - (cx + shift.dx) / s, 0.0, 1 / s, cy - (cy + shift.dy) / s)
    fill = tuple(int(round(v)) for v in ImageStat.Stat(image).mean)
    return image.transform(
        image.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=fill
    )


def shift_annotation(ann: ImageAnnotation, shift: ContentShift) -> tuple[ImageAnnotation, int]:
    """``ann`` with its boxes moved and clipped, and its pairs that are no longer gradable removed
    (see the module docstring); returns ``(annotation, number of removed HOI rows)``."""
    moved = shift.apply(ann.boxes)
    clipped = moved.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, shift.width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, shift.height)

    def area(b: np.ndarray) -> np.ndarray:
        return (b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0)

    full = area(moved)
    visible = np.where(full > 0, area(clipped) / np.maximum(full, 1e-12), 0.0) >= MIN_VISIBLE
    hois = np.asarray(ann.hois, dtype=np.int64).reshape(-1, 3)
    keep = visible[hois[:, 0]] & np.where(hois[:, 1] >= 0, visible[hois[:, 1].clip(min=0)], True)
    out = dataclasses.replace(ann, boxes=clipped.astype(np.float32), hois=hois[keep])
    return out, int((~keep).sum())


class ShiftedDataset(HOIDataset):
    """``base`` (a test ``HOIDataset``) with every image's content moved by ``draw_shift(magnitude,
    ..., seed, index)``; ``annotations`` hold the moved ground truth, so an evaluator built from them
    grades the moved images. Image sizes unknown to the loader are read from the file headers."""

    def __init__(self, base: HOIDataset, magnitude: float, seed: int = 0):
        super().__init__([], base.meta, base.image_dir, base.transforms)
        self.shifts: list[ContentShift] = []
        dropped = total = 0
        for i, ann in enumerate(base.annotations):
            w, h = ann.width, ann.height
            if not (w and h):
                with Image.open(self.image_dir / ann.file_name) as im:
                    w, h = im.size
            shift = draw_shift(magnitude, w, h, seed, i)
            moved, n = shift_annotation(dataclasses.replace(ann, width=w, height=h), shift)
            self.shifts.append(shift)
            self.annotations.append(moved)
            dropped += n
            total += len(ann.hois)
        LOGGER.info(
            f"eval.shift={magnitude}: content of {len(self.annotations)} images moved (seed {seed}); "
            f"{dropped} of {total} ground-truth HOIs dropped (box < {MIN_VISIBLE:.0%} inside the image)"
        )

    def load_image(self, index: int) -> Image.Image:
        return shift_image(super().load_image(index), self.shifts[index])
