"""Running a detector over an evaluation loader and feeding the evaluator."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from hqm.device import resolve_amp
from hqm.engine.logging import LOGGER
from hqm.engine.signals import ignore_stop_signals
from hqm.progress import track

PRIMARY_METRIC = {"hico_det": "mAP_full", "synthetic": "mAP_full", "vcoco": "AP_role_S1", "hoia": "mAP"}


def autocast_context(device: torch.device, amp: str):
    """``train.amp`` (off | bf16 | fp16 | auto: ``hqm.device.resolve_amp``) -> the autocast context."""
    amp = resolve_amp(amp, device)
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
    should_stop: Callable[[], bool] | None = None,
    batching: str = "same_size",
) -> tuple[dict[str, float] | None, list]:
    """Returns (metrics: fractions in [0, 1], this rank's HOIPredictions). Mining never runs:
    ``model(images, masks)``.

    show_progress: a tqdm bar on a terminal, a log line every 30 s otherwise (``hqm.progress``).
    should_stop: asked before every batch (a collective under DDP: every rank has as many batches);
    when it says so the evaluation ends early and the metrics are None (training after SIGTERM).
    batching: ``same_size`` runs every loader batch as unpadded same-size sub-batches
    (``hqm.data.batching.unpadded_groups``), so each image's predictions, hence the metrics, do not
    depend on ``eval.batch_size`` or the number of ranks (up to float rounding of batched kernels);
    ``padded`` runs the padded batch as the released QPIC code does (predictions depend on it)."""
    from hqm.data.batching import unpadded_groups

    model.eval()
    evaluator.reset()
    all_preds = []
    it = track(loader, len(loader), "evaluate", "batches", enabled=show_progress)
    for images, masks, targets in it:
        if should_stop is not None and should_stop():
            return None, all_preds
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        if batching == "same_size":
            groups = unpadded_groups(images, masks, [t["size"] for t in targets])
        else:
            groups = [(list(range(len(targets))), images, masks)]
        for index, x, m in groups:
            with autocast_context(device, amp):
                outputs = model(x, m)
            orig = torch.stack([targets[i]["orig_size"] for i in index])
            preds = postprocessor(outputs, orig, [targets[i]["file_name"] for i in index])
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

    def run(
        self,
        model,
        device: torch.device,
        amp: str,
        batching: str,
        show_progress: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[dict[str, float] | None, list]:
        """:func:`run_evaluation` of ``model`` on this setup's loader, post-processor and evaluator."""
        return run_evaluation(
            model,
            self.loader,
            self.postprocessor,
            self.evaluator,
            device,
            amp,
            show_progress=show_progress,
            should_stop=should_stop,
            batching=batching,
        )


def input_sizes(dataset) -> list[tuple]:
    """Per image of ``dataset``, the key that groups it for same-size evaluation batches: its input
    (h, w) after the deterministic test transforms (``HOITransforms.output_size``; different stored
    sizes often give one input size, e.g. every 128 x W image of a 128-px short side), or its stored
    (width, height) when the size is unknown (0) or the dataset has no such transforms. A wrong key
    costs speed only: ``run_evaluation`` still splits any mixed batch into unpadded same-size passes."""
    transforms = getattr(dataset, "transforms", None)
    keys: list[tuple] = []
    for a in dataset.annotations:
        if transforms is None or getattr(transforms, "train", True) or a.width <= 0 or a.height <= 0:
            keys.append(("stored", a.width, a.height))
        else:
            keys.append(transforms.output_size(a.height, a.width))
    return keys


def build_eval_setup(
    cfg, train_annotations, device: torch.device, rank: int = 0, world: int = 1
) -> EvalSetup:
    """Test dataset, a loader sharded over ranks (each image once; padding duplicates are removed by
    the evaluator's gather), the post-processor and the evaluator. ``train_annotations`` give the
    rare / non-rare split. With ``eval.shift > 0`` the test images' content and ground truth are moved
    (``hqm.data.shift``).

    With ``eval.batching=same_size`` the loader batches images of one input size together
    (``SizeGroupedBatchSampler`` keyed by :func:`input_sizes`), so batches are full and need no
    padding; ``padded`` batches consecutive images of the shard (the released QPIC code:
    ``eval.batch_size=2``, one process for its evaluation command, 8 processes for the numbers it
    logs while training)."""
    from hqm.data import build_dataset, collate_fn
    from hqm.data.batching import SizeGroupedBatchSampler
    from hqm.detectors import build_postprocessor
    from hqm.engine.sampling import EpochSampler, SeededDataset
    from hqm.evaluation import build_evaluator

    dataset = build_dataset(cfg.data, cfg.eval.split, train=False)
    if cfg.eval.shift > 0:
        from hqm.data.shift import ShiftedDataset

        dataset = ShiftedDataset(dataset, cfg.eval.shift, cfg.eval.shift_seed)
    sampler = EpochSampler(len(dataset), 0, False, rank, world)
    if cfg.eval.batching == "same_size":
        sizes = input_sizes(dataset)
        batching = {"batch_sampler": SizeGroupedBatchSampler(sampler, sizes, cfg.eval.batch_size)}
    else:
        batching = {"batch_size": cfg.eval.batch_size, "sampler": sampler}
    # private generator: iterating the loader never advances the global random stream
    loader = DataLoader(
        SeededDataset(dataset, 0),
        **batching,
        collate_fn=collate_fn,
        num_workers=cfg.data.num_workers,
        worker_init_fn=ignore_stop_signals,
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
        ap_thresholds=cfg.eval.ap_thresholds,
    )
    return EvalSetup(dataset, loader, post, evaluator)
