"""``hqm eval``: evaluate a checkpoint on the config's test split, optionally saving predictions."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from hqm.device import resolve_device
from hqm.distributed import barrier, cleanup, get_rank, get_world_size, init_distributed
from hqm.engine.evaluate import build_eval_setup
from hqm.engine.logging import LOGGER, setup_logging
from hqm.errors import UsageError
from hqm.evaluation.base import gather_records


def gather_predictions(preds: list, order: list[str]) -> list:
    """Every rank's predictions, one per image, in ``order`` (the test annotations' file names), so a
    distributed run saves the same file as one process. The sampler's padding repeats are dropped (the
    first copy in rank order wins, as in the evaluators). Identity when not distributed."""
    if get_world_size() == 1:
        return preds
    merged = gather_records({p.file_name: p for p in preds})
    return [merged[name] for name in order if name in merged]


def evaluate_checkpoint(
    config: str | None,
    weights: str,
    overrides: list[str],
    save_predictions: str | None = None,
    overwrite: bool = False,
) -> dict[str, float]:
    """``hqm eval``: metrics of the weights file ``weights`` on ``eval.split``.

    The model and the evaluation use the checkpoint's own config plus ``overrides``; a ``config``
    file given too is only compared with it (the values it would change are logged). Released
    weights carry no config: ``config`` is required. Raises ``WeightsMismatchError`` (listing the
    keys) when the weights do not fit the model, ``ValueError`` when the checkpoint's classes differ
    from the dataset's and ``DatasetError`` naming the missing file when ``data.root`` holds no such
    dataset, before any evaluation runs. ``save_predictions`` is refused with ``UsageError`` once the
    config is known, before the evaluation: with ``eval.shift > 0`` (the boxes would be in the moved
    images' coordinates, which no ground-truth file holds), a path in the data set's folders
    (``data.root``, its image and annotation folders: the annotations the evaluation reads are there;
    ``overwrite`` or not), the weights file itself, and an existing file unless ``overwrite``.
    """
    from hqm.zoo import read_state_dict, resolve_model_config

    state, info = read_state_dict(weights)
    resolved = resolve_model_config(info, weights, config, overrides, _missing_config(weights, state))
    cfg = resolved.cfg
    if save_predictions and cfg.eval.shift > 0:  # (the checkpoint's own config may set it too)
        raise UsageError(
            f"--save-predictions with eval.shift={cfg.eval.shift:g}: the boxes would be in the coordinates "
            "of the moved test images, which no ground-truth file holds (hqm eval-file would score them "
            "against the unmoved ones); save the predictions without a shift (eval.shift=0)"
        )
    if save_predictions:
        _check_predictions_path(save_predictions, overwrite, weights, cfg)
    resolve_device(cfg.device)  # a device this machine lacks: one clear error, before anything starts
    distributed, local_rank = init_distributed(cfg.device)
    try:
        metrics = _evaluate(cfg, resolved, config, weights, state, info, local_rank, save_predictions)
        barrier()  # every rank done (rank 0 wrote the predictions) before the group goes
    finally:
        # tear the gloo/NCCL group down here, not at interpreter exit, where a rank whose peer is
        # still in a collective aborted ("terminate called without an active exception")
        if distributed:
            cleanup()
    return metrics


def _missing_config(weights: str, state: dict) -> str:
    """What ``hqm eval WEIGHTS`` says when the weights carry no hqm config: the syntax that names one
    or, for DETR weights (no HOI heads to evaluate), how to start a run from them."""
    from hqm.zoo.tables import common_layout

    if common_layout(state) == "detr":
        return (
            f"{weights} holds DETR weights (no HOI heads to evaluate) and no hqm config: start a run from "
            f"them (hqm train CONFIG model.pretrained={weights}); HOI weights without a config are "
            "evaluated with one (hqm eval CONFIG weights=FILE)"
        )
    return (
        f"{weights} carries no hqm config (released weights?): give the config to build its model with: "
        f"hqm eval CONFIG weights={weights} (e.g. hqm eval qpic_r50_hico weights={weights})"
    )


def _check_predictions_path(save_predictions: str, overwrite: bool, weights: str, cfg) -> None:
    """Refuse (``UsageError``) a predictions file in the data set's folders (see
    ``hqm.data.build.dataset_folder_holding``; ``--overwrite`` would replace e.g. the test annotation
    file the evaluation reads, and any file there sits among the user's data), then what
    ``hqm.output.check_new_output`` refuses (an existing file without ``overwrite``, the weights)."""
    from hqm.data.build import dataset_folder_holding
    from hqm.output import check_new_output

    held = dataset_folder_holding(Path(save_predictions).parent, cfg.data.dataset, cfg.data.root)
    if held is not None:
        raise UsageError(
            f"--save-predictions {save_predictions} is inside {held[1]}: it would be written among the "
            "data set's files (--overwrite could replace an annotation file); choose a path outside the "
            "data set"
        )
    check_new_output(save_predictions, overwrite, (weights,))


def _evaluate(cfg, resolved, config, weights, state, info, local_rank, save_predictions):
    """The body of :func:`evaluate_checkpoint` once the process group (if any) is up."""
    from hqm.data import build_meta, load_annotations
    from hqm.detectors import build_model
    from hqm.structures import ClassMismatchError, DatasetMeta

    device = resolve_device(cfg.device, local_rank)
    setup_logging(None, get_rank() == 0)
    for line in resolved.notes(config):
        LOGGER.warning(line)
    model_cfg = copy.deepcopy(cfg)
    model_cfg.mining.strategy = "none"  # evaluation never mines; miners' weights are not needed

    def build_and_load(meta: DatasetMeta) -> torch.nn.Module:
        model = build_model(model_cfg, meta.num_obj_classes, meta.num_verb_classes)
        resolved.load_weights(model, weights, list(meta.object_names), checkpoint=(state, info))
        return model

    trained_on = DatasetMeta.from_dict(info["meta"]) if isinstance(info.get("meta"), dict) else None
    model = build_and_load(trained_on) if trained_on is not None else None  # fail fast, before the data
    problem = trained_on.class_mismatch(build_meta(cfg.data)) if trained_on is not None else None
    if problem:
        raise ClassMismatchError(
            f"{weights} was trained on other classes than {cfg.data.dataset} at {cfg.data.root}: "
            f"{problem} (checkpoint vs dataset)"
        )
    # training annotations only count the rare split: read without opening (or needing) any image
    train_ann = load_annotations(
        cfg.data.dataset, cfg.data.root, "train", cfg.data.on_bad_record, check_images=False
    )
    ev = build_eval_setup(cfg, train_ann, device, get_rank(), get_world_size())
    meta = ev.dataset.meta
    if model is None:  # released weights: the dataset gives the classes
        model = build_and_load(meta)
    model.to(device)
    metrics, preds = ev.run(model, device, cfg.train.amp, cfg.eval.batching, show_progress=get_rank() == 0)
    if save_predictions:
        preds = gather_predictions(preds, [a.file_name for a in ev.dataset.annotations])
        if get_rank() == 0:
            from hqm.data import file_ids
            from hqm.evaluation.predictions_io import save_predictions as save

            object_ids, verb_offset = file_ids(cfg.data.dataset, cfg.data.root)
            save(preds, Path(save_predictions), object_ids, verb_offset, meta.no_object_class)
            LOGGER.info(f"predictions for {len(preds)} images written to {save_predictions}")
    torch.set_grad_enabled(True)
    return metrics


def evaluate_file(
    dataset: str,
    root: str,
    predictions: str,
    mode: str = "default",
    max_dets: int = 100,
    on_bad_record: str = "error",
    ap_thresholds: str = "matlab",
) -> tuple[dict[str, float], object]:
    """Evaluate a predictions JSON file (annotation-file id conventions) without a model.

    The training annotations are read without their images (they only give the rare split).
    ap_thresholds: HICO-DET 11-point recall thresholds (``matlab`` | ``numpy`` | ``exact``).
    Returns (metrics, evaluator); ``evaluator.per_class`` holds the per-class tables. A malformed
    file (non-finite scores included) raises ``PredictionsFormatError`` naming file, record, image
    and field; so does a file none of whose records names a test image (its mAP would be a
    confident 0). Test images without a record count as images without detections, and records of
    other images are ignored: each is logged as a warning with its count."""
    from hqm.data import file_ids, load_annotations, load_meta
    from hqm.evaluation import build_evaluator
    from hqm.evaluation.predictions_io import PredictionsFormatError, load_predictions

    meta = load_meta(dataset, root, root_option="--root")
    test_ann = load_annotations(dataset, root, "test", on_bad_record, root_option="--root")
    train_ann = load_annotations(
        dataset, root, "train", on_bad_record, check_images=False, root_option="--root"
    )
    object_ids, verb_offset = file_ids(dataset, root)
    preds = load_predictions(
        predictions, object_ids, verb_offset, meta.no_object_class, meta.num_verb_classes
    )
    evaluator = build_evaluator(
        dataset, meta, test_ann, train_ann, mode=mode, max_dets=max_dets, ap_thresholds=ap_thresholds
    )
    evaluator.process(preds)
    test_names = [a.file_name for a in test_ann]
    if not evaluator.records:
        example = ""
        if preds and test_names:
            example = (
                f" (the first: {preds[0].file_name!r}; the test images are named like {test_names[0]!r})"
            )
        raise PredictionsFormatError(
            f"{predictions}: none of its {len(preds)} records names a test image of {root}"
            + example
            + "; file_name must be the name of a test image in the annotation file"
        )
    missing = len(set(test_names) - set(evaluator.records))
    if missing:
        LOGGER.warning(
            f"{predictions}: no record for {missing} of the {len(test_names)} test images; they count as "
            "images without detections"
        )
    if evaluator.num_unknown_images:
        LOGGER.warning(
            f"{predictions}: {evaluator.num_unknown_images} records name images that are not in the test "
            "set; ignored"
        )
    return evaluator.evaluate(), evaluator
