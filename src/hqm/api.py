"""The Python API: load a trained detector, predict HOI triplets, evaluate a dataset.

::

    from hqm import HOIDetector

    det = HOIDetector.from_checkpoint("runs/demo/checkpoints/best.pt")   # or an exported directory
    preds = det.predict(["a.jpg", "b.jpg"], threshold=0.3, top_k=10)    # list[HOIPredictions]
    preds[0].save("a_hoi.png", image="a.jpg"); print(preds[0].to_json())
    preds, maps = det.predict("a.jpg", return_attention=True)           # maps[0]: (K, H, W)

Inputs: a path, a PIL image, a numpy array, a (C, H, W) tensor, a (B, C, H, W) tensor, or a list
mixing those; decoded and checked by ``hqm.data.images.as_image`` (paths and PIL images: EXIF
orientation applied, every PIL mode to RGB; arrays: (H, W), (H, W, 1|3|4) as uint8, uint16 or float
in [0, 1]; tensors: (H, W) or (1|3, H, W) as uint8 or float in [0, 1]; anything else raises
``ValueError`` naming the shape and dtype). Every image is resized like the test split (short side
``size``, long side at most ``max_size``; defaults from the checkpoint's config), normalised with the
ImageNet statistics and run in chunks of ``batch_size``. One image, one answer: inputs are grouped by
size (file headers) and only images of one input size share a forward pass, unpadded, so a list and
the images one by one give the same triplets (up to float rounding of batched kernels, ~1e-6);
``eval.batching=padded`` runs consecutive chunks padded to their largest image, as the released QPIC
code batches.
"""

from __future__ import annotations

import copy
import logging
import numbers
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hqm.data.images import ImageDecodeError, as_image
from hqm.device import resolve_device
from hqm.errors import UsageError
from hqm.structures import ClassMismatchError, DatasetMeta, HOIPredictions


class PredictOptionError(UsageError, ValueError):
    """A prediction option out of its range or of the wrong type (``threshold``, ``top_k``,
    ``batch_size``, ``size``, ``max_size``), or an input that is no image nor list of images."""


def check_predict_options(typed: dict[str, str] | None = None, **options: Any) -> None:
    """Raise :class:`PredictOptionError` naming ``key=value`` unless ``threshold`` is a number in
    [0, 1] (a triplet score) and every other option given (``top_k``, ``batch_size`` / ``batch``,
    ``size``, ``max_size``) is an integer >= 1 or ``None`` (the default). ``hqm predict``
    checks its options here too, before loading the model; ``typed``: the values as the user typed
    them (``{"threshold": "2"}``), shown in the message instead of the parsed ones."""
    for key, value in options.items():
        if value is None and key != "threshold":
            continue
        if key == "threshold":
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 1
            rule = "a number between 0 and 1 (a triplet score)"
        else:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1
            rule = "an integer >= 1"
        if not ok:  # NaN fails the comparison too
            shown = (typed or {}).get(key, repr(value))
            raise PredictOptionError(f"{key}={shown}: must be {rule}")


def _as_items(images: Any) -> list[tuple[Any, str]]:
    """Normalise the accepted input kinds to a list of (single image, name)."""
    if isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
        images = [images]
    elif torch.is_tensor(images):
        images = list(images) if images.dim() == 4 else [images]
    elif not isinstance(images, Iterable) or isinstance(images, (bytes, dict)):
        raise PredictOptionError(
            f"cannot predict on {type(images).__name__} {images!r:.40}: give a path, a PIL image, an "
            "array, a tensor, or a list of those"
        )
    items = []
    for i, im in enumerate(images):
        if not isinstance(im, (str, os.PathLike, Image.Image, np.ndarray, Tensor)):
            raise PredictOptionError(
                f"item {i} of the input list is a {type(im).__name__} ({im!r:.40}): every item must be a "
                "path, a PIL image, an array or a tensor"
            )
        if isinstance(im, (str, os.PathLike)):
            items.append((im, str(im)))
        else:
            items.append((im, getattr(im, "filename", "") or f"image_{i}"))
    return items


def _original_size(image: Any) -> tuple[int, int]:
    """(height, width) of an input item as decoded; a file's from its header and EXIF orientation
    (PIL opens lazily, decodes nothing). A file that cannot be opened gets (-1, -1): decoding it
    later reports the problem."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as f:
                w, h = f.size
                rotated = f.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientations that swap sides
                return (w, h) if rotated else (h, w)
        except (OSError, ValueError, SyntaxError):
            return -1, -1
    if isinstance(image, Image.Image):  # as_image applies its EXIF orientation too
        rotated = image.getexif().get(0x0112) in (5, 6, 7, 8)
        return (image.width, image.height) if rotated else (image.height, image.width)
    if isinstance(image, np.ndarray):
        return int(image.shape[0]), int(image.shape[1])
    return int(image.shape[-2]), int(image.shape[-1])  # (C, H, W) or (H, W) tensor


def _check_resizable(image: Image.Image | Tensor, name: str, tf) -> None:
    """Raise :class:`ImageDecodeError` naming ``name`` when the test resize ``tf`` would give the
    decoded ``image`` a side of 0 pixels (a long, thin strip: its long side is capped, so its short
    side shrinks below one pixel); such an image cannot be predicted."""
    h, w = (image.height, image.width) if isinstance(image, Image.Image) else tuple(image.shape[-2:])
    out_h, out_w = tf.output_size(h, w)
    if min(out_h, out_w) < 1:
        raise ImageDecodeError(
            f"{name}: a {w} x {h} image would be resized to {out_w} x {out_h} pixels for the detector "
            "(its long side is capped): too elongated to predict on; crop it to a less elongated part"
        )


class HOIDetector:
    """A detector ready for inference: model (eval mode), config, dataset vocabulary, transforms."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg,
        meta: DatasetMeta,
        device: str | torch.device = "auto",
        size: int | None = None,
        max_size: int | None = None,
        batch_size: int = 4,
    ):
        from hqm.detectors import build_postprocessor

        check_predict_options(size=size, max_size=max_size, batch_size=batch_size)
        self.cfg = cfg
        self.meta = meta
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.postprocessor = build_postprocessor(cfg, meta).to(self.device)
        self.size = int(size or cfg.data.test_scale)
        self.max_size = int(max_size or max(cfg.data.max_size, self.size))
        self.batch_size = batch_size

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        config: str | os.PathLike | None = None,
        overrides: list[str] | None = None,
        size: int | None = None,
        max_size: int | None = None,
        batch_size: int = 4,
    ) -> HOIDetector:
        """An ``hqm train`` checkpoint (``.pt``) or an ``hqm export`` directory, built with the
        checkpoint's own config plus ``overrides`` (``section.key=value``). A ``config`` given too is
        not applied: the values it would change are logged as a warning (logger ``hqm``). Released
        QPIC / HQM weights carry no config: pass ``config`` (e.g. ``qpic_r50_hico``) and ``overrides``.

        Raises ``ConfigError`` when released weights come without a config, and
        ``WeightsMismatchError`` (a ``ValueError``) listing the keys when the weights do not fit the
        model (e.g. a ``model.dec_layers`` override): nothing is ever half-loaded. A file that is not
        a readable checkpoint raises ``CheckpointError`` (a ``ValueError``), a missing one
        ``NotFoundError`` (a ``FileNotFoundError``), a device this machine lacks ``DeviceError``;
        all are ``hqm.errors.UserError``s."""
        from hqm.detectors import build_model
        from hqm.zoo import read_state_dict, resolve_model_config

        check_predict_options(size=size, max_size=max_size, batch_size=batch_size)  # before any loading
        device = resolve_device(device)  # a device this machine lacks: an error before any loading
        state, info = read_state_dict(path)
        resolved = resolve_model_config(info, path, config, overrides)
        for line in resolved.notes(config):
            logging.getLogger("hqm").warning(f"{path}: {line}")
        cfg = resolved.cfg
        if isinstance(info.get("meta"), dict):
            meta = DatasetMeta.from_dict(info["meta"])
        else:
            from hqm.data import build_meta

            meta = build_meta(cfg.data)
        cfg = copy.deepcopy(cfg)
        cfg.mining.strategy = "none"  # inference never mines; the miners' parameters are not needed
        cfg.model.pretrained = ""
        model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
        resolved.load_weights(model, path, list(meta.object_names), checkpoint=(state, info))
        return cls(model, cfg, meta, device, size, max_size, batch_size)

    @property
    def object_names(self) -> list[str]:
        return list(self.meta.object_names)

    @property
    def verb_names(self) -> list[str]:
        return list(self.meta.verb_names)

    # -- inference ------------------------------------------------------------------------------
    def preprocess(
        self, items: list[tuple[Any, str]], size: int | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """-> images (B, 3, H, W) normalised and padded to the largest image (no rounding), masks
        (B, H, W) True on padding, input sizes (B, 2) and original sizes (B, 2), both (h, w)."""
        from torchvision import tv_tensors

        from hqm.data import collate_fn

        tf = self._test_transforms(size)
        batch, orig = [], []
        for im, _ in items:
            im = as_image(im)  # validated RGB PIL image or (3, H, W) float tensor in [0, 1]
            if isinstance(im, Image.Image):
                orig.append((im.height, im.width))
            else:
                im = tv_tensors.Image(im)
                orig.append((int(im.shape[-2]), int(im.shape[-1])))
            x = tf.pipeline(im).as_subclass(Tensor)
            batch.append((x, {}))
        images, masks, _ = collate_fn(batch)
        sizes = torch.tensor([[b[0].shape[-2], b[0].shape[-1]] for b in batch])
        return images, masks, sizes, torch.tensor(orig)

    def input_size(self, size: int | None = None) -> int:
        """The input short side in pixels for ``size`` (default: the detector's). Raises ``ConfigError``
        (a ``ValueError``) above 4 x the config's ``data.max_size``: far beyond anything the detector
        saw, and an input that large can exhaust the memory (the process is killed without a word)."""
        from hqm.config import ConfigError

        s = int(size or self.size)
        limit = 4 * self.cfg.data.max_size  # >= 4 x data.test_scale: the config check ensures it
        if s > limit:
            raise ConfigError(
                f"size={s} is more than 4x the largest input this detector was trained for "
                f"(data.max_size={self.cfg.data.max_size}): give a size of at most {limit}"
            )
        return s

    def _test_transforms(self, size: int | None = None):
        """The deterministic resize + normalisation of inference: shortest side ``input_size(size)``,
        longest side at most max(``max_size``, that side)."""
        from hqm.data import make_test_transforms

        s = self.input_size(size)
        return make_test_transforms(s, max(self.max_size, s))

    @torch.no_grad()
    def _predict_batch(self, items, threshold, top_k, return_attention, size):
        """Predictions (and attention maps) of one chunk of items, in input order. With
        ``eval.batching=same_size`` (default) each image runs only with images of its own input size,
        unpadded: its predictions do not depend on the other items (``hqm.data.batching``)."""
        from hqm.data.batching import unpadded_groups

        images, masks, sizes, orig = self.preprocess(items, size)
        images, masks = images.to(self.device), masks.to(self.device)
        if self.cfg.eval.batching == "same_size":
            groups = unpadded_groups(images, masks, sizes)
        else:  # padded to the largest image of the chunk, as the released QPIC code batches
            groups = [(list(range(len(items))), images, masks)]
        preds: list = [None] * len(items)
        maps: list = [None] * len(items)
        for index, x, m in groups:
            names = [items[i][1] for i in index]
            p, a = self._forward(x, m, orig[index], names, threshold, top_k, return_attention)
            for j, i in enumerate(index):
                preds[i] = p[j]
                maps[i] = None if a is None else a[j]
        return preds, (maps if return_attention else None)

    def _forward(self, images, masks, orig, names, threshold, top_k, return_attention):
        from hqm.models.attention import RecordAttention

        record = RecordAttention() if return_attention else None
        if record is None:
            outputs = self.model(images, masks)
            enc = None
        else:
            enc = self.model.encode(images, masks)
            outputs = self.model.decode(enc, self.model.learnable_queries(enc), hook=record)
        preds = self.postprocessor(outputs, orig.to(self.device), names)
        preds = [p.filter(threshold, top_k).clipped() for p in preds]
        if record is None:
            return preds, None
        from hqm.viz.attention import query_attention_maps

        last = record.scores[max(record.scores)]
        padding = enc.mask.view(enc.mask.shape[0], *enc.shape)
        return preds, query_attention_maps(last, padding, [p.query_index for p in preds])

    def _chunks(
        self, items: list[tuple[Any, str]], batch_size: int, size: int | None = None
    ) -> list[list[int]]:
        """Positions of ``items`` per forward pass: with ``eval.batching=same_size`` images of one
        input size (from file headers, nothing decoded, through ``HOITransforms.output_size``) in
        chunks of ``batch_size``, in order of first appearance; with ``padded`` consecutive chunks."""
        from hqm.data.batching import same_size_groups

        if self.cfg.eval.batching == "same_size":
            tf = self._test_transforms(size)
            hw = [_original_size(im) for im, _ in items]
            return same_size_groups([tf.output_size(*s) if s[0] > 0 else s for s in hw], batch_size)
        return [list(range(s, min(s + batch_size, len(items)))) for s in range(0, len(items), batch_size)]

    def _run(self, items, threshold, top_k, return_attention, batch_size, size, skip_unreadable=False):
        """Yield (positions in ``items`` predicted, predictions, attention maps or None) per chunk."""
        tf = self._test_transforms(size)
        for chunk in self._chunks(items, batch_size or self.batch_size, size):
            kept, decoded = [], []
            for i in chunk:
                try:
                    image = as_image(items[i][0])
                    _check_resizable(image, items[i][1], tf)
                    decoded.append((image, items[i][1]))
                except ImageDecodeError as e:
                    if not skip_unreadable:
                        raise
                    logging.getLogger("hqm").warning(f"skipped an image: {e}")
                    continue
                kept.append(i)
            if kept:
                preds, maps = self._predict_batch(decoded, threshold, top_k, return_attention, size)
                yield kept, preds, maps

    def iter_predict(
        self,
        images: Any,
        threshold: float = 0.0,
        top_k: int | None = None,
        return_attention: bool = False,
        batch_size: int | None = None,
        size: int | None = None,
        skip_unreadable: bool = False,
    ) -> Iterator[tuple[list, list[HOIPredictions], list[np.ndarray] | None]]:
        """Yield (input items, predictions, attention maps or None) chunk by chunk (lazy loading).

        With ``eval.batching=same_size`` a chunk holds images of one size, chunks in order of each
        size's first appearance (not input order); ``predict`` returns input order.
        ``skip_unreadable``: an image file that cannot be decoded, or an image too elongated to
        resize (a side of 0 pixels), is left out of its chunk with one warning line naming it (logger
        ``hqm``) instead of raising ``ImageDecodeError``; the yielded items are those predicted.
        An array or tensor of a shape or dtype that cannot be read still raises ``ValueError``."""
        check_predict_options(threshold=threshold, top_k=top_k, batch_size=batch_size, size=size)
        items = _as_items(images)
        run = self._run(items, threshold, top_k, return_attention, batch_size, size, skip_unreadable)
        for kept, preds, maps in run:
            yield [items[i] for i in kept], preds, maps

    def predict(
        self,
        images: Any,
        threshold: float = 0.0,
        top_k: int | None = None,
        return_attention: bool = False,
        batch_size: int | None = None,
        size: int | None = None,
    ):
        """HOI triplets of every image (``list[HOIPredictions]`` in input order, best first, names from
        the meta; boxes absolute pixel xyxy in the image as given (after its EXIF orientation),
        clipped to it: :meth:`HOIPredictions.clipped`).

        threshold: minimum triplet score; top_k: at most this many triplets per image;
        batch_size: images per forward pass (default: the detector's); with ``eval.batching=same_size``
        (default) only images of one size share a pass, so an image's triplets do not depend on the
        other inputs; size: short side of the model input (default: the config's ``data.test_scale``).
        With ``return_attention=True`` returns ``(predictions, maps)``: ``maps[i]`` is a (K_i, h'_i, w'_i)
        float32 array in [0, 1], the last decoder layer's cross-attention (mean over heads,
        max-normalised) of the query behind each kept triplet of image ``i``, at the resolution of
        the backbone's feature map over the image (input size / stride, e.g. 25 x 38 for an 800 x 1200
        input at stride 32), whatever the photo's size; ``hqm.viz.attention.upsample_map(m, (H, W))``
        resizes one to the image.

        Raises ``PredictOptionError`` (a ``ValueError``) for an option out of range (``threshold``
        not in [0, 1]; ``top_k``, ``batch_size``, ``size`` not an integer >= 1) or an input that is no
        image; ``ValueError`` naming the file, or the shape and dtype, for an input that cannot be
        read unambiguously (see the module docstring); ``ImageDecodeError`` (a ``ValueError``) for a
        file that cannot be decoded or an image so elongated that the resize would leave a side of
        0 pixels.
        """
        check_predict_options(threshold=threshold, top_k=top_k, batch_size=batch_size, size=size)
        items = _as_items(images)
        preds: list = [None] * len(items)
        maps: list = [None] * len(items)
        for kept, p, m in self._run(items, threshold, top_k, return_attention, batch_size, size):
            for j, i in enumerate(kept):
                preds[i] = p[j]
                maps[i] = None if m is None else m[j]
        return (preds, maps) if return_attention else preds

    __call__ = predict

    # -- evaluation -----------------------------------------------------------------------------
    def evaluate(
        self,
        root: str | os.PathLike | None = None,
        dataset: str | None = None,
        split: str = "test",
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> dict[str, float]:
        """Evaluate on a dataset root (default: the checkpoint config's ``data.root``) with the
        engine's evaluator (``hqm.engine.evaluate``); returns the metrics.

        Never writes data: a root without the dataset raises ``DatasetError`` naming the missing
        file, and a dataset whose classes differ from the model's raises ``ValueError``."""
        from hqm.data import build_meta, load_annotations
        from hqm.engine.evaluate import build_eval_setup

        check_predict_options(batch_size=batch_size)
        cfg = copy.deepcopy(self.cfg)
        if root is not None:
            cfg.data.root = str(root)
        if dataset is not None:
            cfg.data.dataset = dataset
        cfg.eval.split = split
        cfg.data.num_workers = 0
        if batch_size:
            cfg.eval.batch_size = batch_size
        meta = build_meta(cfg.data)  # loading never generates data: missing files raise
        # training annotations only count the rare split: no training image is opened or needed
        train_ann = load_annotations(
            cfg.data.dataset, cfg.data.root, "train", cfg.data.on_bad_record, check_images=False
        )
        problem = self.meta.class_mismatch(meta)
        if problem:
            raise ClassMismatchError(
                f"cannot evaluate this detector on {cfg.data.dataset} at {cfg.data.root}: {problem} "
                "(model vs dataset)"
            )
        ev = build_eval_setup(cfg, train_ann, self.device)
        metrics, _ = ev.run(
            self.model, self.device, cfg.train.amp, cfg.eval.batching, show_progress=show_progress
        )
        torch.set_grad_enabled(True)
        return metrics
