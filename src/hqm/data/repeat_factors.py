"""Repeat-factor sampling for long-tailed training sets (Gupta, Dollar and Girshick, "LVIS: A Dataset
for Large Vocabulary Instance Segmentation", CVPR 2019, section 4.2; detectron2's
``RepeatFactorTrainingSampler`` and ``DATALOADER.REPEAT_THRESHOLD``).

With threshold ``t``, an HOI class ``c`` (a ``(verb, object class)`` pair, the unit of HICO-DET's rare
split) that appears in a fraction ``f(c)`` of the training images gets the class repeat factor
``r(c) = max(1, sqrt(t / f(c)))``; an image's repeat factor is the largest over the HOI classes it
holds (1 for an image without HOIs). ``EpochSampler`` then lists image ``i`` ``floor(r_i)`` times plus
once more with probability ``r_i - floor(r_i)``, seeded by (seed, epoch), and keeps the epoch's
length: the first ``len(dataset)`` entries of that list in a random order (see ``EpochSampler``).
``data.repeat_threshold`` (0 = off) sets ``t``.
"""

from __future__ import annotations

import numpy as np

from hqm.structures import ImageAnnotation


def hoi_classes(ann: ImageAnnotation) -> set[tuple[int, int]]:
    """The ``(verb, object class)`` HOI classes of one record; a role without object counts as
    object class -1."""
    classes = set()
    for _, obj, verb in ann.hois:
        classes.add((int(verb), int(ann.labels[obj]) if obj >= 0 else -1))
    return classes


def repeat_factors(annotations: list[ImageAnnotation], threshold: float) -> np.ndarray:
    """(N,) float64 repeat factor of every training record, each >= 1 (LVIS; see the module docstring).

    threshold: ``t`` in (0, 1]; an HOI class in at least a fraction ``t`` of the images is never repeated.
    """
    per_image = [hoi_classes(a) for a in annotations]
    counts: dict[tuple[int, int], int] = {}
    for classes in per_image:
        for c in classes:
            counts[c] = counts.get(c, 0) + 1
    n = max(len(annotations), 1)
    class_factor = {c: max(1.0, float(np.sqrt(threshold / (k / n)))) for c, k in counts.items()}
    return np.array([max([1.0] + [class_factor[c] for c in classes]) for classes in per_image])
