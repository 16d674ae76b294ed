"""Image decoding (``hqm.data.images``): EXIF orientation, every PIL mode, unreadable files, and the
shape / dtype / range checks of array and tensor inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hqm.data.images import ImageDecodeError, as_image, read_image, to_rgb

RED, BLUE = (255, 0, 0), (0, 0, 255)


def oriented_photo(path, orientation: int = 6) -> None:
    """A 100 x 40 (w x h) stored bitmap, left half red, right half blue, tagged with ``orientation``
    (6: the viewer turns it 90 degrees clockwise, the way phones store portrait photos)."""
    arr = np.zeros((40, 100, 3), np.uint8)
    arr[:, :50] = RED
    arr[:, 50:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied_for_user_images(tmp_path):
    path = tmp_path / "portrait.jpg"
    oriented_photo(path)
    upright = read_image(path)
    assert upright.size == (40, 100)  # (w, h): displayed upright
    # turned 90 degrees clockwise: the stored left (red) half is now the top half
    assert np.abs(np.asarray(upright)[10, 20].astype(int) - RED).max() < 30
    assert np.abs(np.asarray(upright)[90, 20].astype(int) - BLUE).max() < 30
    assert as_image(str(path)).size == (40, 100)
    with Image.open(path) as opened:  # a PIL image straight from Image.open: same as the path
        assert as_image(opened).size == (40, 100) and opened.size == (100, 40)  # caller's image untouched
    # dataset images keep the stored pixel order their annotation boxes refer to
    assert read_image(path, exif_transpose=False).size == (100, 40)


def _pixel(im: Image.Image, xy=(0, 0)) -> tuple[int, ...]:
    assert im.mode == "RGB"
    return im.getpixel(xy)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)  # a 16-bit greyscale PNG
    im = read_image(path)
    assert [_pixel(im, (x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
    as_int32 = Image.fromarray(arr.astype(np.int32), "I")  # what older Pillow versions decode to
    assert _pixel(to_rgb(as_int32), (1, 0)) == (128, 128, 128)
    with pytest.raises(ImageDecodeError, match="16-bit"):
        to_rgb(Image.fromarray(np.array([[-5, 70000]], np.int32), "I"))
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert _pixel(to_rgb(floats), (1, 0)) == (128, 128, 128)


def test_transparency_is_composited_over_white(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0  # palette index 0 (black) is transparent
    pal.save(tmp_path / "pal.png", transparency=0)
    im = read_image(tmp_path / "pal.png")
    assert _pixel(im, (0, 0)) == (255, 255, 255) and _pixel(im, (1, 0)) == (200, 10, 10)
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    im = read_image(tmp_path / "rgba.png")
    assert _pixel(im, (0, 0)) == (255, 255, 255) and _pixel(im, (1, 0)) == (10, 20, 30)
    la = Image.fromarray(np.array([[[50, 0], [50, 255]]], np.uint8), "LA")
    assert _pixel(to_rgb(la), (0, 0)) == (255, 255, 255) and _pixel(to_rgb(la), (1, 0)) == (50, 50, 50)


def test_cmyk_grey_and_bilevel_files(tmp_path):
    Image.new("CMYK", (4, 4), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    c = _pixel(read_image(tmp_path / "cmyk.jpg"))
    assert c[0] < 20 and c[1] > 235 and c[2] > 235  # pure cyan
    Image.new("L", (3, 2), 77).save(tmp_path / "grey.png")
    assert _pixel(read_image(tmp_path / "grey.png")) == (77, 77, 77)
    Image.new("1", (3, 2), 1).save(tmp_path / "bw.png")
    assert _pixel(read_image(tmp_path / "bw.png")) == (255, 255, 255)


def test_unreadable_and_truncated_files_name_the_file(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:600])
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image")
    for path in (cut, fake, tmp_path / "missing.jpg"):
        with pytest.raises(ImageDecodeError, match=path.name):
            read_image(path)
    assert isinstance(ImageDecodeError("x"), ValueError)


def test_arrays_by_shape_and_dtype():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)  # H x W: read as grey, not as 3 pixels wide
    im = as_image(grey)
    assert im.size == (4, 3) and _pixel(im, (1, 0)) == (1, 1, 1)
    assert as_image(grey[..., None]).size == (4, 3)
    assert _pixel(as_image(np.full((2, 2), 65535, np.uint16))) == (255, 255, 255)
    rgba = np.zeros((2, 2, 4), np.uint8)
    assert _pixel(as_image(rgba)) == (255, 255, 255)
    f = as_image(np.full((5, 6, 3), 0.25, np.float32))
    assert isinstance(f, torch.Tensor) and f.shape == (3, 5, 6) and f.dtype == torch.float32
    assert torch.allclose(f, torch.full_like(f, 0.25))
    g = as_image(np.full((5, 6), 0.5))
    assert g.shape == (3, 5, 6)
    bad = [
        (np.zeros((3, 50, 60), np.uint8), "channel-first"),
        (np.zeros((5, 6, 3), np.int64), "dtype is ambiguous"),
        (np.full((5, 6, 3), 200.0), "divide by 255"),
        (np.full((5, 6, 3), -0.5, np.float32), "outside"),
        (np.full((5, 6), np.nan, np.float32), "NaN"),
        (np.zeros((0, 6, 3), np.uint8), "empty"),
        (np.zeros((2, 5, 6, 3), np.uint8), "expected"),
    ]
    for arr, why in bad:
        with pytest.raises(ValueError, match=why) as e:
            as_image(arr)
        assert str(tuple(arr.shape)) in str(e.value) and str(arr.dtype) in str(e.value)


def test_tensors_by_shape_and_dtype():
    chw = torch.rand(3, 5, 6)
    assert torch.equal(as_image(chw), chw)
    assert as_image(torch.rand(5, 6)).shape == (3, 5, 6)
    u8 = torch.randint(0, 256, (3, 5, 6), dtype=torch.uint8)
    assert np.array_equal(np.asarray(as_image(u8)), u8.permute(1, 2, 0).numpy())
    bad = [
        (torch.rand(5, 6, 3), "channel-last"),
        (torch.randn(3, 5, 6) * 2, "outside"),
        (torch.zeros(3, 5, 6, dtype=torch.int32), "dtype is ambiguous"),
        (torch.zeros(4, 5, 6), "C = 1 or 3"),
    ]
    for t, why in bad:
        with pytest.raises(ValueError, match=why) as e:
            as_image(t)
        assert str(tuple(t.shape)) in str(e.value) and str(t.dtype).replace("torch.", "") in str(e.value)
    with pytest.raises(ValueError, match="list"):
        as_image([1, 2, 3])


def test_dataset_images_keep_stored_order_and_name_a_broken_file(tmp_path):
    """Dataset boxes refer to the stored pixels: no EXIF rotation there; a file that cannot be
    decoded mid-training is an error naming the file and its record."""
    from hqm.data import DatasetError, HOIDataset
    from hqm.structures import DatasetMeta, ImageAnnotation

    oriented_photo(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:200])
    empty = dict(
        boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), hois=np.zeros((0, 3), np.int64)
    )
    anns = [ImageAnnotation(file_name=n, width=100, height=40, **empty) for n in ("a.jpg", "b.jpg")]
    meta = DatasetMeta("toy", ["person"], ["hold"], np.ones((1, 1), bool))
    ds = HOIDataset(anns, meta, tmp_path)
    assert ds.load_image(0).size == (100, 40)  # stored (w, h), as the annotation boxes
    with pytest.raises(DatasetError, match="record 1 \\(file_name 'b.jpg'\\).*b.jpg: cannot decode"):
        ds[1]
