"""``HOIDataset``: parsed annotations + images -> (image tensor, training target), and batch collation.

Target of one image (``Ng`` = number of distinct (subject, object) pairs after augmentation)::

    "image_id":    int, index of the image in the split
    "file_name":   str
    "orig_size":   LongTensor (2,) (h, w) of the original image
    "size":        LongTensor (2,) (h, w) after the transforms
    "obj_labels":  LongTensor (Ng,) contiguous object class (role without object: meta.no_object_class)
    "verb_labels": FloatTensor (Ng, C_verb) multi-hot
    "sub_boxes":   FloatTensor (Ng, 4) normalised cxcywh in the transformed image
    "obj_boxes":   FloatTensor (Ng, 4) normalised cxcywh (all zeros when the role has no object)
    "has_obj":     BoolTensor (Ng,)
    "inst_boxes":  FloatTensor (K, 4) normalised cxcywh of every annotated instance kept (humans and
                   objects, in annotation order; the instance set of HOTR's DETR decoder)
    "inst_labels": LongTensor (K,) contiguous object class of each instance (person = 0)
    "sub_inst":    LongTensor (Ng,) index into ``inst_*`` of each pair's human
    "obj_inst":    LongTensor (Ng,) index into ``inst_*`` of each pair's object, -1 when the role has
                   no object (V-COCO)

HOIs of the same (subject, object) are merged into one row in order of first appearance; pairs that a
crop removes are dropped without reordering the others (hard-query mining relies on the stable order).
An instance is dropped when a crop leaves it without area, and with it every pair that references it
(the same rule as before: a pair goes when its subject or existing object box vanished); the pair
boxes are always ``inst_boxes[sub_inst]`` / ``inst_boxes[obj_inst]`` (zeros for no object).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hqm.box_ops import box_xyxy_to_cxcywh
from hqm.data.batching import padded_size, size_grouped_batches
from hqm.data.images import ImageDecodeError, read_image
from hqm.data.records import DatasetError
from hqm.data.transforms import HOITransforms, transform_boxes
from hqm.structures import DatasetMeta, ImageAnnotation

TARGET_KEYS = (
    "image_id",
    "file_name",
    "orig_size",
    "size",
    "obj_labels",
    "verb_labels",
    "sub_boxes",
    "obj_boxes",
    "has_obj",
    "inst_boxes",
    "inst_labels",
    "sub_inst",
    "obj_inst",
)


def merge_pairs(ann: ImageAnnotation, meta: DatasetMeta) -> dict[str, np.ndarray]:
    """Group the HOI rows of one record by (subject, object), first-appearance order.

    Returns numpy arrays: ``sub_boxes``/``obj_boxes`` (Ng, 4) pixel xyxy (zeros for no object),
    ``obj_labels`` (Ng,), ``verb_labels`` (Ng, C_verb) float multi-hot, ``has_obj`` (Ng,) bool,
    ``sub_inst`` / ``obj_inst`` (Ng,) int64 indices into ``ann.boxes`` (-1: no object).
    """
    order: dict[tuple[int, int], int] = {}
    verbs: list[list[int]] = []
    for s, o, v in ann.hois.tolist():
        key = (s, o)
        if key not in order:
            order[key] = len(order)
            verbs.append([])
        verbs[order[key]].append(v)
    ng = len(order)
    sub = np.zeros((ng, 4), dtype=np.float32)
    obj = np.zeros((ng, 4), dtype=np.float32)
    labels = np.zeros((ng,), dtype=np.int64)
    has_obj = np.zeros((ng,), dtype=bool)
    sub_inst = np.zeros((ng,), dtype=np.int64)
    obj_inst = np.full((ng,), -1, dtype=np.int64)
    multi_hot = np.zeros((ng, meta.num_verb_classes), dtype=np.float32)
    for (s, o), i in order.items():
        sub[i] = ann.boxes[s]
        sub_inst[i], obj_inst[i] = s, o
        if o >= 0:
            obj[i] = ann.boxes[o]
            labels[i] = ann.labels[o]
            has_obj[i] = True
        else:
            if meta.no_object_class is None:
                raise DatasetError(
                    f"{ann.file_name}: HOI without object but dataset {meta.name} has no 'none' class"
                )
            labels[i] = meta.no_object_class
        multi_hot[i, verbs[i]] = 1.0
    return {
        "sub_boxes": sub,
        "obj_boxes": obj,
        "obj_labels": labels,
        "verb_labels": multi_hot,
        "has_obj": has_obj,
        "sub_inst": sub_inst,
        "obj_inst": obj_inst,
    }


def pair_class_counts(annotations: list[ImageAnnotation], meta: DatasetMeta) -> tuple[np.ndarray, np.ndarray]:
    """Label counts of the training pairs (after :func:`merge_pairs`): (objects (C_obj,), verbs
    (C_verb,)), int64. They initialise CDN's class re-weighting (``loss.reweight``)."""
    obj = np.zeros(meta.num_obj_classes, dtype=np.int64)
    verb = np.zeros(meta.num_verb_classes, dtype=np.int64)
    for ann in annotations:
        pairs = merge_pairs(ann, meta)
        np.add.at(obj, pairs["obj_labels"], 1)
        verb += pairs["verb_labels"].sum(0).astype(np.int64)
    return obj, verb


def pair_instances(pairs: dict[str, Tensor], person_label: int = 0) -> dict[str, Tensor]:
    """The instance keys (``inst_boxes``, ``inst_labels``, ``sub_inst``, ``obj_inst``; see the module
    docstring) of a target that only has its pairs, taking every pair's human and existing object as
    its own instance: instances ``0 .. Ng-1`` are the humans (label ``person_label``), then the existing
    objects in pair order; ``obj_inst`` is -1 where ``has_obj`` is False.

    ``pairs`` holds ``sub_boxes`` / ``obj_boxes`` (Ng, 4) normalised cxcywh, ``obj_labels`` (Ng,) and
    ``has_obj`` (Ng,) bool. For hand-made targets (benchmarks, tests, a user's own training loop) fed to
    a detector that reads the instance set (HOTR); the dataset loaders keep the annotated instances
    instead, which pairs share.
    """
    sub_boxes, obj_boxes, obj_labels = pairs["sub_boxes"], pairs["obj_boxes"], pairs["obj_labels"]
    n = len(sub_boxes)
    has_obj = pairs["has_obj"].bool()
    obj_inst = torch.full((n,), -1, dtype=torch.int64, device=sub_boxes.device)
    obj_inst[has_obj] = n + torch.arange(int(has_obj.sum()), device=sub_boxes.device)
    person = torch.full((n,), person_label, dtype=torch.int64, device=sub_boxes.device)
    return {
        "inst_boxes": torch.cat([sub_boxes, obj_boxes[has_obj]]),
        "inst_labels": torch.cat([person, obj_labels[has_obj].long()]),
        "sub_inst": torch.arange(n, device=sub_boxes.device),
        "obj_inst": obj_inst,
    }


def _normalise(boxes: Tensor, h: int, w: int) -> Tensor:
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    return box_xyxy_to_cxcywh(boxes) / scale


class HOIDataset(torch.utils.data.Dataset):
    """Images of one split with their HOI targets (see the module docstring for the target layout).

    annotations: parsed records (``hqm.data.load_annotations``); ``image_id`` is the index in this list.
    meta:        the dataset vocabulary (number of verbs, "no object" class).
    image_dir:   folder holding ``file_name`` of every record.
    transforms:  ``HOITransforms`` (train or test); ``None`` only converts the image to [0, 1] floats.
    """

    def __init__(
        self,
        annotations: list[ImageAnnotation],
        meta: DatasetMeta,
        image_dir: str | Path,
        transforms: HOITransforms | None = None,
    ) -> None:
        self.annotations = annotations
        self.meta = meta
        self.image_dir = Path(image_dir)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.annotations)

    def load_image(self, index: int) -> Image.Image:
        """The RGB image of record ``index``, in stored pixel order (no EXIF rotation: the annotation
        boxes use the stored pixels, see ``hqm.data.images``). Raises ``DatasetError`` naming the
        file and the record when the image cannot be decoded (e.g. truncated)."""
        ann = self.annotations[index]
        try:
            return read_image(self.image_dir / ann.file_name, exif_transpose=False)
        except ImageDecodeError as e:
            raise DatasetError(
                f"record {index} (file_name {ann.file_name!r}): {e}; replace the file or remove its record"
            ) from None

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        return self.make_item(index, self.annotations[index], self.load_image(index))

    def make_item(
        self, index: int, ann: ImageAnnotation, image: Image.Image
    ) -> tuple[Tensor, dict[str, Any]]:
        """(transformed image, target) of record ``ann`` shown by ``image`` (see the module docstring)."""
        w0, h0 = image.size
        pairs = merge_pairs(ann, self.meta)
        inst = torch.as_tensor(np.asarray(ann.boxes, dtype=np.float32)).reshape(-1, 4)
        # the loader clamps when it read the image size; clamp here too for unchecked annotations
        limit = torch.tensor([w0, h0, w0, h0], dtype=torch.float32)
        inst = torch.minimum(inst.clamp(min=0), limit)
        img, inst, inst_keep = transform_boxes(self.transforms, image, inst)
        h, w = int(img.shape[-2]), int(img.shape[-1])
        has_obj = torch.from_numpy(pairs["has_obj"])
        sub_i = torch.from_numpy(pairs["sub_inst"])
        obj_i = torch.from_numpy(pairs["obj_inst"])
        # a pair survives when its human and its existing object kept some area
        keep = inst_keep[sub_i] & (inst_keep[obj_i.clamp(min=0)] | ~has_obj)
        new_index = torch.cumsum(inst_keep.long(), 0) - 1  # instance index after the drop
        sub = inst[sub_i]
        obj = torch.where(has_obj[:, None], inst[obj_i.clamp(min=0)], torch.zeros(len(obj_i), 4))
        target = {
            "image_id": index,
            "file_name": ann.file_name,
            "orig_size": torch.tensor([h0, w0], dtype=torch.int64),
            "size": torch.tensor([h, w], dtype=torch.int64),
            "obj_labels": torch.from_numpy(pairs["obj_labels"])[keep],
            "verb_labels": torch.from_numpy(pairs["verb_labels"])[keep],
            "sub_boxes": _normalise(sub[keep], h, w),
            "obj_boxes": _normalise(obj[keep], h, w),
            "has_obj": has_obj[keep],
            "inst_boxes": _normalise(inst[inst_keep], h, w),
            "inst_labels": torch.as_tensor(np.asarray(ann.labels, dtype=np.int64)).reshape(-1)[inst_keep],
            "sub_inst": new_index[sub_i][keep],
            "obj_inst": torch.where(has_obj, new_index[obj_i.clamp(min=0)], -1)[keep],
        }
        return img, target

    def __repr__(self) -> str:
        return f"HOIDataset({self.meta.name}, {len(self)} images, image_dir={str(self.image_dir)!r})"


def collate_fn(
    batch: list[tuple[Tensor, dict[str, Any]]], size_divisibility: int = 1
) -> tuple[Tensor, Tensor, list[dict[str, Any]]]:
    """Pad a list of ``(image (3, H_i, W_i), target)`` into one batch.

    Returns ``images`` (B, 3, Hmax, Wmax) float, zero-padded at the bottom/right, ``masks``
    (B, Hmax, Wmax) bool, True on padding, and the list of targets unchanged. Hmax and Wmax are the
    largest height and width of the batch, exactly as the released DETR / QPIC code pads
    (``nested_tensor_from_tensor_list``), rounded up to a multiple of ``size_divisibility`` when it is
    > 1 (``train.size_divisibility``, training only: fewer distinct batch shapes, or one fixed
    canvas; ``benchmarks/padding.py``). Padding changes a DETR's outputs (the backbone sees the padded
    border), which is why inference batches images of one size (``hqm.data.batching``).
    """
    images = [b[0] for b in batch]
    targets = [b[1] for b in batch]
    hmax, wmax = padded_size(
        max(int(im.shape[-2]) for im in images), max(int(im.shape[-1]) for im in images), size_divisibility
    )
    out = images[0].new_zeros((len(images), images[0].shape[0], hmax, wmax))
    masks = torch.ones((len(images), hmax, wmax), dtype=torch.bool)
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        out[i, :, :h, :w] = im
        masks[i, :h, :w] = False
    return out, masks, targets


def collate_size_grouped(
    pool: list[tuple[Tensor, dict[str, Any]]], batch_size: int, size_divisibility: int = 1
) -> list[tuple[Tensor, Tensor, list[dict[str, Any]]]]:
    """A pool of ``(image, target)`` items (``train.size_grouping`` batches' worth) -> that many
    :func:`collate_fn` batches of ``batch_size`` items of similar size, in size order
    (:func:`hqm.data.batching.size_grouped_batches`; a remainder under ``batch_size`` is dropped)."""
    groups = size_grouped_batches([item[0].shape[-2:] for item in pool], batch_size, size_divisibility)
    return [collate_fn([pool[i] for i in group], size_divisibility) for group in groups]
