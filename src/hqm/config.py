"""Configuration: nested dataclasses, YAML files and ``key=value`` overrides.

A config is built in three steps, each overriding the previous one:

1. the dataclass defaults below (the QPIC-R50 HICO-DET recipe of the paper);
2. a YAML file (``configs/*.yaml``) whose nesting mirrors the dataclasses; a YAML file may name
   ``_base_: other.yaml`` (relative to itself) to inherit from;
3. command-line ``section.key=value`` overrides, parsed as YAML scalars/lists.

Unknown keys fail with a close-match suggestion; values are checked by type, by choice and by range
(``validate``). Every problem raises :class:`ConfigError` (a usage error: exit code 2 on the command
line) naming the file or key. ``save_config`` writes the resolved config.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from hqm.detectors import detector_names
from hqm.errors import UsageError

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass
class CDNConfig:
    """``model.detector: cdn`` only. The pair decoder has ``model.dec_layers`` layers."""

    interaction_layers: int = 3  # the interaction (verb) decoder's layers (CDN-S 3, CDN-B/L 6)


@dataclass
class HOTRConfig:
    """``model.detector: hotr`` only. The instance (DETR) decoder has ``model.dec_layers`` layers and
    ``model.num_queries`` instance queries; names after kakaobrain/HOTR's arguments."""

    num_hoi_queries: int = 16  # interaction queries (published: 16)
    interaction_layers: int = 6  # hoi_dec_layers
    tau: float = 0.05  # pointer temperature (published: 0.05 V-COCO, 0.2 HICO-DET); must match weights
    set_cost_idx: float = 1.0  # pointer cost weight (published Makefile: 10 V-COCO, 20 HICO-DET)
    set_cost_act: float = 1.0  # verb cost weight
    idx_loss_coef: float = 1.0  # pointer CE weight (the verb loss uses loss.verb_loss_coef)
    act_focal_alpha: float = 0.25  # focal alpha of the verb loss (published 0.25)


@dataclass
class ModelConfig:
    detector: str = "qpic"  # registry name, see hqm.detectors.DETECTORS
    backbone: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
    backbone_norm: str = "frozen"  # frozen (DETR, pretrained) | batch (trainable BN, from scratch)
    train_backbone_from: str = "layer2"  # first trainable stage: conv1 | layer1 | layer2 | ... | none
    dilation: bool = False  # DC5: dilate layer4 (stride 16 instead of 32; ResNet-50/101)
    backbone_out: str = "layer4"  # layer4 = C5 (DETR) | layer3 = C4, stride 16 | layer2 = C3, stride 8
    # channels of the stem and of layer1's blocks (the bottleneck width for ResNet-50/101), doubled
    # per stage: 64 = the standard ResNet (released weights), 32 = "ResNet-18 0.5x"; 8 ... 512
    backbone_width: int = 64
    num_queries: int = 100
    # embed (DETR/QPIC) | conditional | gaussian: spatial queries, see hqm.models.spatial_queries
    query_type: str = "embed"
    box_refine: bool = False  # refine the reference points layer by layer (needs query_type != embed)
    # encoder pair proposals + query selection (needs query_type != embed): hqm.models.encoder_proposals
    two_stage: bool = False
    group_detr: int = 1  # Group DETR: K query groups at training time (1: off), qpic / cdn
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    aux_loss: bool = True
    pretrained: str = ""  # DETR COCO checkpoint (or converted init) to start from
    cdn: CDNConfig = field(default_factory=CDNConfig)
    hotr: HOTRConfig = field(default_factory=HOTRConfig)


@dataclass
class ReweightConfig:
    """CDN's dynamic re-weighting of object / verb classes (decoupled fine-tuning stage)."""

    obj: bool = False
    verb: bool = False
    p_obj: float = 0.7
    p_verb: float = 0.7
    queue_size: int = 4704  # loss calls kept (the released default, "one epoch")
    static: bool = False  # keep the initial (training-set) weights


@dataclass
class LossConfig:
    obj_loss_coef: float = 1.0
    verb_loss_coef: float = 1.0
    bbox_loss_coef: float = 2.5
    giou_loss_coef: float = 1.0
    eos_coef: float = 0.1
    set_cost_obj_class: float = 1.0
    set_cost_verb_class: float = 1.0
    set_cost_bbox: float = 2.5
    set_cost_giou: float = 1.0
    verb_focal_alpha: float = 0.0  # 0: QPIC focal loss; 0.5: CDN (positive x alpha, negative x 1-alpha)
    # object-box L1 / GIoU normaliser: pairs (spec) | pairs_with_object (released QPIC / CDN / HQM)
    obj_box_norm: str = "pairs"
    reweight: ReweightConfig = field(default_factory=ReweightConfig)


@dataclass
class DataConfig:
    dataset: str = "hico_det"  # hico_det | vcoco | hoia | synthetic
    root: str = "data/hico_20160224_det"
    num_workers: int = 2
    on_bad_record: str = "error"  # error | skip (skip logs a count)
    # train-time multi-scale resize (short side) and random crop, test-time short side
    scales: list[int] = field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: int = 1333
    crop_resize: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_min: int = 384
    crop_max: int = 600
    test_scale: int = 800
    color_jitter: float = 0.4
    # synthetic benchmark: with generate=true (set by `hqm demo`), training writes it into `root`
    # with `synth_preset` when `root` is absent, empty or an unfinished generator folder; never
    # otherwise (evaluation and loading never generate data)
    generate: bool = False
    synth_preset: str = "default"
    # synthetic only: train on fresh generated images every epoch (hqm.data.synthetic_stream)
    synth_stream: bool = False
    # repeat-factor sampling of rare HOI classes (LVIS; hqm.data.repeat_factors): an HOI class in a
    # fraction f < t of the training images repeats its images by up to sqrt(t / f); 0 = off
    repeat_threshold: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 80
    max_steps: int = 0  # >0: stop after this many optimiser steps (smoke runs)
    batch_size: int = 2  # per process
    lr: float = 1e-4
    lr_backbone: float = 1e-5
    weight_decay: float = 1e-4
    lr_drop: int = 50  # lr_schedule=step: lr x0.1 every lr_drop epochs (0: never)
    lr_schedule: str = "step"  # step (DETR/QPIC) | cosine (see hqm.engine.lr_schedule)
    warmup_steps: int = 0  # linear lr warm-up over this many optimiser steps
    min_lr_ratio: float = 0.0  # cosine: final lr / lr
    clip_max_norm: float = 0.1
    accumulate: int = 1
    # off | bf16 | fp16 | auto (bf16 where the device runs it natively, else off: hqm.device.resolve_amp)
    amp: str = "off"
    compile: bool = False
    deterministic: bool = False
    seed: int = 42
    output_dir: str = "runs/qpic"
    # pad each training batch up to a multiple of this (detectron2's SIZE_DIVISIBILITY); 1 = to the
    # largest image of the batch, as the released QPIC code. 32 gives multi-scale training few batch
    # shapes but was not measured faster (README, benchmarks/padding.py train); a fixed canvas (e.g.
    # 64 for 64 px images) gives every batch one shape. Evaluation and prediction never round.
    size_divisibility: int = 1
    # 1: random batches (the released code). P > 1: P batches' worth of augmented images are drawn at
    # once and cut into batches of similar size (hqm.data.batching.size_grouped_batches): less padding,
    # so less compute per step (README, "Padding and batching"); the P batches run in a seeded random order
    size_grouping: int = 1
    checkpoint_every_steps: int = 0
    keep_last: int = 1
    log_every: int = 20
    # a step whose loss or gradient is not finite never reaches the optimiser: skip (log it, go on;
    # max_nonfinite_skips consecutive ones stop the run) | stop (at the first one)
    on_nonfinite: str = "skip"
    max_nonfinite_skips: int = 10
    # parameter-name prefixes that train (empty: all); the rest is frozen (CDN fine-tuning stage)
    trainable: list[str] = field(default_factory=list)


@dataclass
class EvalConfig:
    every: int = 1  # epochs between evaluations (0: only at the end)
    batch_size: int = 4
    # same_size: batches hold images of one input size, never padded, so an image's predictions do not
    # depend on the batch or the number of ranks | padded: consecutive images padded to the largest
    # (the released QPIC code; predictions depend on the batch). Also used by hqm predict / the API.
    batching: str = "same_size"
    max_dets: int = 100
    split: str = "test"
    mode: str = "default"  # default | ko (HICO-DET Known-Object)
    # HICO-DET 11-point AP recall thresholds: matlab (official ho-rcnn, 0:0.1:1) | numpy (QPIC / CDN /
    # HQM Python evaluators, np.arange(0, 1.1, 0.1)) | exact (k / 10)
    ap_thresholds: str = "matlab"
    nms: bool = False  # pair-wise NMS (CDN style)
    nms_thresh: float = 0.7
    nms_alpha: float = 1.0
    nms_beta: float = 0.5
    # move every test image's content (scale + translation of magnitude in [0, 1], boxes moved with
    # it; hqm.data.shift) to measure robustness to new positions; 0: the test set as it is
    shift: float = 0.0
    shift_seed: int = 0


@dataclass
class GBSConfig:
    iou_range: list[float] = field(default_factory=lambda: [0.4, 0.6])
    sampler: str = "per_box"  # per_box (paper) | official (released code)
    shift: str = "shift"  # shift | none | gaussian
    num_candidates: int = 64  # per_box: candidates drawn per box and round
    max_rounds: int = 8
    clip: str = "image"  # image (edge) | pixel_inside (released: W-1, H-1)
    # spatial-query detectors only: the hard queries' reference points are the encoded boxes' centres
    # (boxes, DN-DETR style) or derived from q like any positional query (learned)
    reference_points: str = "boxes"


@dataclass
class AMMConfig:
    k: int = 100
    gamma: float = 0.4
    mask: str = "exact_count"  # exact_count (released) | exact_count_per_row | bernoulli (paper Alg. 1)
    select: str = "topk"  # topk | random (w/o top-K)
    reference: str = "learnable"  # learnable | self (w/o A^l)
    target: str = "hard_queries"  # hard_queries | learnable (w/o Q^m)
    queries: str = "all"  # all (released) | matched
    skip_final_norm: bool = False


@dataclass
class AJLConfig:
    start: str = "gbs"  # gbs | amm
    reset_each_epoch: bool = False


@dataclass
class MiningConfig:
    strategy: str = "none"  # none | gbs | amm | ajl | pjl | cjl
    alpha: float = 1.0  # weight of the learnable queries' loss
    beta: float = 1.0  # weight of the hard queries' loss (released code: 0.8)
    # > 0: hard queries in the first N epochs only, the learnable queries train alone after (as YOLOX
    # turns its strong augmentation off for the last epochs); 0: every epoch (the paper)
    epochs: int = 0
    cjl_reference: str = "self"  # cjl: self (GBS queries' own unmasked pass) | learnable
    gbs: GBSConfig = field(default_factory=GBSConfig)
    amm: AMMConfig = field(default_factory=AMMConfig)
    ajl: AJLConfig = field(default_factory=AJLConfig)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    device: str = "auto"  # auto | cpu | cuda | cuda:N


class ConfigError(UsageError, ValueError):
    """A config file or override names an unknown key, a missing file or a value of the wrong type or
    outside its range (the message names the file or key). ``key``: the dotted key the error is
    about (unknown, of the wrong type, not one of its choices, out of its range), else None."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def _suggest(key: str, options: list[str], prefix: str = "", listing: str = "Valid keys") -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    if close:
        return f" Did you mean '{prefix}{close[0]}'?"
    return f" {listing}: {', '.join(prefix + o for o in sorted(options))}."


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = get_origin(typ)
    if typ is Any:
        return value
    if origin is list:
        (inner,) = get_args(typ) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, inner, where) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}", where)
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}", where)
        return int(value)
    if typ is float:
        if isinstance(value, str):  # YAML reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}", where)
        return float(value)
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}", where)
        return str(value)
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    hints = get_type_hints(type(obj))
    names = [f.name for f in fields(obj)]
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'." + _suggest(key, names, prefix), where)
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a mapping of sub-keys, got {value!r}", where)
            _merge(current, value, prefix=f"{where}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], where))


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 booleans: only true / false (any case) are booleans, so
    ``train.amp: off`` or ``train.amp=off`` stays the string "off" (YAML 1.1 reads off / on / yes /
    no as booleans); and a key given twice in one mapping is an error (YAML 1.2 forbids it; PyYAML
    keeps the last value in silence)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` with YAML 1.2 booleans (see ``_Yaml12Loader``); for config files and
    ``key=value`` overrides."""
    return yaml.load(stream, Loader=_Yaml12Loader)


def _read_yaml(
    path: Path, seen: tuple[Path, ...] = (), origin: dict[str, Path] | None = None
) -> dict[str, Any]:
    """The mapping of the YAML file ``path`` merged over its ``_base_`` chain (an ``hqm export``
    folder's ``config.yaml``: its ``config:`` section). ``origin``, when given, receives for every
    dotted key (sections too) the file that set it last."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular _base_ chain")
    try:
        with open(path) as f:
            data = load_yaml(f) or {}
    except yaml.YAMLError as e:  # its text spans lines: keep the problem and where it is
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:  # a binary file: most likely a checkpoint given where a config goes
        hint = (
            " (a checkpoint: `hqm eval CKPT`, `hqm train CONFIG --resume CKPT` or model.pretrained=CKPT)"
            if path.suffix in (".pt", ".pth", ".safetensors")
            else ""
        )
        raise ConfigError(f"{path}: not a YAML config: not a text file{hint}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    if "hqm_export" in data and isinstance(data.get("config"), dict):  # an `hqm export` folder's file:
        data = data["config"]  # its config: section is the full training config (meta: is data)
    base = data.pop("_base_", None)
    merged = {} if base is None else _read_yaml(_base_path(path, base), seen + (path,), origin)
    if origin is not None:
        _note_origin(data, path, origin)
    _deep_update(merged, data)
    return merged


def _note_origin(data: dict[str, Any], path: Path, origin: dict[str, Path], prefix: str = "") -> None:
    for key, value in data.items():
        origin[f"{prefix}{key}"] = path
        if isinstance(value, dict):
            _note_origin(value, path, origin, f"{prefix}{key}.")


def _base_path(path: Path, base: Any) -> Path:
    """The file ``_base_: base`` of the YAML file ``path`` names: relative to that file, else a
    packaged config of that name (``_base_: qpic_r50_hico``)."""
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: _base_ must be a file name, got {base!r}")
    looked = [path.parent / base]
    if Path(base).suffix == "":
        looked.append(path.parent / f"{base}.yaml")
    looked += [CONFIG_DIR / Path(base).name, CONFIG_DIR / f"{Path(base).stem}.yaml"]
    looked = list(dict.fromkeys(looked))
    for cand in looked:
        if cand.is_file():
            return cand
    raise ConfigError(
        f"{path}: _base_ file {base!r} not found (looked for {', '.join(map(str, looked))}); give a path "
        "relative to this file or the name of a packaged config"
    )


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = v


def resolve_config_path(name: str | os.PathLike) -> Path:
    """A config path as given, or the name of a packaged config (``qpic_r18_synthetic``)."""
    p = Path(name)
    if p.is_file():
        return p
    if p.is_dir():
        raise ConfigError(f"config '{name}' is a folder: give a YAML file or the name of a packaged config")
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.yaml"):
        if cand.is_file():
            return cand
    available = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(
        f"config '{name}' not found (not a file, not a packaged config)."
        + _suggest(p.stem, available, listing="Packaged configs")
    )


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["train.lr=1e-4", "data.scales=[128,160]"]`` -> nested dict."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (with ``_base_``) <- ``key=value`` overrides."""
    cfg = Config()
    origin: dict[str, Path] = {}  # dotted key -> the file (path or a _base_ of it) that set it

    def setter(key: str | None) -> Path:
        """The file that set ``key``: the config as given, or the _base_ file it comes from."""
        where = origin.get(key) if key is not None else None
        return p if where is None or where == p.resolve() else where

    if path is not None:
        p = resolve_config_path(path)
        data = _read_yaml(p, origin=origin)  # its errors name the file (p or a _base_ of it)
        try:
            _merge(cfg, data)
        except ConfigError as e:
            raise ConfigError(f"{setter(e.key)}: {e}", e.key) from None
    overridden = parse_overrides(overrides) if overrides else {}
    if overridden:
        _merge(cfg, overridden)
    try:
        validate(cfg)
    except ConfigError as e:  # a bad value a file set (not an override): name that file
        if e.key in origin and not _has_key(overridden, e.key):
            raise ConfigError(f"{setter(e.key)}: {e}", e.key) from None
        raise
    return cfg


def _has_key(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def config_from_dict(data: dict[str, Any]) -> Config:
    cfg = Config()
    _merge(cfg, data)
    validate(cfg)
    return cfg


_CHOICES = {
    "model.detector": detector_names(),
    "loss.obj_box_norm": ("pairs", "pairs_with_object"),
    "mining.gbs.clip": ("image", "pixel_inside"),
    "mining.gbs.reference_points": ("boxes", "learned"),
    "model.backbone": ("resnet18", "resnet34", "resnet50", "resnet101"),
    "model.backbone_norm": ("frozen", "batch"),
    "model.query_type": ("embed", "conditional", "gaussian"),
    "model.backbone_out": ("layer2", "layer3", "layer4"),
    "model.train_backbone_from": ("conv1", "layer1", "layer2", "layer3", "layer4", "none"),
    "data.dataset": ("hico_det", "vcoco", "hoia", "synthetic"),
    "data.on_bad_record": ("error", "skip"),
    "train.amp": ("off", "bf16", "fp16", "auto"),
    "train.lr_schedule": ("step", "cosine"),
    "train.on_nonfinite": ("skip", "stop"),
    "eval.mode": ("default", "ko"),
    "eval.split": ("train", "test"),
    "eval.batching": ("same_size", "padded"),
    "eval.ap_thresholds": ("matlab", "numpy", "exact"),
    "mining.strategy": ("none", "gbs", "amm", "ajl", "pjl", "cjl"),
    "mining.cjl_reference": ("self", "learnable"),
    "mining.gbs.sampler": ("per_box", "official"),
    "mining.gbs.shift": ("shift", "none", "gaussian"),
    "mining.amm.mask": ("exact_count", "exact_count_per_row", "bernoulli"),
    "mining.amm.select": ("topk", "random"),
    "mining.amm.reference": ("learnable", "self"),
    "mining.amm.target": ("hard_queries", "learnable"),
    "mining.amm.queries": ("all", "matched"),
    "mining.ajl.start": ("gbs", "amm"),
}


def get_key(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for p in dotted.split("."):
        node = getattr(node, p)
    return node


_FINITE = math.isfinite

#: range of every numeric key: (test, what the value must be); checked after the type
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "model.num_queries": (lambda v: v >= 1, ">= 1"),
    "model.group_detr": (lambda v: v >= 1, ">= 1 (1: one query group, Group DETR off)"),
    "model.hidden_dim": (lambda v: v >= 1, ">= 1"),
    # below 8 channels PyTorch's CPU channels_last backward of the stride-2 1x1 downsample crashes
    # the process (torch 2.14); the narrowest useful widths are 16-32 anyway
    "model.backbone_width": (lambda v: 8 <= v <= 512, ">= 8 and <= 512 (64: the standard ResNet)"),
    "model.nheads": (lambda v: v >= 1, ">= 1"),
    "model.enc_layers": (lambda v: v >= 0, ">= 0"),
    "model.dec_layers": (lambda v: v >= 1, ">= 1"),
    "model.dim_feedforward": (lambda v: v >= 1, ">= 1"),
    "model.dropout": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    "model.hotr.num_hoi_queries": (lambda v: v >= 1, ">= 1"),
    "model.hotr.interaction_layers": (lambda v: v >= 1, ">= 1"),
    "model.cdn.interaction_layers": (lambda v: v >= 1, ">= 1"),
    "model.hotr.tau": (lambda v: _FINITE(v) and v > 0, "a finite number > 0 (0.05 V-COCO, 0.2 HICO-DET)"),
    "model.hotr.set_cost_idx": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "model.hotr.set_cost_act": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "model.hotr.idx_loss_coef": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "model.hotr.act_focal_alpha": (lambda v: 0.0 < v < 1.0, "in (0, 1)"),
    "data.num_workers": (lambda v: v >= 0, ">= 0"),
    "data.scales": (lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of sizes >= 1 (pixels)"),
    "data.max_size": (lambda v: v >= 1, ">= 1 (pixels)"),
    "data.crop_resize": (lambda v: len(v) >= 1 and min(v) >= 1, "a non-empty list of sizes >= 1 (pixels)"),
    "data.crop_min": (lambda v: v >= 1, ">= 1 (pixels)"),
    "data.crop_max": (lambda v: v >= 1, ">= 1 (pixels)"),
    "data.test_scale": (lambda v: v >= 1, ">= 1 (pixels)"),
    "data.color_jitter": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "data.repeat_threshold": (lambda v: 0.0 <= v <= 1.0, "in [0, 1] (0: off)"),
    "train.epochs": (lambda v: v >= 1, ">= 1"),
    "train.max_steps": (lambda v: v >= 0, ">= 0 (0: no limit)"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.lr": (lambda v: _FINITE(v) and v > 0, "a finite number > 0"),
    "train.lr_backbone": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "train.weight_decay": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "train.lr_drop": (lambda v: v >= 0, ">= 0 (0: never)"),
    "train.warmup_steps": (lambda v: v >= 0, ">= 0"),
    "train.min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    "train.clip_max_norm": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0 (0: no clipping)"),
    "train.accumulate": (lambda v: v >= 1, ">= 1"),
    "train.seed": (lambda v: 0 <= v < 2**63, ">= 0 and < 2**63"),
    "train.checkpoint_every_steps": (lambda v: v >= 0, ">= 0 (0: only at epoch ends)"),
    "train.keep_last": (lambda v: v >= 0, ">= 0"),
    "train.log_every": (lambda v: v >= 1, ">= 1 (steps)"),
    "train.size_divisibility": (lambda v: v >= 1, ">= 1 (1: pad to the largest image of the batch)"),
    "train.size_grouping": (lambda v: v >= 1, ">= 1 (1: random batches)"),
    "train.max_nonfinite_skips": (lambda v: v >= 1, ">= 1"),
    "eval.every": (lambda v: v >= 0, ">= 0 (0: only at the end)"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "eval.max_dets": (lambda v: v >= 1, ">= 1"),
    "eval.nms_thresh": (lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    "eval.shift": (lambda v: 0.0 <= v <= 1.0, "in [0, 1] (0: no shift)"),
    "mining.alpha": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "mining.beta": (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0"),
    "mining.epochs": (lambda v: v >= 0, ">= 0 (0: every epoch)"),
    "mining.gbs.num_candidates": (lambda v: v >= 1, ">= 1"),
    "mining.gbs.max_rounds": (lambda v: v >= 1, ">= 1"),
    "mining.amm.k": (lambda v: v >= 1, ">= 1"),
    "mining.amm.gamma": (lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
}
_RANGES["loss.verb_focal_alpha"] = (lambda v: 0.0 <= v < 1.0, "in [0, 1) (0: off)")
#: every other loss weight / cost: a finite number >= 0
_LOSS_KEYS = [
    f"loss.{name}"
    for name, kind in get_type_hints(LossConfig).items()
    if kind is float and f"loss.{name}" not in _RANGES
]
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _as_override(value: Any) -> str:
    """``value`` as a user writes it in a ``key=value`` override (booleans in YAML's lower case)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def validate(cfg: Config) -> None:
    """Check every value by choice and by range, and the relations between keys. Raises
    :class:`ConfigError` naming the first key that is wrong and the values it may take."""
    for key, choices in _CHOICES.items():
        value = get_key(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}", key)
    ranges = {**_RANGES, **{k: (lambda v: _FINITE(v) and v >= 0, "a finite number >= 0") for k in _LOSS_KEYS}}
    for key, (ok, allowed) in ranges.items():
        value = get_key(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}={value!r} is out of range: it must be {allowed}", key)
    if not cfg.train.output_dir.strip():  # "" is the current folder: a run would write among its files
        raise ConfigError(
            "train.output_dir is empty: give the run's folder (e.g. runs/NAME)", "train.output_dir"
        )
    if not _DEVICE.match(cfg.device):
        raise ConfigError(f"device={cfg.device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if cfg.data.repeat_threshold > 0 and cfg.data.synth_stream:
        raise ConfigError(
            f"data.repeat_threshold={cfg.data.repeat_threshold} repeats images of the fixed training split, "
            "but data.synth_stream=true draws new ones every epoch: add data.repeat_threshold=0 to train on "
            "the stream, or data.synth_stream=false"
        )
    m = cfg.model
    if m.hidden_dim % m.nheads:
        raise ConfigError(
            f"model.hidden_dim={m.hidden_dim} is not divisible by model.nheads={m.nheads} (each attention "
            "head gets hidden_dim / nheads channels)"
        )
    if m.detector != "qpic":  # before the QPIC-only advice below, which would not apply
        for key, value, plain in (
            ("query_type", m.query_type, "embed"),
            ("box_refine", m.box_refine, False),
            ("two_stage", m.two_stage, False),
        ):
            if value != plain:
                raise ConfigError(
                    f"model.{key}={_as_override(value)} is a QPIC option; model.detector={m.detector} "
                    f"needs model.{key}={_as_override(plain)}"
                )
    # another detector's options would be ignored in silence
    for name, section, default in (("cdn", m.cdn, CDNConfig()), ("hotr", m.hotr, HOTRConfig())):
        if m.detector != name and section != default:
            changed = [f"model.{name}.{k}" for k, v in asdict(section).items() if v != getattr(default, k)]
            one = len(changed) == 1
            raise ConfigError(
                f"{', '.join(changed)} {'applies' if one else 'apply'} to model.detector={name} only (this "
                f"config has model.detector={m.detector}): remove {'it' if one else 'them'} or set "
                f"model.detector={name}"
            )
    if m.detector == "hotr" and m.group_detr != 1:
        raise ConfigError(
            f"model.group_detr={m.group_detr} (Group DETR) is built for model.detector=qpic and cdn; "
            "HOTR needs model.group_detr=1"
        )
    if m.group_detr != 1 and (cfg.loss.reweight.obj or cfg.loss.reweight.verb):
        raise ConfigError(
            f"model.group_detr={m.group_detr} cannot be combined with loss.reweight (CDN fine-tuning "
            "counts every supervised label into its class queues): set model.group_detr=1"
        )
    if m.detector == "hotr" and cfg.loss.verb_focal_alpha != LossConfig().verb_focal_alpha:
        raise ConfigError(
            "loss.verb_focal_alpha is QPIC / CDN's; HOTR's action loss takes model.hotr.act_focal_alpha"
        )
    if m.detector == "hotr" and (cfg.loss.reweight.obj or cfg.loss.reweight.verb):
        raise ConfigError(
            "loss.reweight (CDN fine-tuning) does not apply to model.detector=hotr: set "
            "loss.reweight.obj=false loss.reweight.verb=false"
        )
    needs_points = [key for key, value in (("box_refine", m.box_refine), ("two_stage", m.two_stage)) if value]
    if needs_points and m.query_type == "embed":
        named = " and ".join(f"model.{key}=true" for key in needs_points)
        raise ConfigError(
            f"{named} {'need' if len(needs_points) > 1 else 'needs'} reference points: set model.query_type "
            "to conditional or gaussian"
        )
    if cfg.data.test_scale > cfg.data.max_size:
        raise ConfigError(
            f"data.test_scale={cfg.data.test_scale} exceeds data.max_size={cfg.data.max_size}, the cap on an "
            "image's longer side: the test images would not get that short side; raise data.max_size too"
        )
    if cfg.data.crop_min > cfg.data.crop_max:
        raise ConfigError(f"data.crop_min={cfg.data.crop_min} must be <= data.crop_max={cfg.data.crop_max}")
    iou = cfg.mining.gbs.iou_range
    if len(iou) != 2 or not 0.0 < iou[0] < iou[1] < 1.0:
        raise ConfigError(f"mining.gbs.iou_range={iou} must be [lo, hi] with 0 < lo < hi < 1")
    if cfg.data.generate and cfg.data.dataset != "synthetic":
        raise ConfigError(f"data.generate=true needs data.dataset=synthetic (got {cfg.data.dataset!r})")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def merge_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of the config dict ``base`` with ``section.key=value`` overrides applied (validate it
    with ``config_from_dict``)."""
    merged = copy.deepcopy(base)
    _deep_update(merged, parse_overrides(overrides))
    return merged


def flat_keys(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(
    old: Config, new: Config, prefixes: tuple[str, ...] = ("",)
) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every leaf key starting with one of ``prefixes`` whose value
    differs, in declaration order."""
    a, b = flat_keys(config_to_dict(old)), flat_keys(config_to_dict(new))
    return [(k, a[k], b[k]) for k in a if k.startswith(prefixes) and a[k] != b[k]]


def save_config(cfg: Config, path: str | os.PathLike, header: str = "") -> None:
    """Write ``cfg`` as YAML (every key, in declaration order) to ``path``, after ``header`` (a
    comment line, e.g. the one that marks a run folder's config, ``rundir.run_config_header``)."""
    with open(path, "w") as f:
        if header:
            f.write(header.rstrip("\n") + "\n")
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)
