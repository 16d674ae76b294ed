"""eval.shift: test images' content moved (scale + translation) with their ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.config import ConfigError, load_config
from hqm.data.shift import ContentShift, ShiftedDataset, draw_shift, shift_annotation, shift_image
from hqm.structures import ImageAnnotation


def _ann(boxes, hois, w=100, h=80) -> ImageAnnotation:
    return ImageAnnotation(
        "a.jpg",
        np.asarray(boxes, np.float32),
        np.zeros(len(boxes), np.int64),
        np.asarray(hois, np.int64).reshape(-1, 3),
        w,
        h,
    )


def test_zero_magnitude_is_the_identity():
    s = draw_shift(0.0, 100, 80, seed=0, index=3)
    assert (s.scale, s.dx, s.dy) == (1.0, 0.0, 0.0)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(shift_image(img, s)), np.asarray(img))
    ann = _ann([[10, 10, 30, 40], [50, 20, 90, 60]], [[0, 1, 2]])
    moved, dropped = shift_annotation(ann, s)
    assert dropped == 0 and np.array_equal(moved.boxes, ann.boxes) and np.array_equal(moved.hois, ann.hois)


def test_draw_is_deterministic_per_record_and_bounded():
    a, b = draw_shift(0.4, 100, 80, 0, 5), draw_shift(0.4, 100, 80, 0, 5)
    assert a == b
    assert draw_shift(0.4, 100, 80, 0, 6) != a and draw_shift(0.4, 100, 80, 1, 5) != a
    for i in range(200):
        s = draw_shift(0.4, 100, 80, 0, i)
        assert 1 / 1.4 - 1e-9 <= s.scale <= 1.4 + 1e-9
        assert (s.dx / 20.0) ** 2 + (s.dy / 16.0) ** 2 == pytest.approx(1.0)  # on the ellipse m/2 * (W, H)
    with pytest.raises(ValueError, match="eval.shift"):
        draw_shift(1.5, 100, 80, 0, 0)


@pytest.mark.parametrize(
    "shift", [ContentShift(1.3, 12.0, -7.0, 120, 90), ContentShift(0.7, -20.0, 9.5, 120, 90)]
)
def test_pixels_and_boxes_move_together(shift):
    """A white rectangle on black lands where the moved box says (within a pixel)."""
    box = np.array([[30.0, 25.0, 70.0, 55.0]])
    arr = np.zeros((90, 120, 3), np.uint8)
    arr[25:55, 30:70] = 255
    out = np.asarray(shift_image(Image.fromarray(arr), shift))[..., 0]
    ys, xs = np.nonzero(out > 127)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
    np.testing.assert_allclose(found, shift.apply(box)[0], atol=1.0)


def test_uncovered_pixels_take_the_mean_colour():
    arr = np.full((40, 40, 3), (10, 200, 30), np.uint8)
    out = np.asarray(shift_image(Image.fromarray(arr), ContentShift(0.5, 0.0, 0.0, 40, 40)))
    assert tuple(out[0, 0]) == (10, 200, 30) and tuple(out[20, 20]) == (10, 200, 30)


def test_pairs_whose_box_leaves_the_image_are_dropped():
    # boxes: a person, an object near the right edge, and an object-less role (V-COCO style)
    ann = _ann([[10, 10, 40, 70], [80, 10, 98, 30]], [[0, 1, 3], [0, -1, 4]])
    moved, dropped = shift_annotation(ann, ContentShift(1.0, 15.0, 0.0, 100, 80))  # object 95..113
    assert dropped == 1 and moved.hois.tolist() == [[0, -1, 4]]
    np.testing.assert_allclose(moved.boxes[1], [95, 10, 100, 30])  # clipped to the canvas
    moved, dropped = shift_annotation(ann, ContentShift(1.0, 5.0, 0.0, 100, 80))  # 85..103: 83% inside
    assert dropped == 0 and len(moved.hois) == 2


def test_shifted_test_set_evaluates_and_config_is_checked(tiny_root):
    from hqm.engine.evaluate import build_eval_setup

    base = [f"data.root={tiny_root}"]
    cfg = load_config(None, TINY_OVERRIDES + TINY_DATA_64 + base + ["eval.shift=0.5"])
    ev = build_eval_setup(cfg, None, torch.device("cpu"))
    plain = build_eval_setup(
        load_config(None, TINY_OVERRIDES + TINY_DATA_64 + base), None, torch.device("cpu")
    )
    assert isinstance(ev.dataset, ShiftedDataset) and len(ev.dataset) == len(plain.dataset)
    moved = [
        not np.allclose(a.boxes, b.boxes) for a, b in zip(ev.dataset.annotations, plain.dataset.annotations)
    ]
    assert all(moved)
    img, _ = ev.dataset[0]
    img0, _ = plain.dataset[0]
    assert img.shape == img0.shape and not torch.equal(img, img0)
    with pytest.raises(ConfigError, match="eval.shift"):
        load_config(None, TINY_OVERRIDES + ["eval.shift=1.5"])


def test_predictions_of_shifted_images_are_not_saved(tiny_ckpt, tiny_root, tmp_path, capsys):
    """``hqm eval CKPT eval.shift=0.5 --save-predictions s5.json`` wrote boxes in the moved images'
    coordinates, unmarked, which ``hqm eval-file`` then scored against the unmoved ground truth;
    refused now (the command line and ``evaluate_checkpoint``), before anything is written."""
    from hqm.cli import main
    from hqm.engine.evaluator_run import evaluate_checkpoint
    from hqm.errors import UsageError

    out = tmp_path / "s5.json"
    assert main(["eval", str(tiny_ckpt), "eval.shift=0.5", "--save-predictions", str(out)]) == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]
    assert "Traceback" not in err and line.startswith(
        "hqm eval: error: --save-predictions with eval.shift=0.5"
    )
    assert "no ground-truth file holds" in line and "eval.shift=0" in line
    with pytest.raises(UsageError, match="eval.shift=0.25: the boxes would be in the coordinates"):
        evaluate_checkpoint(None, str(tiny_ckpt), ["eval.shift=0.25"], save_predictions=str(out))
    assert not out.exists()
    # without a shift they are saved (the shifted metrics alone stay available without the file)
    assert main(["eval", str(tiny_ckpt), "eval.shift=0", "--save-predictions", str(out)]) == 0
    assert out.is_file()
