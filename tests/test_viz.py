"""Drawing triplets and attention panels (PIL), independent of any model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hqm.structures import DatasetMeta, HOIPredictions
from hqm.viz.attention import attention_grid, overlay_heatmap, query_attention_maps, upsample_map
from hqm.viz.draw import class_color, draw_predictions, group_pairs, to_pil

META = DatasetMeta("toy", ["person", "ball", "cup"], ["hold", "kick"], np.ones((2, 3), bool))


def _preds(meta=META) -> HOIPredictions:
    # query 3 has two verbs (one pair, two labels); query 5 is a second pair; query 7 scores low
    return HOIPredictions(
        file_name="x.jpg",
        sub_boxes=np.array([[10, 10, 60, 90], [10, 10, 60, 90], [70, 20, 110, 90], [0, 0, 5, 5]], np.float32),
        obj_boxes=np.array([[50, 60, 80, 90], [50, 60, 80, 90], [20, 5, 40, 25], [1, 1, 2, 2]], np.float32),
        obj_labels=np.array([1, 1, 2, 0]),
        verb_labels=np.array([1, 0, 0, 1]),
        scores=np.array([0.9, 0.6, 0.7, 0.05], np.float32),
        image_size=(100, 120),
        query_index=np.array([3, 3, 5, 7]),
        meta=meta,
    )


def test_group_pairs_merges_verbs_of_one_query_and_keeps_top_k():
    pairs = group_pairs(_preds(), top_k=2, threshold=0.1)
    assert [p["query"] for p in pairs] == [3, 5]
    assert pairs[0]["labels"] == [(1, 0.8999999761581421), (0, 0.6000000238418579)]
    assert len(group_pairs(_preds(), top_k=1, threshold=0.0)) == 1


def test_draw_predictions_kinds_of_image():
    arr = np.full((100, 120, 3), 200, np.uint8)
    for image in (arr, Image.fromarray(arr), torch.full((3, 100, 120), 0.5), None):
        out = draw_predictions(image, _preds(), top_k=3, threshold=0.1, min_side=200)
        assert isinstance(out, Image.Image) and out.size == (240, 200)
    plain = draw_predictions(arr, _preds(), top_k=0)
    drawn = np.asarray(draw_predictions(arr, _preds(), top_k=3))
    assert (np.asarray(plain) != drawn).any()  # something was drawn
    # the object box edge carries the class colour
    assert (drawn == np.array(class_color(1), np.uint8)).all(-1).any()


def test_draw_without_meta_and_empty():
    out = draw_predictions(None, _preds(meta=None), top_k=2)
    assert out.mode == "RGB"
    empty = _preds().select(np.zeros(4, bool))
    assert draw_predictions(np.zeros((50, 60, 3), np.uint8), empty).size == (576, 480)


def test_plot_and_save_through_structures(tmp_path):
    p = _preds()
    p.save(tmp_path / "a.png", image=np.zeros((100, 120, 3), np.uint8))
    p.save(tmp_path / "a.json")
    assert Image.open(tmp_path / "a.png").size[0] > 0 and (tmp_path / "a.json").read_text().startswith("{")


def test_save_refuses_to_draw_over_the_input_image(tmp_path):
    """``p.save("photo.png", image="photo.png")`` would replace the user's photo with the drawing."""
    from hqm.errors import UsageError

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((100, 120, 3), 7, np.uint8)).save(photo)
    before = photo.read_bytes()
    for out in (photo, tmp_path / "." / "photo.png"):
        with pytest.raises(UsageError, match=r"photo\.png is the input image"):
            _preds().save(out, image=str(photo))
    with Image.open(photo) as opened, pytest.raises(UsageError, match="is the input image"):
        _preds().save(photo, image=opened)  # a PIL image remembers the file it came from
    assert photo.read_bytes() == before
    _preds().save(tmp_path / "new" / "drawn.png", image=photo)  # another path is fine (folders made)
    assert (tmp_path / "new" / "drawn.png").is_file()
    _preds().save(tmp_path / "upper.JSON")
    assert (tmp_path / "upper.JSON").read_text().startswith("{")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        _preds().save(photo / "drawn.png")


def test_save_without_image_refuses_the_predicted_file_and_unknown_types(tmp_path):
    """``p.save(p.file_name)`` (no image=: the drawing is made on the predicted file) replaced the
    user's photo; ``save("x")`` / ``save("new/x.txt")`` failed inside PIL after creating ``new/``."""
    import dataclasses

    from hqm.errors import UsageError

    photo = tmp_path / "photo.jpg"
    Image.fromarray(np.full((100, 120, 3), 7, np.uint8)).save(photo)
    before = photo.read_bytes()
    p = dataclasses.replace(_preds(), file_name=str(photo))
    with pytest.raises(UsageError, match=r"photo\.jpg is the input image"):
        p.save(photo)
    assert photo.read_bytes() == before
    with pytest.raises(UsageError, match="no file extension; end the name with .png or .jpg"):
        p.save(tmp_path / "x")
    with pytest.raises(UsageError, match=r"unknown file type \.txt"):
        p.save(tmp_path / "new" / "x.txt")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["photo.jpg"]  # no folder, no file made
    p.save(tmp_path / "drawn.jpg")  # drawn on the predicted file, saved elsewhere
    assert Image.open(tmp_path / "drawn.jpg").format == "JPEG"


def test_save_replaces_a_link_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "mine.json"
    target.write_text("my notes")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    _preds().save(link)
    assert target.read_text() == "my notes" and not link.is_symlink()
    assert link.read_text().startswith('{"file_name": "x.jpg"')


def test_drawing_on_an_image_of_another_shape_is_refused():
    """Predictions for a 120 x 100 image drawn on a 500 x 500 one put every box elsewhere."""
    from hqm.viz.draw import ImageMismatchError

    with pytest.raises(
        ImageMismatchError, match="500 x 500 pixels but the predictions of x.jpg are for a 120"
    ):
        _preds().plot(np.zeros((500, 500, 3), np.uint8))
    assert _preds().plot(np.zeros((50, 60, 3), np.uint8)).size == (576, 480)  # a resized copy is fine
    assert _preds().plot(np.zeros((51, 60, 3), np.uint8)).size[1] == 480  # rounding of a resize


def test_query_attention_maps_stay_at_feature_resolution():
    # one image, 2 heads, 4 queries, a 2x4 feature map whose last column is batch padding
    scores = torch.full((1, 2, 4, 8), -10.0)
    scores[0, :, 1, 0] = 10.0  # query 1 looks at the top-left cell
    scores[0, :, 2, 3] = 10.0  # query 2 looks at the padding column only: cropped away
    padding = torch.zeros(1, 2, 4, dtype=torch.bool)
    padding[0, :, 3] = True
    maps = query_attention_maps(scores, padding, [np.array([1, 2])])
    assert maps[0].shape == (2, 2, 3) and maps[0].dtype == np.float32
    assert maps[0][0, 0, 0] == 1.0 and maps[0][0].sum() < 1.01  # normalised by the peak, top-left
    assert query_attention_maps(scores, padding, [np.array([], np.int64)])[0].shape == (0, 2, 3)
    up = upsample_map(maps[0][0], (100, 150))
    assert up.shape == (100, 150) and up[:20, :20].mean() > up[60:, 80:].mean()


def test_attention_grid_and_overlay():
    base = Image.new("RGB", (120, 100), (0, 0, 0))
    heat = np.zeros((100, 120), np.float32)
    heat[:50, :60] = 1
    over = np.asarray(overlay_heatmap(base, heat))
    assert over[10, 10, 0] > over[90, 110, 0]  # jet: red where hot
    assert over[90, 110, 2] > over[10, 10, 2]  # blue where cold
    maps = np.stack([heat] * 4)
    grid = attention_grid(to_pil(base), _preds(), maps, top_k=2, threshold=0.1, panel=128, cols=3)
    assert grid.size == (3 * 128 + 2 * 4, 128)  # detections + 2 pair panels
    # feature-resolution maps and a large image give the same panels as full-size maps
    small = np.stack([heat[::25, ::20]] * 4)  # (4, 4, 6)
    big = Image.new("RGB", (1200, 1000), (0, 0, 0))
    assert attention_grid(big, _preds(), small, top_k=2, threshold=0.1, panel=128, cols=3).size == grid.size
