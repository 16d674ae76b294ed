"""``hqm export``: a training checkpoint -> a self-describing model directory.

::

    OUT_DIR/
      model.safetensors   the model's state dict (tensors only; no pickle at all)
      config.yaml         hqm_export: {version, detector, dataset, metrics, source, step, epoch}
                          config:     the full resolved training config (all sections)
                          meta:       the dataset vocabulary (object / verb names, validity matrix)

``HOIDetector.from_checkpoint(OUT_DIR)`` and ``hqm eval ... weights=OUT_DIR`` read it back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


def _plain(x: Any) -> Any:
    """Tensors / numpy scalars in metrics -> YAML-friendly numbers."""
    if torch.is_tensor(x):
        return x.item() if x.numel() == 1 else x.tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        try:
            return x.item()
        except (TypeError, ValueError):
            return x
    return x


def export_checkpoint(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``config.yaml`` for a checkpoint written by ``hqm train`` into
    ``out_dir``; existing files there are refused (``UsageError``) unless ``overwrite``."""
    from safetensors.torch import save

    from hqm import __version__
    from hqm.output import check_new_output, write_atomic
    from hqm.zoo.safe_load import CheckpointError, safe_torch_load

    ckpt = safe_torch_load(checkpoint)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt or "meta" not in ckpt:
        raise CheckpointError(
            f"{checkpoint}: not an hqm training checkpoint (needs model, config and meta); "
            "convert foreign weights with `hqm convert` and fine-tune them first"
        )
    out = Path(out_dir)
    state: dict[str, Tensor] = {k: v.detach().contiguous().cpu() for k, v in ckpt["model"].items()}
    weights = save(state, metadata={"format": "pt", "hqm_version": __version__})
    cfg = ckpt["config"]
    info = {
        "hqm_export": {
            "version": __version__,
            "trained_with": ckpt.get("version", "unknown"),
            "detector": cfg.get("model", {}).get("detector", "qpic"),
            "dataset": cfg.get("data", {}).get("dataset", ""),
            "metrics": _plain(ckpt.get("metrics") or {}),
            "epoch": _plain(ckpt.get("epoch", 0)),
            "step": _plain(ckpt.get("step", 0)),
            "source": str(checkpoint),
        },
        "config": cfg,
        "meta": ckpt["meta"],
    }
    text = yaml.safe_dump(_plain(info), sort_keys=False, default_flow_style=None, width=200)
    for name in (WEIGHTS, CONFIG):
        check_new_output(out / name, overwrite)
    for name, data in ((WEIGHTS, weights), (CONFIG, text.encode())):
        write_atomic(out / name, data, "export to")
    return out


def is_exported(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / WEIGHTS).is_file() and (p / CONFIG).is_file()


def is_export_weights(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the ``model.safetensors`` of an exported directory."""
    p = Path(path)
    return p.name == WEIGHTS and is_exported(p.parent)


def read_exported(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, {"config", "meta", "hqm_export"}) of an exported directory. Raises
    ``CheckpointError`` naming the folder when it lacks a file or one of them cannot be read."""
    from hqm.zoo.safe_load import CheckpointError, read_safetensors

    p = Path(path)
    if not is_exported(p):
        raise CheckpointError(f"{p} is not an exported model directory (needs {WEIGHTS} and {CONFIG})")
    try:
        with open(p / CONFIG) as f:
            info = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"{p / CONFIG}: not valid YAML ({e})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{p / CONFIG}: not a text file (not UTF-8); re-export the model") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{p / CONFIG}: expected a mapping (config, meta), got {type(info).__name__}")
    if "config" not in info and {"model", "train"} & set(info):  # a run's config.yaml put in its place
        raise CheckpointError(
            f"{p / CONFIG}: a run's config, not an export's (config:, meta:, hqm_export:): export the "
            "checkpoint again with `hqm export`"
        )
    return read_safetensors(p / WEIGHTS), info
