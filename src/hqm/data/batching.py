"""Same-size batching for inference: an image's predictions never depend on the other images.

DETR-family detectors are not batch-independent when images of different sizes share a batch: the
batch is zero-padded to the largest image (DETR / QPIC ``nested_tensor_from_tensor_list``, and
:func:`hqm.data.dataset.collate_fn`), and although the transformer masks the padded keys, the
backbone's convolutions and norms see the padded border and the feature map (hence every query) is
computed on a larger grid, so the outputs of an image change with its batch-mates.
A batch of images of one input size needs no padding: each image's outputs equal those of a batch
of one, up to the rounding of batched kernels (~1e-6 on the logits).

* :func:`same_size_groups`: positions grouped by size (first-appearance order), at most ``batch_size``
  per group;
* :class:`SizeGroupedBatchSampler`: a batch sampler for evaluation loaders that groups any sampler's
  images by their stored size, so batches are full and unpadded;
* :func:`unpadded_groups`: splits a collated batch into same-size sub-batches with the padding cropped
  off. It is the guarantee when stored sizes do not predict input sizes (EXIF rotation, unknown sizes)
  and how the API batches whatever it is given.

Training pads (its batches are random), but :func:`size_grouped_batches` lets it pad less:
``train.size_grouping`` = P draws P batches' worth of augmented images at once and cuts them into
batches of similar padded size (``hqm.data.dataset.collate_size_grouped``).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler


def same_size_groups(keys: Sequence[Hashable], batch_size: int | None = None) -> list[list[int]]:
    """Positions of ``keys`` grouped by equal key, groups in order of first appearance, each split
    into chunks of at most ``batch_size`` (no limit when None). ``[a, b, a] -> [[0, 2], [1]]``."""
    buckets: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        buckets.setdefault(key, []).append(i)
    step = batch_size or max(len(keys), 1)
    return [members[s : s + step] for members in buckets.values() for s in range(0, len(members), step)]


class SizeGroupedBatchSampler(Sampler):
    """Batches of at most ``batch_size`` items of ``sampler`` whose images share one size.

    sampler: yields dataset indices or ``(index, epoch)`` pairs (``EpochSampler``); every item is
        kept exactly once. sizes: a hashable size per dataset index, e.g. ``(width, height)`` from the
        annotation (equal stored sizes give equal input sizes under deterministic test transforms).
    """

    def __init__(self, sampler: Sampler, sizes: Sequence[Hashable], batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.sizes, self.batch_size = sampler, sizes, batch_size

    def _batches(self) -> list[list[Any]]:
        items = list(self.sampler)
        keys = [self.sizes[item[0] if isinstance(item, tuple) else item] for item in items]
        return [[items[j] for j in group] for group in same_size_groups(keys, self.batch_size)]

    def __iter__(self) -> Iterator[list[Any]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())


def unpadded_groups(
    images: Tensor, masks: Tensor, sizes: Tensor | Sequence[Sequence[int]]
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Split a padded batch into same-size sub-batches without padding.

    images: (B, 3, H, W) zero-padded at the bottom / right; masks: (B, H, W), True on padding;
    sizes: (B, 2) input (h, w) of each image. Yields ``(positions in the batch, images (b, 3, h, w),
    masks (b, h, w))``, groups in order of first appearance.
    """
    hw = [tuple(int(v) for v in s) for s in (sizes.tolist() if torch.is_tensor(sizes) else sizes)]
    for group in same_size_groups(hw):
        h, w = hw[group[0]]
        index = torch.as_tensor(group, device=images.device)
        yield group, images[index, :, :h, :w], masks[index, :h, :w]


def padded_size(height: int, width: int, size_divisibility: int = 1) -> tuple[int, int]:
    """(height, width) rounded up to multiples of ``size_divisibility`` (1: unchanged): the canvas a
    batch whose largest sides are these is padded to (``hqm.data.dataset.collate_fn``)."""
    d = max(int(size_divisibility), 1)
    return -(-int(height) // d) * d, -(-int(width) // d) * d


def size_grouped_batches(
    sizes: Sequence[Sequence[int]], batch_size: int, size_divisibility: int = 1
) -> list[list[int]]:
    """Positions of a pool of images (``sizes``: input (h, w) each, e.g. after the random training
    transforms) cut into batches of ``batch_size`` images of similar size, so that padding each batch
    to its largest image wastes little: stable sort by the padded height, then the padded width
    (each rounded up to ``size_divisibility``), cut in order. Positions beyond the last full batch
    (fewer than ``batch_size``) are dropped, like a loader's ``drop_last``. The bucketing of
    detectron2's ``AspectRatioGroupedDataset`` (which groups augmented images by orientation),
    by padded size; the batches come out in size order (the trainer shuffles them)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    padded = [padded_size(h, w, size_divisibility) for h, w in sizes]
    order = sorted(range(len(sizes)), key=lambda i: padded[i])
    full = len(order) // batch_size * batch_size
    return [order[s : s + batch_size] for s in range(0, full, batch_size)]
