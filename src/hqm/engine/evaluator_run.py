"""``hqm eval``: evaluate a checkpoint on the config's test split, optionally saving predictions."""

from __future__ import annotations

from pathlib import Path

import torch

from hqm.config import load_config
from hqm.engine.distributed import get_rank, get_world_size, init_distributed
from hqm.engine.evaluate import build_eval_setup, run_evaluation
from hqm.engine.logging import LOGGER, setup_logging
from hqm.engine.trainer import resolve_device


def evaluate_checkpoint(config: str, weights: str, overrides: list[str],
                        save_predictions: str | None = None) -> dict[str, float]:
    from hqm.data import load_annotations
    from hqm.models import build_model
    from hqm.zoo import load_weights

    cfg = load_config(config, overrides)
    _, local_rank = init_distributed(cfg.device)
    device = resolve_device(cfg.device, local_rank)
    setup_logging(None, get_rank() == 0)
    train_ann = load_annotations(cfg.data.dataset, cfg.data.root, "train", cfg.data.on_bad_record)
    ev = build_eval_setup(cfg, train_ann, device, get_rank(), get_world_size())
    meta = ev.dataset.meta
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
    load_weights(model, weights)
    model.to(device)
    metrics, preds = run_evaluation(model, ev.loader, ev.postprocessor, ev.evaluator, device, cfg.train.amp,
                                    show_progress=True)
    if save_predictions:
        from hqm.evaluation.predictions_io import write_predictions

        write_predictions(Path(save_predictions), preds, cfg.data.dataset, meta)
        LOGGER.info(f"predictions written to {save_predictions}")
    torch.set_grad_enabled(True)
    return metrics
