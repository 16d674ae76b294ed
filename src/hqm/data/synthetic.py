"""The embedded synthetic HOI benchmark, written in the HICO-DET file format.

``generate(out_dir, preset, overrides)`` writes::

    <out>/images/train2015/synth_train_XXXXXX.jpg   <out>/images/test2015/synth_test_XXXXXX.jpg
    <out>/annotations/trainval_hico.json  test_hico.json   (HICO-DET records, see hqm.data.hico_det)
    <out>/annotations/corre_hico.npy                       (C_verb, C_obj) bool, [verb, object]
    <out>/annotations/meta.json                            vocabulary (person = object index 0)
    <out>/synth_config.json  README.txt

``synth_config.json`` is the generator's mark: written first (``"complete": false``) and again last
(``"complete": true``), with the preset and every ``SynthConfig`` value. ``generate`` writes only into
an absent or empty folder, or one that carries this mark (then it replaces its own earlier output and
leaves any other file alone); a folder holding anything else is refused with ``DatasetError``.

Images show several stick-figure people (varied poses, sizes, colours) and objects of up to 10
categories on textured backgrounds. Interactions are sampled from a long-tailed distribution over the
valid (verb, object) classes, people are posed so the verb's geometric rule holds (see
``hqm.data.synthetic_rules``), and every (person, object) pair is labelled by those rules. The first
test images each show one class in turn, so every class has at least one test instance. Each image
is generated from its own seed ``(seed, split, index)``: the same config gives identical files.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hqm.config import ConfigError, load_yaml
from hqm.data import synthetic_rules as R
from hqm.data.records import DatasetError
from hqm.data.synthetic_draw import render
from hqm.data.synthetic_rules import cfg_objects, cfg_verbs
from hqm.data.synthetic_scene import Scene, sample_scene
from hqm.errors import UsageError, output_error, write_fault
from hqm.progress import track


@dataclass
class SynthConfig:
    """Size and difficulty of the synthetic benchmark (sizes in pixels, scales relative to the image)."""

    seed: int = 0
    train_size: int = 2000
    test_size: int = 400
    image_min: int = 112  # each image side is drawn from [image_min, image_max]
    image_max: int = 160
    min_people: int = 1
    max_people: int = 3
    min_objects: int = 1
    max_objects: int = 4
    num_object_classes: int = 10  # the first N of synthetic_rules.OBJECTS (person comes on top)
    num_verbs: int = 12  # the first N of synthetic_rules.VERBS
    interact_prob: float = 0.85  # chance that a person is posed for a sampled interaction
    tail_ratio: float = 500.0  # sampling probability of the most / least frequent interaction class
    person_min: float = 0.5  # person height as a fraction of the image height
    person_max: float = 0.85
    noise: float = 8.0  # std of the background pixel noise
    clutter: int = 4  # at most this many background strokes
    jpeg_quality: int = 92

    def validate(self) -> None:
        checks = [
            (self.train_size >= 1 and self.test_size >= 1, "train_size and test_size must be >= 1"),
            (16 <= self.image_min <= self.image_max, "need 16 <= image_min <= image_max"),
            (1 <= self.min_people <= self.max_people, "need 1 <= min_people <= max_people"),
            (0 <= self.min_objects <= self.max_objects, "need 0 <= min_objects <= max_objects"),
            (
                1 <= self.num_object_classes <= len(R.OBJECTS),
                f"num_object_classes must be 1..{len(R.OBJECTS)}",
            ),
            (1 <= self.num_verbs <= len(R.VERBS), f"num_verbs must be 1..{len(R.VERBS)}"),
            (0.0 <= self.interact_prob <= 1.0, "interact_prob must be in [0, 1]"),
            (math.isfinite(self.tail_ratio) and self.tail_ratio >= 1.0, "tail_ratio must be finite and >= 1"),
            (0.05 <= self.person_min <= self.person_max <= 1.0, "need 0.05 <= person_min <= person_max <= 1"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be 1..100"),
            (math.isfinite(self.noise) and self.noise >= 0, "noise (the pixel noise's std) must be >= 0"),
            (self.clutter >= 0, "clutter (the most background strokes) must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"synthetic config: {msg}")
        if not interaction_classes(self):
            raise ConfigError(
                "synthetic config: no valid (verb, object) class with these num_verbs/num_object_classes"
            )


PRESETS: dict[str, SynthConfig] = {
    "tiny": SynthConfig(
        train_size=16, test_size=8, image_min=64, image_max=96, max_people=2, max_objects=3, clutter=2
    ),
    "default": SynthConfig(),
}


def apply_overrides(cfg: SynthConfig, overrides: list[str] | None) -> SynthConfig:
    """A copy of ``cfg`` with ``key=value`` overrides (YAML scalars); unknown keys fail with a suggestion."""
    cfg = dataclasses.replace(cfg)
    names = [f.name for f in dataclasses.fields(cfg)]
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"synthetic override {item!r} is not of the form key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        if key in ("preset", "out"):  # options of `hqm synth`, not generator keys
            raise ConfigError(
                f"{item} is not a generator key: write it as the option --{key} {shlex.quote(raw)}"
            )
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(names)}."
            raise ConfigError(f"unknown synthetic config key '{key}'.{hint}")
        value = load_yaml(raw)
        typ = type(getattr(cfg, key))
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ConfigError(f"synthetic config key '{key}': expected {typ.__name__}, got {raw!r}")
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


def interaction_classes(cfg: SynthConfig) -> list[tuple[str, str]]:
    """The valid (verb, object) classes of this config, in long-tail order (most frequent first)."""
    verbs, objects = set(cfg_verbs(cfg)), set(cfg_objects(cfg))
    return [(v, o) for v, o in R.VALID_PAIRS if v in verbs and o in objects]


def class_probabilities(cfg: SynthConfig) -> np.ndarray:
    """Geometric long tail: class k has probability proportional to ``tail_ratio ** (-k / (n - 1))``."""
    n = len(interaction_classes(cfg))
    weights = cfg.tail_ratio ** (-np.arange(n) / max(n - 1, 1))
    return weights / weights.sum()


def vocabulary(cfg: SynthConfig) -> dict[str, Any]:
    """``meta.json`` content: object names/ids (person = id 1, index 0) and verb names."""
    objects = ["person"] + cfg_objects(cfg)
    return {
        "object_names": objects,
        "object_ids": list(range(1, len(objects) + 1)),
        "verb_names": cfg_verbs(cfg),
    }


def correct_matrix(cfg: SynthConfig) -> np.ndarray:
    """(C_verb, C_obj) bool validity matrix ``[verb, object]`` (the person column is all False)."""
    objects, verbs = ["person"] + cfg_objects(cfg), cfg_verbs(cfg)
    mat = np.zeros((len(verbs), len(objects)), dtype=bool)
    for v, o in interaction_classes(cfg):
        mat[verbs.index(v), objects.index(o)] = True
    return mat


def scene_record(scene: Scene, file_name: str, cfg: SynthConfig) -> dict[str, Any]:
    """The HICO-DET record of one scene: people first (category 1), then objects."""
    objects, verbs = ["person"] + cfg_objects(cfg), cfg_verbs(cfg)
    hoi_ids = {(verbs.index(v), objects.index(o)): k + 1 for k, (v, o) in enumerate(sorted_classes(cfg))}
    anns = [{"bbox": [float(x) for x in b], "category_id": 1} for b in scene.person_boxes]
    anns += [
        {"bbox": [float(x) for x in o.box], "category_id": objects.index(o.name) + 1} for o in scene.objects
    ]
    n_people = len(scene.people)
    hois = []
    for j, i, v in scene.labels:
        vi, oi = verbs.index(v), objects.index(scene.objects[i].name)
        hois.append(
            {
                "subject_id": j,
                "object_id": n_people + i,
                "category_id": vi + 1,
                "hoi_category_id": hoi_ids[(vi, oi)],
            }
        )
    return {
        "file_name": file_name,
        "height": scene.height,
        "width": scene.width,
        "annotations": anns,
        "hoi_annotation": hois,
    }


def sorted_classes(cfg: SynthConfig) -> list[tuple[str, str]]:
    """Valid classes ordered by (verb, object) index: ``hoi_category_id`` = position + 1."""
    objects, verbs = ["person"] + cfg_objects(cfg), cfg_verbs(cfg)
    return sorted(interaction_classes(cfg), key=lambda vo: (verbs.index(vo[0]), objects.index(vo[1])))


def _make_split(out: Path, split: str, cfg: SynthConfig) -> list[dict[str, Any]]:
    folder, size, split_id = (
        ("train2015", cfg.train_size, 0) if split == "train" else ("test2015", cfg.test_size, 1)
    )
    image_dir = out / "images" / folder
    image_dir.mkdir(parents=True, exist_ok=True)
    classes, probs = interaction_classes(cfg), class_probabilities(cfg)
    records = []
    for k in track(range(size), size, f"synthetic {split} images", "images"):
        rng = np.random.default_rng([cfg.seed, split_id, k])
        # the first test images show every class once: each class has at least one test instance
        force = k if split == "test" and k < len(classes) else None
        scene = sample_scene(rng, cfg, classes, probs, force)
        name = f"synth_{split}_{k:06d}.jpg"
        render(scene, rng, cfg.noise, cfg.clutter).save(image_dir / name, quality=cfg.jpeg_quality)
        records.append(scene_record(scene, name, cfg))
    return records


def statistics(records: list[dict[str, Any]], cfg: SynthConfig) -> dict[str, Any]:
    """Images, people, objects, labelled pairs and per-class (``"verb object"``) HOI counts."""
    objects, verbs = ["person"] + cfg_objects(cfg), cfg_verbs(cfg)
    counts: Counter[str] = Counter()
    pairs = set()
    for r_i, r in enumerate(records):
        for h in r["hoi_annotation"]:
            obj = objects[r["annotations"][h["object_id"]]["category_id"] - 1]
            counts[f"{verbs[h['category_id'] - 1]} {obj}"] += 1
            pairs.add((r_i, h["subject_id"], h["object_id"]))
    n_people = sum(a["category_id"] == 1 for r in records for a in r["annotations"])
    n_boxes = sum(len(r["annotations"]) for r in records)
    per_class = {f"{v} {o}": counts.get(f"{v} {o}", 0) for v, o in sorted_classes(cfg)}
    return {
        "images": len(records),
        "people": n_people,
        "objects": n_boxes - n_people,
        "pairs": len(pairs),
        "hois": sum(counts.values()),
        "per_class": per_class,
        "rare_classes": sum(1 for c in per_class.values() if c < 10),
    }


def _readme(cfg: SynthConfig, stats: dict[str, Any]) -> str:
    voc = vocabulary(cfg)
    objects = ", ".join(f"{i}: {n}" for i, n in zip(voc["object_ids"], voc["object_names"]))
    lines = [
        "hqm synthetic HOI benchmark (HICO-DET file format; read with data.dataset=synthetic).",
        "",
        f"Objects (category id: name): {objects}",
        f"Verbs (category id: name): {', '.join(f'{i + 1}: {n}' for i, n in enumerate(voc['verb_names']))}",
        "",
        "A verb is labelled for a (person, object) pair when its geometric rule holds and the pair is valid",
        "(annotations/corre_hico.npy). u = person height (head top to feet):",
    ]
    lines += [f"  {v}: {R.RULE_TEXT[v]}" for v in voc["verb_names"]]
    lines += [
        "",
        f"Training statistics: {stats['images']} images, {stats['pairs']} labelled pairs, "
        f"{stats['hois']} HOIs, {stats['rare_classes']} rare classes (< 10 training HOIs).",
        "Per class:",
    ]
    lines += [f"  {k}: {n}" for k, n in stats["per_class"].items()]
    lines += ["", "Config: " + json.dumps(dataclasses.asdict(cfg)), ""]
    return "\n".join(lines)


MARKER = "synth_config.json"
_IMAGE_INDEX = re.compile(r"(\d{6})\.jpg")


def read_marker(root: str | Path) -> dict[str, Any] | None:
    """The generator's mark of ``root`` (``synth_config.json`` holding a preset and a seed), or None.
    Folders written before the mark had a "complete" flag count as complete."""
    try:
        data = json.loads((Path(root) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or "preset" not in data or "seed" not in data:
        return None
    return {"complete": True, **data}


def check_output_dir(out: Path) -> None:
    """Raise ``DatasetError`` unless ``out`` is absent, an empty folder or a folder the generator made."""
    if out.exists() and not out.is_dir():
        raise DatasetError(f"cannot write the synthetic benchmark to {out}: it is a file")
    if not out.exists() or read_marker(out) is not None:
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
        raise DatasetError(
            f"refusing to write the synthetic benchmark into {out}: it holds files the generator did not "
            f"write ({shown}); give an absent or empty folder, or one written by `hqm synth`"
        )


def check_replaces_nothing_else(out: Path, preset: str, cfg: SynthConfig, overwrite: bool) -> None:
    """Raise ``UsageError`` when ``out`` holds a complete benchmark of another preset or config and
    ``overwrite`` is False: regenerating would silently swap the data set (its annotations and
    images) under the runs that use it. The same preset and config rewrite the same bytes."""
    mark = read_marker(out)
    if mark is None or not mark["complete"] or overwrite:
        return
    new = {"preset": preset, **dataclasses.asdict(cfg)}
    changed = [f"{k} {mark.get(k)!r} -> {v!r}" for k, v in new.items() if mark.get(k) != v]
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        raise UsageError(
            f"{out} holds a synthetic benchmark of another config ({shown}); writing this one replaces its "
            "annotations and images: give another --out, or pass --overwrite"
        )


def _write_marker(out: Path, preset: str, cfg: SynthConfig, complete: bool) -> None:
    mark = {"generator": "hqm synth", "complete": complete, "preset": preset, **dataclasses.asdict(cfg)}
    with open(out / MARKER, "w") as f:
        json.dump(mark, f, indent=1)


def _remove_stale_images(out: Path, cfg: SynthConfig) -> None:
    """Drop images an earlier, larger generation into this (marked) folder left behind."""
    for split, folder, size in (("train", "train2015", cfg.train_size), ("test", "test2015", cfg.test_size)):
        for p in (out / "images" / folder).glob(f"synth_{split}_*.jpg"):
            m = _IMAGE_INDEX.fullmatch(p.name[len(f"synth_{split}_") :])
            if m and int(m.group(1)) >= size:
                p.unlink()


def generate(
    out_dir: str | Path, preset: str = "default", overrides: list[str] | None = None, overwrite: bool = False
) -> Path:
    """Write the synthetic benchmark of ``preset`` (+ ``key=value`` SynthConfig overrides) to ``out_dir``.

    ``out_dir`` must be absent, empty or written by this generator (see the module docstring); any
    other folder raises ``DatasetError`` before anything is written, and a complete benchmark of
    another preset or config ``UsageError`` unless ``overwrite``. Deterministic: the same preset
    and overrides give byte-identical files. Returns the root path.
    """
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown synthetic preset {preset!r}; expected one of {', '.join(PRESETS)}.{hint}")
    cfg = apply_overrides(PRESETS[preset], overrides)
    out = Path(out_dir)
    check_output_dir(out)
    check_replaces_nothing_else(out, preset, cfg, overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_marker(out, preset, cfg, complete=False)
        (out / "annotations").mkdir(exist_ok=True)
        train = _make_split(out, "train", cfg)
        test = _make_split(out, "test", cfg)
        for name, records in (("trainval_hico.json", train), ("test_hico.json", test)):
            with open(out / "annotations" / name, "w") as f:
                json.dump(records, f, separators=(",", ":"))
        np.save(out / "annotations" / "corre_hico.npy", correct_matrix(cfg))
        with open(out / "annotations" / "meta.json", "w") as f:
            json.dump(vocabulary(cfg), f, indent=1)
        (out / "README.txt").write_text(_readme(cfg, statistics(train, cfg)))
        _remove_stale_images(out, cfg)
        _write_marker(out, preset, cfg, complete=True)
    except OSError as e:  # a full or read-only disk: one line naming the folder (hqm.errors)
        if not write_fault(e):
            raise
        started = (out / MARKER).is_file()  # marked incomplete: the next run rewrites it
        note = "the files written so far are marked incomplete" if started else ""
        raise output_error(out, e, "write the synthetic benchmark to", note) from None
    return out
