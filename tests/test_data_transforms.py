"""Boxes follow the image through flip, resize and crop; absent objects stay absent."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torchvision import tv_tensors
from torchvision.transforms import v2

from hqm.config import DataConfig
from hqm.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HOITransforms,
    RandomSizeCrop,
    build_transforms,
    make_test_transforms,
    transform_pairs,
)

SUB = [10.0, 15.0, 50.0, 80.0]
OBJ = [60.0, 30.0, 110.0, 70.0]


def painted_image(w: int = 120, h: int = 90) -> Image.Image:
    """Black image with a red subject box and a green object box (pixel-exact rectangles)."""
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    d.rectangle([SUB[0], SUB[1], SUB[2] - 1, SUB[3] - 1], fill=(255, 0, 0))
    d.rectangle([OBJ[0], OBJ[1], OBJ[2] - 1, OBJ[3] - 1], fill=(0, 255, 0))
    return img


def colour_extent(img: torch.Tensor, channel: int) -> list[float] | None:
    """xyxy extent of the pixels dominated by ``channel`` in a normalised image tensor."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    rgb = img * std + mean
    others = [c for c in range(3) if c != channel]
    mask = (rgb[channel] > 0.5) & (rgb[others].max(dim=0).values < 0.3)
    if not mask.any():
        return None
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1.0, ys.max().item() + 1.0]


def small_cfg(**kw) -> DataConfig:
    base = dict(
        scales=[64, 80, 96],
        max_size=160,
        crop_resize=[80, 100],
        crop_min=40,
        crop_max=90,
        test_scale=72,
        color_jitter=0.0,
    )
    base.update(kw)
    return DataConfig(**base)


def test_flip_mirrors_x():
    t = HOITransforms(v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToImage()]), train=True)
    img, boxes = t(painted_image(), torch.tensor([SUB, OBJ]))
    assert img.shape == (3, 90, 120)
    assert boxes.tolist() == [[120 - 50, 15, 120 - 10, 80], [120 - 110, 30, 120 - 60, 70]]


def test_test_transform_resizes_short_side_and_caps_long_side():
    t = make_test_transforms(test_scale=45, max_size=200)
    img, boxes = t(painted_image(), torch.tensor([SUB]))
    assert img.shape == (3, 45, 60)
    assert torch.allclose(boxes, torch.tensor([SUB]) * 0.5)
    t = make_test_transforms(test_scale=80, max_size=100)  # 120x90 -> long side capped at 100
    img, boxes = t(painted_image(), torch.tensor([SUB]))
    assert img.shape[-1] == 100 and img.shape[-2] == 75
    assert torch.allclose(boxes, torch.tensor([SUB]) * (100 / 120), atol=1e-4)


def test_crop_shifts_and_clips_and_drops_vanished_pairs_in_order():
    # keeps x 30..90, y 25..65 of the 120x90 image
    crop = HOITransforms(v2.Compose([v2.CenterCrop((40, 60)), v2.ToImage()]), train=True)
    sub = torch.tensor([SUB, [35.0, 30.0, 45.0, 40.0], [0.0, 0.0, 20.0, 20.0], [40.0, 30.0, 80.0, 60.0]])
    obj = torch.tensor([OBJ, [0.0, 0.0, 0.0, 0.0], OBJ, [100.0, 0.0, 119.0, 10.0]])
    has_obj = torch.tensor([True, False, True, True])
    img, s, o, keep = transform_pairs(crop, painted_image(), sub, obj, has_obj)
    assert img.shape == (3, 40, 60)
    assert keep.tolist() == [True, True, False, False]  # pair 2: subject gone, pair 3: object gone
    assert s[0].tolist() == [0.0, 0.0, 20.0, 40.0]  # shifted by (30, 25) and clipped
    assert o[0].tolist() == [30.0, 5.0, 60.0, 40.0]
    assert s[1].tolist() == [5.0, 5.0, 15.0, 15.0] and o[1].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_absent_object_stays_zero_under_flip():
    t = HOITransforms(v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToImage()]), train=True)
    _, s, o, keep = transform_pairs(
        t, painted_image(), torch.tensor([SUB]), torch.zeros(1, 4), torch.tensor([False])
    )
    assert keep.tolist() == [True] and o.tolist() == [[0.0, 0.0, 0.0, 0.0]]
    assert s.tolist() == [[70.0, 15.0, 110.0, 80.0]]


@pytest.mark.parametrize("seed", range(12))
def test_train_transforms_keep_boxes_on_the_painted_regions(seed):
    torch.manual_seed(seed)
    t = build_transforms(small_cfg(), train=True)
    img, s, o, keep = transform_pairs(
        t,
        painted_image(),
        torch.tensor([SUB, SUB]),
        torch.tensor([OBJ, [0.0] * 4]),
        torch.tensor([True, False]),
    )
    h, w = img.shape[-2:]
    assert min(h, w) in (64, 80, 96) or max(h, w) == 160
    assert o[1].tolist() == [0.0] * 4  # the absent object of pair 1 never moves
    for box, channel, alive in ((s[0], 0, keep[1]), (o[0], 1, keep[0])):
        seen = colour_extent(img, channel)
        if seen is None or not alive:
            continue
        # interpolation blurs edges by about a pixel; crops clip both the paint and the box
        assert np.allclose(box.tolist(), seen, atol=2.0), (box.tolist(), seen)
    if keep[0]:
        assert colour_extent(img, 1) is not None


def test_random_size_crop_bounds():
    torch.manual_seed(0)
    crop = RandomSizeCrop(30, 50)
    for _ in range(20):
        img = crop(tv_tensors.Image(torch.zeros(3, 90, 120)))
        assert 30 <= img.shape[-1] <= 50 and 30 <= img.shape[-2] <= 50
    assert crop(torch.zeros(3, 90, 120)).shape[-1] <= 50  # a plain tensor is the image too
    small = crop(tv_tensors.Image(torch.zeros(3, 20, 25)))
    assert small.shape[-2:] == (20, 25)


def test_test_transforms_are_deterministic():
    t = build_transforms(small_cfg(), train=False)
    a = t(painted_image(), torch.tensor([SUB]))
    b = t(painted_image(), torch.tensor([SUB]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and min(a[0].shape[-2:]) == 72


def test_tensor_images_are_accepted():
    t = make_test_transforms(test_scale=45, max_size=200)
    x = tv_tensors.Image(torch.rand(3, 90, 120))
    img, boxes = t(x, torch.tensor([SUB]))
    assert img.shape == (3, 45, 60) and torch.allclose(boxes, torch.tensor([SUB]) * 0.5)


def test_output_size_is_the_test_pipelines_own_and_leaves_the_random_state_alone():
    import random as pyrandom

    from PIL import Image

    from hqm.data.transforms import make_test_transforms, make_train_transforms

    tf = make_test_transforms(128, 224)
    rng = pyrandom.Random(0)
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    for _ in range(40):
        h, w = rng.randint(16, 700), rng.randint(16, 700)
        assert tf.output_size(h, w) == tuple(tf(Image.new("RGB", (w, h)), torch.zeros(0, 4))[0].shape[-2:])
    torch.manual_seed(3)
    for _ in range(5):
        tf.output_size(300, 200)
    assert torch.equal(torch.rand(2), expected)
    with pytest.raises(ValueError, match="random"):
        make_train_transforms([96, 128], 224, [112], 96, 128, 0.0).output_size(100, 100)
