"""Running a detector over an evaluation loader and feeding the evaluator."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from hqm.engine.logging import LOGGER

PRIMARY_METRIC = {"hico_det": "mAP_full", "synthetic": "mAP_full", "vcoco": "AP_role_S1", "hoia": "mAP"}


def autocast_context(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [
        {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
        for t in targets
    ]


@torch.no_grad()
def run_evaluation(
    model,
    loader,
    postprocessor,
    evaluator,
    device: torch.device,
    amp: str = "off",
    show_progress: bool = False,
) -> tuple[dict[str, float], list]:
    """Returns (metrics, this rank's HOIPredictions). Mining never runs: ``model(images, masks)``."""
    model.eval()
    evaluator.reset()
    all_preds = []
    it = loader
    if show_progress:
        from tqdm import tqdm

        it = tqdm(loader, desc="evaluate", leave=False, dynamic_ncols=True)
    for images, masks, targets in it:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with autocast_context(device, amp):
            outputs = model(images, masks)
        orig = torch.stack([t["orig_size"] for t in targets])
        preds = postprocessor(outputs, orig, [t["file_name"] for t in targets])
        evaluator.process(preds)
        all_preds.extend(preds)
    metrics = evaluator.evaluate()
    LOGGER.debug("evaluation done: %s", metrics)
    return metrics, all_preds


@dataclass
class EvalSetup:
    """Everything needed to evaluate on the config's ``eval.split``."""

    dataset: object
    loader: DataLoader
    postprocessor: torch.nn.Module
    evaluator: object


def build_eval_setup(
    cfg, train_annotations, device: torch.device, rank: int = 0, world: int = 1
) -> EvalSetup:
    """Test dataset, a loader sharded over ranks (each image once; padding duplicates are removed by
    the evaluator's gather), the post-processor and the evaluator. ``train_annotations`` give the
    rare / non-rare split."""
    from hqm.data import build_dataset, collate_fn
    from hqm.detectors import build_postprocessor
    from hqm.engine.sampling import EpochSampler, SeededDataset
    from hqm.evaluation import build_evaluator

    dataset = build_dataset(cfg.data, cfg.eval.split, train=False)
    sampler = EpochSampler(len(dataset), 0, False, rank, world)
    # private generator: iterating the loader never advances the global random stream
    loader = DataLoader(
        SeededDataset(dataset, 0),
        batch_size=cfg.eval.batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(0),
    )
    post = build_postprocessor(cfg, dataset.meta).to(device)
    evaluator = build_evaluator(
        cfg.data.dataset,
        dataset.meta,
        dataset.annotations,
        train_annotations,
        mode=cfg.eval.mode,
        max_dets=cfg.eval.max_dets,
    )
    return EvalSetup(dataset, loader, post, evaluator)
