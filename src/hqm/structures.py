"""Typed containers that flow between the data, model, evaluation and API layers.

Conventions used everywhere in the package:

* object classes are *contiguous* indices ``0..C_obj-1`` (person = 0 on HICO-DET/V-COCO/HOI-A);
  the detector's classifier has one extra logit, ``C_obj``, meaning "no object";
* verb classes are contiguous indices ``0..C_verb-1`` (annotation id - 1 for HICO-DET/HOI-A);
* boxes in annotations and predictions are absolute pixel ``xyxy`` in the *original* image;
  training targets are normalised ``cxcywh`` in the augmented image (see ``hqm.data.transforms``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hqm.errors import UsageError


class ClassMismatchError(UsageError, ValueError):
    """A model and a dataset use different class vocabularies (scores would be meaningless)."""


@dataclass
class DatasetMeta:
    """Class vocabulary of a dataset.

    ``correct_mat`` is the (C_verb, C_obj) boolean validity matrix indexed ``[verb, object]``
    (``corre_*.npy``); a prediction of an invalid (verb, object) pair gets score 0.
    ``no_object_class`` is the contiguous index standing for "the role has no object" (V-COCO: 80),
    or ``None`` when every HOI has an object.
    ``rare_classes`` lists the ``(verb, object)`` classes of a fixed official rare split (HICO-DET:
    the 138 of ho-rcnn), or ``None`` when the rare split is derived from training counts.
    """

    name: str
    object_names: list[str]
    verb_names: list[str]
    correct_mat: np.ndarray
    no_object_class: int | None = None
    rare_classes: list[tuple[int, int]] | None = None

    @property
    def num_obj_classes(self) -> int:
        return len(self.object_names)

    @property
    def num_verb_classes(self) -> int:
        return len(self.verb_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "object_names": list(self.object_names),
            "verb_names": list(self.verb_names),
            "correct_mat": np.asarray(self.correct_mat, dtype=bool).astype(int).tolist(),
            "no_object_class": self.no_object_class,
            "rare_classes": None if self.rare_classes is None else [list(c) for c in self.rare_classes],
        }

    def class_mismatch(self, other: DatasetMeta) -> str | None:
        """None when ``other`` has the same object and verb classes in the same order; otherwise a
        one-line description of the difference (a model scored on another vocabulary is wrong;
        callers raise :class:`ClassMismatchError` with it)."""
        for kind, mine, theirs in (
            ("object", list(self.object_names), list(other.object_names)),
            ("verb", list(self.verb_names), list(other.verb_names)),
        ):
            if mine != theirs:
                i = next(
                    (k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs))
                )
                a = repr(mine[i]) if i < len(mine) else "nothing"
                b = repr(theirs[i]) if i < len(theirs) else "nothing"
                return f"the {kind} classes differ ({len(mine)} vs {len(theirs)}; class {i} is {a} vs {b})"
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DatasetMeta:
        return cls(
            name=d["name"],
            object_names=list(d["object_names"]),
            verb_names=list(d["verb_names"]),
            correct_mat=np.asarray(d["correct_mat"], dtype=bool),
            no_object_class=d.get("no_object_class"),
            rare_classes=None if d.get("rare_classes") is None else [tuple(c) for c in d["rare_classes"]],
        )


@dataclass
class ImageAnnotation:
    """One parsed, validated annotation record (any of the HICO-DET / V-COCO / HOI-A formats).

    boxes:  (N, 4) float32 absolute pixel xyxy of every annotated instance.
    labels: (N,) int64 contiguous object class of every instance.
    hois:   (M, 3) int64 rows ``[subject_idx, object_idx, verb]``; ``object_idx == -1`` means the
            role has no object (V-COCO). Indices point into ``boxes``. One row per verb (not merged).
    width/height: image size in pixels when known (0 when the loader did not read it).
    """

    file_name: str
    boxes: np.ndarray
    labels: np.ndarray
    hois: np.ndarray
    width: int = 0
    height: int = 0


@dataclass
class HOIPredictions:
    """Detected <human, verb, object> triplets of one image, sorted by descending score.

    sub_boxes, obj_boxes: (K, 4) float32 absolute pixel xyxy in the original image
                          (an object box of all zeros means "no object", V-COCO roles only);
                          the model's boxes may cross the image border (QPIC does not clip them,
                          nor does the evaluation); ``HOIDetector.predict`` returns them clipped
                          (:meth:`clipped`).
    obj_labels:  (K,) int64 contiguous object class.
    verb_labels: (K,) int64 contiguous verb class.
    scores:      (K,) float32 triplet score = sigmoid(verb) * object probability.
    query_index: (K,) int64 decoder query that produced the triplet (for attention maps), or None.
    meta:        the dataset vocabulary, used for names in ``to_json`` / drawing; optional.
    """

    file_name: str
    sub_boxes: np.ndarray
    obj_boxes: np.ndarray
    obj_labels: np.ndarray
    verb_labels: np.ndarray
    scores: np.ndarray
    image_size: tuple[int, int] = (0, 0)  # (height, width) of the original image
    query_index: np.ndarray | None = None
    meta: DatasetMeta | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, keep: np.ndarray) -> HOIPredictions:
        """A new object with the rows picked by a boolean mask or an index array."""
        return HOIPredictions(
            file_name=self.file_name,
            sub_boxes=self.sub_boxes[keep],
            obj_boxes=self.obj_boxes[keep],
            obj_labels=self.obj_labels[keep],
            verb_labels=self.verb_labels[keep],
            scores=self.scores[keep],
            image_size=self.image_size,
            query_index=None if self.query_index is None else self.query_index[keep],
            meta=self.meta,
        )

    def clipped(self) -> HOIPredictions:
        """A copy with every box clipped to the image, ``[0, width] x [0, height]``
        (``torchvision.ops.clip_boxes_to_image``, as torchvision's detectors return them); unchanged
        when ``image_size`` is unknown ((0, 0)). An all-zero "no object" box stays all zeros."""
        import torch
        from torchvision.ops import clip_boxes_to_image

        h, w = self.image_size
        if h <= 0 or w <= 0:
            return self

        def clip(boxes: np.ndarray) -> np.ndarray:
            return clip_boxes_to_image(torch.from_numpy(boxes), (h, w)).numpy()

        out = self.select(np.arange(len(self)))  # a copy: no array is shared with this object
        out.sub_boxes, out.obj_boxes = clip(self.sub_boxes), clip(self.obj_boxes)
        return out

    def filter(self, threshold: float = 0.0, top_k: int | None = None) -> HOIPredictions:
        """Keep triplets with ``score >= threshold``, then at most ``top_k`` of them."""
        order = np.argsort(-self.scores, kind="stable")
        order = order[self.scores[order] >= threshold]
        if top_k is not None:
            order = order[:top_k]
        return self.select(order)

    def to_records(self) -> list[dict[str, Any]]:
        """One plain dict per triplet (names included when ``meta`` is known)."""
        out = []
        for i in range(len(self)):
            rec: dict[str, Any] = {
                "subject_box": [round(float(v), 2) for v in self.sub_boxes[i]],
                "object_box": [round(float(v), 2) for v in self.obj_boxes[i]],
                "object": int(self.obj_labels[i]),
                "verb": int(self.verb_labels[i]),
                "score": round(float(self.scores[i]), 5),
            }
            if self.meta is not None:
                rec["object_name"] = self.meta.object_names[int(self.obj_labels[i])]
                rec["verb_name"] = self.meta.verb_names[int(self.verb_labels[i])]
            out.append(rec)
        return out

    def to_json(self) -> str:
        h, w = self.image_size
        return json.dumps(
            {"file_name": self.file_name, "height": int(h), "width": int(w), "hois": self.to_records()}
        )

    def plot(self, image=None, top_k: int = 10, threshold: float = 0.0):
        """Draw the triplets on ``image`` (path, PIL image or HxWx3 uint8 array); returns a PIL image."""
        from hqm.viz.draw import draw_predictions

        return draw_predictions(image, self, top_k=top_k, threshold=threshold)

    def save(self, path, image=None, top_k: int = 10, threshold: float = 0.0) -> None:
        """Save the drawing (any image type PIL writes: ``.png``, ``.jpg``, ...) or the JSON
        (``.json``) to ``path`` (an existing file there is replaced, through a temporary file and a
        rename: a link at ``path`` is replaced, not written through; missing folders are created,
        and removed again when the write fails). ``image``: what to draw on (see :meth:`plot`;
        default: the predicted file). Raises ``hqm.errors.UsageError`` when ``path`` is the image
        drawn on (given, a PIL image opened from it, or the predicted file itself): the drawing would
        replace the photo; or when its extension names no known file type."""
        import os

        from PIL import Image

        from hqm.output import check_new_output, make_dirs, remove_empty_dirs, replacing, same_file

        path = str(path)
        source = image if isinstance(image, (str, os.PathLike)) else getattr(image, "filename", "")
        if image is None:  # plot() then draws on the predicted file: the same photo
            source = self.file_name
        if source and same_file(path, source):
            raise UsageError(f"{path} is the input image: save the drawing to another path")
        out = check_new_output(path, overwrite=True)  # not a folder, nor under a file (one-line error)
        ext = out.suffix.lower()
        image_format = None if ext == ".json" else Image.registered_extensions().get(ext)
        if ext != ".json" and image_format is None:
            what = f"unknown file type {ext}" if ext else "no file extension"
            raise UsageError(
                f"{path}: {what}; end the name with .png or .jpg (a drawing) or .json (the triplets)"
            )
        created = make_dirs(out.parent, "path")
        try:
            with replacing(out) as f:
                if image_format is None:
                    f.write(self.to_json().encode())
                else:
                    self.plot(image, top_k=top_k, threshold=threshold).save(f, format=image_format)
        except BaseException:
            remove_empty_dirs(created)
            raise
