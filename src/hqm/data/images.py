"""Image decoding: the one place where files, PIL images, arrays and tensors become RGB images.

Every entry point goes through here: ``HOIDetector.predict`` (paths, PIL images, arrays, tensors),
``hqm predict`` (files), the drawing helpers and ``HOIDataset`` (dataset files).

Files and PIL images
    * EXIF orientation is applied (``PIL.ImageOps.exif_transpose``) for the images users give
      (``hqm predict``, the API), so a portrait phone photo is processed and drawn upright and the
      predicted boxes refer to the upright image. Dataset images are read in *stored* pixel order
      (``exif_transpose=False``): the HICO-DET / V-COCO / HOI-A boxes were annotated on the stored
      pixels (MATLAB's ``imread`` and the COCO tools ignore the tag), and the loaders check every
      box against the header size, which is also the stored size.
    * Every mode becomes 8-bit RGB: ``L`` / ``1`` / ``CMYK`` / ``YCbCr`` / ``LAB`` / ``HSV`` through
      PIL's conversion; 16-bit grey (``I;16*``, and ``I`` with values in 0..65535, as PNG decoders
      produce) scaled by 255 / 65535 instead of being clipped at 255; float ``F`` images in [0, 1]
      scaled by 255; images with transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, palette images
      with a transparent index) composited over white, as a browser shows them.
    * A file that cannot be opened or decoded (unknown format, truncated, too large for PIL's
      decompression-bomb limit) raises :class:`ImageDecodeError` naming the file.

Arrays and tensors (``as_image``), checked by shape, dtype and range
    * numpy: ``(H, W)`` grey or ``(H, W, C)`` with C = 1 (grey), 3 (RGB) or 4 (RGBA, composited over
      white); dtype ``uint8`` (0..255), ``uint16`` (0..65535) or float in [0, 1].
    * torch: ``(H, W)`` grey or ``(C, H, W)`` with C = 1 or 3; dtype ``uint8`` or float in [0, 1].
    * Integer data becomes an RGB PIL image (exactly what the same picture read from a file gives);
      float data a float32 (3, H, W) tensor in [0, 1] (no rounding to 8 bits).
    * Anything else (channel-first numpy arrays, channel-last tensors, other dtypes, values outside
      the range, NaN, empty images) raises ``ValueError`` naming the shape and dtype.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from hqm.errors import UserError

#: modes whose alpha channel (or transparent palette index) is composited over white
_TRANSPARENT_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_BACKGROUND = (255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag


class ImageDecodeError(UserError, ValueError):
    """An image file or object could not be turned into an RGB image (the message names it)."""


def read_image(path: str | os.PathLike, exif_transpose: bool = True) -> Image.Image:
    """Decode the image file ``path`` fully into an 8-bit RGB PIL image.

    ``exif_transpose``: apply the EXIF orientation (user photos); ``False`` keeps the stored pixel
    order (dataset images, whose annotations use it). Raises :class:`ImageDecodeError` (a
    ``ValueError``) naming the file when it is missing, not an image, truncated or too large.
    """
    path = Path(path)
    try:
        with Image.open(path) as f:
            f.load()  # decode now: a truncated file fails here, not later in a transform
            im = f
            if exif_transpose:
                ImageOps.exif_transpose(im, in_place=True)
            return to_rgb(im)
    except ImageDecodeError as e:
        raise ImageDecodeError(f"{path}: {e}") from None
    except FileNotFoundError:
        raise ImageDecodeError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"{path}: cannot decode the image ({e})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (see the module docstring). Returns ``im`` itself when it is RGB."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(im)
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageDecodeError(
                f"32-bit integer image with values in [{lo}, {hi}]: only 16-bit data (0..65535) is supported"
            )
        grey = np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if arr.size and not (np.isfinite(arr).all() and arr.min() >= 0.0 and arr.max() <= 1.0):
            raise ImageDecodeError("float image with values outside [0, 1]: its range is ambiguous")
        return Image.fromarray(np.round(arr * 255.0).astype(np.uint8), "L").convert("RGB")
    if mode in _TRANSPARENT_MODES or (mode in ("P", "L") and "transparency" in im.info):
        rgba = im.convert("RGBA") if mode != "La" else im.convert("LA").convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise ImageDecodeError(f"unsupported image mode {mode!r} ({e})") from None


def as_image(obj: Any) -> Image.Image | Tensor:
    """One input of ``HOIDetector.predict`` -> an RGB PIL image or a float32 (3, H, W) tensor in [0, 1].

    obj: a path (``str`` / ``PathLike``, EXIF orientation applied), a PIL image (EXIF orientation
    applied; the caller's image is not modified), a numpy array or a torch tensor (see the module
    docstring for the accepted shapes, dtypes and ranges). Raises ``ValueError`` (an
    :class:`ImageDecodeError` for files) naming the file, or the shape and dtype, when the input
    cannot be read unambiguously.
    """
    if isinstance(obj, (str, os.PathLike)):
        return read_image(obj)
    if isinstance(obj, Image.Image):
        if obj.getexif().get(_ORIENTATION, 1) != 1:
            obj = ImageOps.exif_transpose(obj)  # a transposed copy: the caller's image is kept
        return to_rgb(obj)
    if isinstance(obj, np.ndarray):
        return _from_array(obj)
    if torch.is_tensor(obj):
        return _from_tensor(obj)
    raise ValueError(
        f"cannot read an image from a {type(obj).__name__}: expected a path, a PIL image, a numpy "
        "array or a torch tensor"
    )


def _describe(x: np.ndarray | Tensor) -> str:
    return f"shape {tuple(x.shape)} and dtype {str(x.dtype).replace('torch.', '')}"


def _check_float_range(values: np.ndarray, what: str) -> None:
    if not np.isfinite(values).all():
        raise ValueError(f"cannot read an image from a {what}: it holds NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (divide by 255?)" if hi <= 255.0 and lo >= 0.0 else " (normalised already? pass [0, 1] data)"
        raise ValueError(
            f"cannot read an image from a {what}: float values in [{lo:.4g}, {hi:.4g}] are outside "
            f"[0, 1]{hint}; pass floats in [0, 1] or uint8 0..255"
        )


def _from_array(arr: np.ndarray) -> Image.Image | Tensor:
    what = f"numpy array of {_describe(arr)}"
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        hint = " (channel-first? transpose to (H, W, C))" if arr.ndim == 3 and arr.shape[0] in (1, 3) else ""
        raise ValueError(
            f"cannot read an image from a {what}: expected (H, W) grey or (H, W, C) with C = 1, 3 or 4{hint}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot read an image from a {what}: it is empty")
    if arr.dtype == np.uint16:
        arr = np.round(arr.astype(np.float32) * (255.0 / 65535.0)).astype(np.uint8)
    if arr.dtype == np.uint8:
        channels = arr.shape[-1]
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr[..., 0] if channels == 1 else arr), mode))
    if np.issubdtype(arr.dtype, np.floating):
        _check_float_range(arr, what)
        return _float_chw(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1))
    raise ValueError(
        f"cannot read an image from a {what}: the dtype is ambiguous; pass uint8 (0..255), uint16 "
        "(0..65535) or float in [0, 1]"
    )


def _from_tensor(t: Tensor) -> Image.Image | Tensor:
    what = f"tensor of {_describe(t)}"
    t = t.detach().cpu()
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        hint = " (channel-last? use .permute(2, 0, 1))" if t.dim() == 3 and t.shape[-1] in (1, 3, 4) else ""
        raise ValueError(
            f"cannot read an image from a {what}: expected (H, W) grey or (C, H, W) with C = 1 or 3{hint}"
        )
    if t.shape[1] == 0 or t.shape[2] == 0:
        raise ValueError(f"cannot read an image from a {what}: it is empty")
    if t.dtype == torch.uint8:
        return _from_array(t.permute(1, 2, 0).numpy())
    if t.is_floating_point():
        t = t.float()
        _check_float_range(t.numpy(), what)
        return _float_chw(t)
    raise ValueError(
        f"cannot read an image from a {what}: the dtype is ambiguous; pass uint8 (0..255) or float in [0, 1]"
    )


def _float_chw(t: Tensor) -> Tensor:
    """(C, H, W) float in [0, 1] with C = 1, 3 or 4 -> (3, H, W) (grey repeated, alpha over white)."""
    if t.shape[0] == 1:
        return t.expand(3, -1, -1).contiguous()
    if t.shape[0] == 4:
        rgb, alpha = t[:3], t[3:]
        return (rgb * alpha + (1.0 - alpha)).contiguous()
    return t.contiguous()


def pil_from(image: Image.Image | Tensor) -> Image.Image:
    """An ``as_image`` result as an 8-bit RGB PIL image (float tensors rounded to 0..255)."""
    if isinstance(image, Image.Image):
        return image
    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")
