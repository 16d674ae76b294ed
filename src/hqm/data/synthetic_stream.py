"""An endless stream of fresh training images from the synthetic benchmark's seeded generator.

``data.synth_stream=true`` (synthetic data only) replaces the fixed training images of a generated
root by images drawn on the fly with the same generator and the same ``SynthConfig`` (read from
``<root>/synth_config.json``): image ``k`` of epoch ``e`` comes from the seed ``(seed, 2, e, k)``
(the files on disk use ``(seed, 0, k)`` for train and ``(seed, 1, k)`` for test), so no training image
repeats across epochs, and a run is still reproducible and resumable. An epoch keeps the length of
the fixed training split. Images are JPEG-encoded and decoded like the files on disk so that train
and test images carry the same compression artefacts. The test split stays the fixed files, and the
rare / non-rare split of the evaluation still comes from the fixed training annotations.

Note on "rare": the stream samples the same long-tailed class distribution, but a run that sees
``N`` epochs of fresh images sees about ``N`` times more examples of every class than the fixed
split holds, rare classes included.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from hqm.data import hico_det
from hqm.data.dataset import HOIDataset
from hqm.data.records import DatasetError, load_json, parse_record, parse_records
from hqm.data.synthetic import SynthConfig, class_probabilities, interaction_classes, scene_record
from hqm.data.synthetic_draw import render
from hqm.data.synthetic_scene import sample_scene
from hqm.data.transforms import HOITransforms
from hqm.structures import DatasetMeta, ImageAnnotation

STREAM_SPLIT_ID = 2
CONFIG_FILE = "synth_config.json"


def read_synth_config(root: str | Path) -> SynthConfig:
    """The ``SynthConfig`` a root was generated with (``<root>/synth_config.json``)."""
    path = Path(root) / CONFIG_FILE
    if not path.is_file():
        raise DatasetError(
            f"{path}: missing; data.synth_stream needs a root written by `hqm synth` (or hqm demo)"
        )
    data = load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object (the generator's settings)")
    names = {f.name for f in dataclasses.fields(SynthConfig)}
    return SynthConfig(**{k: v for k, v in data.items() if k in names})


class SyntheticStream(HOIDataset):
    """Fresh synthetic training images every epoch; indexed by ``(index, epoch)`` (``epoch_aware``).

    root: a generated benchmark (its vocabulary, validity matrix and generator config are used);
    meta: its ``DatasetMeta``; transforms: the training transforms. ``annotations`` holds the fixed
    training records of the root (read without opening images): the evaluation's rare split.
    """

    epoch_aware = True

    def __init__(self, root: str | Path, meta: DatasetMeta, transforms: HOITransforms | None = None):
        self.synth = read_synth_config(root)
        fixed = parse_records(
            Path(root) / hico_det.SPLITS["train"][1],
            Path(root),
            hico_det.record_rules(Path(root), "train"),
            check_images=False,
        )
        super().__init__(fixed, meta, Path(root), transforms)
        self.classes = interaction_classes(self.synth)
        self.probs = class_probabilities(self.synth)
        self.rules = hico_det.record_rules(Path(root), "train")
        self.length = self.synth.train_size

    def __len__(self) -> int:
        return self.length

    def generate(self, index: int, epoch: int) -> tuple[ImageAnnotation, Image.Image]:
        """The record and RGB image number ``index`` of epoch ``epoch`` (deterministic)."""
        cfg = self.synth
        rng = np.random.default_rng([cfg.seed, STREAM_SPLIT_ID, epoch, index])
        scene = sample_scene(rng, cfg, self.classes, self.probs)
        name = f"stream_e{epoch:04d}_{index:06d}.jpg"
        buf = io.BytesIO()
        render(scene, rng, cfg.noise, cfg.clutter).save(buf, format="JPEG", quality=cfg.jpeg_quality)
        buf.seek(0)
        with Image.open(buf) as im:
            image = im.convert("RGB")
        ann = parse_record(
            scene_record(scene, name, cfg), self.rules, f"synthetic stream of {self.image_dir}"
        )
        return ann, image

    def __getitem__(self, key: Any) -> tuple[Tensor, dict[str, Any]]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        ann, image = self.generate(int(index), int(epoch))
        return self.make_item(int(index), ann, image)

    def __repr__(self) -> str:
        return f"SyntheticStream({self.length} images per epoch, generator of {str(self.image_dir)!r})"
