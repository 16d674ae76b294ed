"""Train / test image transforms that move subject and object boxes together (torchvision v2).

Train (QPIC/DETR recipe, every size read from ``DataConfig``)::

    RandomHorizontalFlip(0.5) -> ColorJitter(b, c, s = color_jitter)
    -> with p = 0.5 either  RandomShortestSize(scales, max_size)
                    or      RandomShortestSize(crop_resize) -> RandomSizeCrop(crop_min, crop_max)
                            -> RandomShortestSize(scales, max_size)
    -> ToImage -> float in [0, 1] -> ImageNet normalisation

Test: shortest side ``test_scale`` (longest side at most ``max_size``), then the same normalisation.

Boxes travel as ONE ``tv_tensors.BoundingBoxes`` tensor (subject boxes then object boxes), absolute
pixel xyxy, so every geometric op moves a pair consistently. Absent objects (V-COCO roles without an
object) are tracked by a mask and re-zeroed afterwards: a zero box never becomes a flipped non-zero
box. ``transform_pairs`` also drops pairs whose subject or existing object box vanished in a crop,
keeping the order of the remaining pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from hqm.config import DataConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose width and height are drawn uniformly from
    ``[min_size, min(max_size, side)]`` (DETR's ``RandomSizeCrop``); boxes are shifted and clipped.

    An image side smaller than ``min_size`` is kept whole along that axis.
    """

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if min_size > max_size:
            raise ValueError(f"RandomSizeCrop: min_size {min_size} > max_size {max_size}")
        self.min_size = min_size
        self.max_size = max_size

    @staticmethod
    def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
        images = [x for x in flat_inputs if isinstance(x, (Image.Image, tv_tensors.Image))]
        # like v2, a plain tensor counts as the image when no explicit image is given
        images += [x for x in flat_inputs if type(x) is Tensor]
        if not images:
            raise TypeError("RandomSizeCrop needs a PIL image or an image tensor among its inputs")
        h, w = F.get_size(images[0])
        return h, w

    def _draw(self, lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, ()).item())

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = self._image_size(flat_inputs)
        tw = self._draw(min(self.min_size, w), min(self.max_size, w))
        th = self._draw(min(self.min_size, h), min(self.max_size, h))
        top = self._draw(0, h - th)
        left = self._draw(0, w - tw)
        return {"top": top, "left": left, "height": th, "width": tw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


def _normalise() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class HOITransforms:
    """Callable ``(image, boxes (K, 4) pixel xyxy) -> (image (3, H, W) float, boxes (K, 4) pixel xyxy)``.

    The input image is a PIL image, a uint8 ``tv_tensors.Image`` or a float one in [0, 1].

    Output boxes are in the coordinates of the transformed image and clipped to it (a box cropped
    away has zero area). ``train`` tells whether the pipeline is random.
    """

    def __init__(self, pipeline: v2.Transform, train: bool) -> None:
        self.pipeline = pipeline
        self.train = train

    def __call__(self, image: Image.Image | Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
        h, w = F.get_size(image)  # PIL image or (3, H, W) image tensor
        bb = tv_tensors.BoundingBoxes(
            boxes.reshape(-1, 4).float(), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(h, w)
        )
        out_image, out_boxes = self.pipeline(image, bb)
        return out_image.as_subclass(Tensor), out_boxes.as_subclass(Tensor)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) in pixels of a ``height`` x ``width`` image after this deterministic (test) pipeline,
        computed by the pipeline itself on an empty box set (torchvision's own rounding, no image
        decoded); the global random state is left as it was. Raises ``ValueError`` for a training
        pipeline, whose output size is random."""
        if self.train:
            raise ValueError("the output size of a random (training) pipeline is not fixed")
        empty = tv_tensors.BoundingBoxes(
            torch.zeros(0, 4), format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(int(height), int(width))
        )
        with torch.random.fork_rng(devices=[]):  # RandomShortestSize draws its (single) size
            h, w = self.pipeline(empty).canvas_size
        return int(h), int(w)

    def __repr__(self) -> str:
        return f"HOITransforms(train={self.train}, pipeline={self.pipeline})"


def make_train_transforms(
    scales: Sequence[int],
    max_size: int,
    crop_resize: Sequence[int],
    crop_min: int,
    crop_max: int,
    color_jitter: float,
) -> HOITransforms:
    """The random multi-scale / crop / flip / colour pipeline described in the module docstring."""
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip(p=0.5)]
    if color_jitter > 0:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    multi_scale = v2.RandomShortestSize(min_size=list(scales), max_size=max_size)
    crop_branch = v2.Compose(
        [
            v2.RandomShortestSize(min_size=list(crop_resize)),
            RandomSizeCrop(crop_min, crop_max),
            v2.RandomShortestSize(min_size=list(scales), max_size=max_size),
        ]
    )
    steps.append(v2.RandomChoice([multi_scale, crop_branch], p=[0.5, 0.5]))
    return HOITransforms(v2.Compose(steps + _normalise()), train=True)


def make_test_transforms(test_scale: int, max_size: int) -> HOITransforms:
    """Deterministic resize: shortest side ``test_scale``, longest side at most ``max_size``."""
    resize = v2.RandomShortestSize(min_size=[test_scale], max_size=max_size)
    return HOITransforms(v2.Compose([resize] + _normalise()), train=False)


def build_transforms(cfg: DataConfig, train: bool) -> HOITransforms:
    """Train or test transforms from the ``data`` section of the config."""
    if train:
        return make_train_transforms(
            cfg.scales, cfg.max_size, cfg.crop_resize, cfg.crop_min, cfg.crop_max, cfg.color_jitter
        )
    return make_test_transforms(cfg.test_scale, cfg.max_size)


def _positive(b: Tensor) -> Tensor:
    return (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


def transform_boxes(
    transforms: HOITransforms | None, image: Image.Image, boxes: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``transforms`` to an image and its instance boxes (K, 4) absolute pixel xyxy.

    Returns ``(image (3, H, W), boxes (K, 4) pixel xyxy of the transformed image, keep (K,) bool)``;
    ``keep`` is False for boxes without area after the transform (cropped away). The random draws
    do not depend on the number of boxes, so transforming the instances and indexing the pairs out
    of them equals :func:`transform_pairs` on the same draws.
    """
    if transforms is None:
        img = F.to_dtype(F.to_image(image), torch.float32, scale=True).as_subclass(Tensor)
        out = boxes.float().clone()
    else:
        img, out = transforms(image, boxes)
    return img, out, _positive(out)


def transform_pairs(
    transforms: HOITransforms | None,
    image: Image.Image,
    sub_boxes: Tensor,
    obj_boxes: Tensor,
    has_obj: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Apply ``transforms`` to an image and its pairs.

    sub_boxes, obj_boxes: (N, 4) absolute pixel xyxy in ``image``; rows with ``has_obj == False`` are
    ignored and come back as zeros. Returns ``(image (3, H, W), sub_boxes (N, 4), obj_boxes (N, 4),
    keep (N,) bool)`` with boxes in pixel xyxy of the transformed image; ``keep`` is False for pairs
    whose subject box or existing object box has zero area after the transform (cropped away).
    Without ``transforms`` the image is only converted to a float tensor in [0, 1].
    """
    n = sub_boxes.shape[0]
    has_obj = has_obj.bool()
    if transforms is None:
        img = F.to_dtype(F.to_image(image), torch.float32, scale=True).as_subclass(Tensor)
        sub, obj = sub_boxes.float().clone(), obj_boxes.float().clone()
    else:
        img, boxes = transforms(image, torch.cat([sub_boxes, obj_boxes], dim=0))
        sub, obj = boxes[:n], boxes[n:]
    obj = torch.where(has_obj[:, None], obj, torch.zeros_like(obj))

    keep = _positive(sub) & (_positive(obj) | ~has_obj)
    return img, sub, obj, keep
