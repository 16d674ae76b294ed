"""The training engine: data, model, optimiser, schedule, the step loop, evaluation and checkpoints.

Call order of one run (``Trainer.fit``)::

    setup (device, process group, seeds, run dir) -> build data / model / optimiser -> [resume]
    -> config.yaml (a set-up that fails leaves the run dir as it found it) -> for each epoch:
    train_one_epoch (optimiser steps, see ``train_step``; periodic step checkpoints) -> lr step
    -> last.pt -> evaluate every ``eval.every`` epochs (results.csv, best.pt) -> final evaluation.

One optimiser step (``train_step``) takes ``train.accumulate`` micro-batches: mining schedule (a pure
function of the global step, so identical on every rank and restored on resume) -> global loss
normalisers of the whole window (one all-reduce) -> per micro-batch: forward under autocast ->
criterion in fp32 -> backward (DDP gradient sync only on the last micro-batch) -> unscale (fp16) ->
clip -> optimiser step. With global normalisers, ``N ranks x batch b x accumulate a`` computes the
gradient of one process with batch ``N*b*a`` (exactly, with frozen BN and no dropout).

Reproducibility: data order and augmentation are functions of (seed, epoch, index) (``sampling``);
the loaders draw their base seeds from private generators, so the global random stream (dropout,
mining) only advances inside forward; checkpoints carry every rank's random state. A run killed
and resumed from a step checkpoint ends with the same weights as an uninterrupted one (CPU,
``train.deterministic``).

Unused parameters: the criterion touches idle miners' parameters with a zero (AJL), so DDP runs
without ``find_unused_parameters``. Parameters outside ``train.trainable`` (when given) are frozen
before the optimiser and DDP are built (CDN's decoupled fine-tuning stage).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import shlex
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from hqm.config import Config, ConfigError, config_from_dict, config_to_dict, save_config
from hqm.data import build_dataset, check_synthetic_preset, collate_fn, ensure_synthetic
from hqm.data.build import dataset_folder_holding
from hqm.data.dataset import collate_size_grouped, pair_class_counts
from hqm.data.repeat_factors import repeat_factors
from hqm.detectors import build_criterion, build_model
from hqm.device import resolve_amp, resolve_device
from hqm.distributed import (
    all_gather_object,
    all_reduce_sum,
    cleanup,
    get_rank,
    get_world_size,
    init_distributed,
    is_main_process,
)
from hqm.engine.checkpoint import (
    CheckpointManager,
    read_training_state,
    resolve_resume,
    rng_state,
    set_rng_state,
)
from hqm.engine.curves import plot_curves
from hqm.engine.evaluate import (
    PRIMARY_METRIC,
    autocast_context,
    build_eval_setup,
    move_targets,
)
from hqm.engine.logging import (
    LOGGER,
    RunWriter,
    SmoothedMeter,
    TrainProgress,
    close_log_file,
    setup_logging,
)
from hqm.engine.lr_schedule import build_lr_schedule
from hqm.engine.nonfinite import NonFiniteGuard
from hqm.engine.resume_policy import ResumeError, check_compatible, describe
from hqm.engine.rundir import (
    RunDirError,
    abandon_run_dir,
    claim_run_dir,
    is_elastic_restart,
    run_config_header,
)
from hqm.engine.sampling import EpochSampler, SeededDataset
from hqm.engine.signals import StopSignals, ignore_stop_signals, signal_name
from hqm.errors import Interrupted, OutputError, UserError, output_error, write_fault
from hqm.evaluation import format_table
from hqm.mining.schedule import build_schedule
from hqm.structures import DatasetMeta


def set_seed(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def freeze_except(model: torch.nn.Module, prefixes: list[str]) -> int:
    """Freeze every parameter whose name starts with none of ``prefixes`` (empty: change nothing).
    Returns the number of parameters left trainable. ``miners`` (the HQM plug-in's parameters) may
    name nothing: a config that lists it serves its ``mining.strategy=none`` baseline too (e.g.
    ``hotr_r50_hico``, the base of ``hotr_r50_hico_hqm``). Any other prefix that names no parameter
    raises ``ConfigError``."""
    if prefixes:
        names = [n for n, _ in model.named_parameters()]
        unknown = [p for p in prefixes if p != "miners" and not any(n.startswith(p) for n in names)]
        if unknown:
            raise ConfigError(
                f"train.trainable names no parameter of this model: {', '.join(unknown)} (give "
                "parameter-name prefixes, e.g. transformer.decoder)"
            )
        for name, p in model.named_parameters():
            if not name.startswith(tuple(prefixes)):
                p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def param_groups(model: torch.nn.Module, lr: float, lr_backbone: float) -> list[dict]:
    # the backbone: ``backbone.*`` (QPIC / CDN) or ``detr.backbone.*`` (HOTR's instance detector)
    def is_backbone(n: str) -> bool:
        return n.startswith(("backbone.", "detr.backbone."))

    backbone = [p for n, p in model.named_parameters() if is_backbone(n) and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not is_backbone(n) and p.requires_grad]
    return [{"params": rest, "lr": lr}, {"params": backbone, "lr": lr_backbone}]


def build_optimizer(model: torch.nn.Module, cfg_train, device: torch.device) -> torch.optim.AdamW:
    """AdamW over two groups (transformer + heads at ``lr``, backbone at ``lr_backbone``).

    Fused (one kernel over all parameters) on CUDA and on the CPU: on the CPU about 4x faster than the
    per-tensor loop (R50 QPIC on 2 cores: about 20 ms instead of 93 ms a step, torch.profiler)."""
    return torch.optim.AdamW(
        param_groups(model, cfg_train.lr, cfg_train.lr_backbone),
        weight_decay=cfg_train.weight_decay,
        fused=device.type in ("cuda", "cpu"),
    )


def use_channels_last(device: torch.device, requested: bool | None, deterministic: bool = False) -> bool:
    """channels_last (NHWC) for the backbone convolutions. Automatic: on CUDA (cuDNN's tensor-core
    kernels prefer it) and on the CPU unless ``train.deterministic`` (oneDNN skips its layout
    reorders: R50 / 512 px / batch 2 fp32 step 2.36 s instead of 2.60 s on a 2-core AVX-512 machine,
    see benchmarks/throughput.py; but its rounding then depends on the batch size, which breaks the
    exact DDP / accumulation equivalences that deterministic runs are tested for)."""
    if requested is not None:
        return requested
    return device.type == "cuda" or (device.type == "cpu" and not deterministic)


def resume_position(step: int, epochs_done: int, step_in_epoch: int) -> str:
    """Where a checkpoint stands, as the console counts epochs (from 1): ``step 50 (25 epochs
    done)`` at an epoch end, ``step 51 (step 1 of epoch 26)`` within one (also an interrupt at an
    epoch's last step, before its end-of-epoch evaluation: ``step 50 (step 2 of epoch 25)``; the
    checkpoint's ``epoch`` counts finished epochs, so it said "epoch 24" there)."""
    if step_in_epoch == 0:
        return f"step {step} ({epochs_done} epochs done)"
    return f"step {step} (step {step_in_epoch} of epoch {epochs_done + 1})"


@contextlib.contextmanager
def evaluation_layout(model: torch.nn.Module, channels_last: bool):
    """Evaluate in the memory format ``hqm eval`` and the API use (the default NCHW): a backbone
    trained in channels_last goes back to it for the evaluation and returns afterwards. oneDNN rounds
    differently in NHWC, which under bf16 moved a demo checkpoint's Full mAP by up to 0.3 points and
    its non-rare mAP by up to 1 point between the trainer's evaluation and ``hqm eval`` of the saved
    weights (the same checkpoint, the same data); in NCHW the recorded metrics are those ``hqm eval``
    reproduces, and each image's predictions do not depend on its batch-mates."""
    if not channels_last:
        yield
        return
    model.backbone.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        model.backbone.to(memory_format=torch.channels_last)


def check_outside_dataset(out: Path, cfg_data) -> None:
    """Refuse (``ConfigError``) a ``train.output_dir`` that is ``data.root`` itself or lies in the
    data set's image or annotation folders: a run would write its lock, logs and checkpoints among
    the user's data (``hqm predict`` refuses its output in the input folder likewise)."""
    held = dataset_folder_holding(out, cfg_data.dataset, cfg_data.root)
    if held is not None:
        inside, what = held
        out = out.resolve()
        raise ConfigError(
            f"train.output_dir={out} is {'' if out == inside else 'inside '}{what}: a run would write "
            "its files among the data; choose a folder outside it (e.g. runs/NAME)"
        )


class Trainer:
    """Builds everything from a ``Config`` and trains.

    resume: a checkpoint path, a run folder or ``auto`` (see ``checkpoint.resolve_resume``).
    channels_last: backbone in NHWC memory format; None = automatic (see ``use_channels_last``)."""

    def __init__(
        self,
        cfg: Config,
        resume: str | None = None,
        channels_last: bool | None = None,
        overwrite: bool = False,
    ):
        resume_arg = resume
        self.cfg = cfg
        resolve_device(cfg.device)  # a device this machine lacks: one clear error, before anything starts
        self.distributed, local_rank = init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, local_rank)
        self.rank, self.world = get_rank(), get_world_size()
        self.main = is_main_process()
        self.out = Path(cfg.train.output_dir)
        # a torchrun elastic restart of the launch that owns the folder resumes its newest checkpoint
        restart = all_gather_object(is_elastic_restart(self.out) if self.main else None)[0]
        # before anything is written: refuse settings the resumed run cannot take, lock the folder
        resume, ckpt = resolve_resume("auto", self.out) if restart else (None, None)
        if resume is None:
            resume, ckpt = resolve_resume(resume_arg, self.out)
        changes = check_compatible(config_from_dict(ckpt["config"]), cfg, resume) if ckpt else None
        if cfg.data.generate:  # a benchmark of another preset is refused before the folder is claimed
            check_synthetic_preset(cfg.data.root, cfg.data.synth_preset)
        check_outside_dataset(self.out, cfg.data)
        self.run_lock = self._claim_run_dir(resume, overwrite, restart)
        try:
            self._build(cfg, resume, ckpt, changes, channels_last, restart)
        except BaseException:
            if self.run_lock is not None:  # rank 0: a refused run leaves the folder as it found it
                if "log.txt" not in self.run_lock.held_before:  # else the refusal is appended to it
                    close_log_file()
                abandon_run_dir(self.run_lock)
            raise

    def _build(self, cfg: Config, resume, ckpt, changes, channels_last, restart: bool) -> None:
        """Everything after the run directory is claimed (see ``__init__``)."""
        if self.main:
            (self.out / "checkpoints").mkdir(parents=True, exist_ok=True)
        setup_logging(self.out if self.main else None, self.main)
        if restart and self.main:
            LOGGER.warning(
                f"torchrun restart {os.environ.get('TORCHELASTIC_RESTART_COUNT')} of this launch: "
                + (f"resuming from {resume}" if resume else "no checkpoint yet, starting over")
            )
        for line in describe(changes) if changes else []:
            LOGGER.info(line)
        set_seed(cfg.train.seed, cfg.train.deterministic)

        if cfg.data.generate:  # hqm demo: write the synthetic benchmark if data.root lacks it
            ensure_synthetic(cfg.data.root, cfg.data.synth_preset)
        self.train_set = build_dataset(cfg.data, "train", train=True)
        self.meta: DatasetMeta = self.train_set.meta
        self.eval_setup = build_eval_setup(
            cfg, self.train_set.annotations, self.device, self.rank, self.world
        )
        LOGGER.info(
            f"data: {cfg.data.dataset} at {cfg.data.root}: {len(self.train_set)} train / "
            f"{len(self.eval_setup.dataset)} {cfg.eval.split} images, {self.meta.num_obj_classes} "
            f"objects, {self.meta.num_verb_classes} verbs"
        )
        factors = None
        if cfg.data.repeat_threshold > 0:
            factors = repeat_factors(self.train_set.annotations, cfg.data.repeat_threshold)
            LOGGER.info(
                f"data.repeat_threshold={cfg.data.repeat_threshold}: {int((factors > 1).sum())} of "
                f"{len(factors)} training images repeated (factor up to {factors.max():.2f}), "
                f"{factors.sum() / len(factors):.3f}x the images per epoch before keeping {len(factors)}"
            )
        self.sampler = EpochSampler(
            len(self.train_set), cfg.train.seed, True, self.rank, self.world, repeat_factors=factors
        )
        per_step = cfg.train.batch_size * cfg.train.accumulate
        if self.sampler.num_local < per_step:  # not even one step per epoch: nothing would train
            raise ConfigError(
                f"train.batch_size={cfg.train.batch_size} x train.accumulate={cfg.train.accumulate} needs "
                f"{per_step} training images per process, but {cfg.data.root} has {len(self.train_set)} "
                f"for {self.world} process(es): lower train.batch_size"
            )
        # train.size_grouping = P > 1: each loader item is a pool of P batches cut by image size
        pool = cfg.train.size_grouping
        collate = functools.partial(collate_fn, size_divisibility=cfg.train.size_divisibility)
        if pool > 1:
            collate = functools.partial(
                collate_size_grouped,
                batch_size=cfg.train.batch_size,
                size_divisibility=cfg.train.size_divisibility,
            )
        # a private generator for the loader's base seed: creating an iterator must not advance the
        # global random stream (it would shift dropout / mining draws after a mid-epoch resume)
        self.train_loader = DataLoader(
            SeededDataset(self.train_set, cfg.train.seed),
            batch_size=cfg.train.batch_size * pool,
            sampler=self.sampler,
            collate_fn=collate,
            num_workers=cfg.data.num_workers,
            drop_last=pool == 1,
            persistent_workers=cfg.data.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=ignore_stop_signals,
            generator=torch.Generator().manual_seed(cfg.train.seed),
        )

        self.model = build_model(cfg, self.meta.num_obj_classes, self.meta.num_verb_classes)
        if cfg.model.pretrained:
            from hqm.zoo import load_pretrained

            load_pretrained(self.model, cfg.model.pretrained, cfg, self.meta)
        self.model.to(self.device)
        self.channels_last = use_channels_last(self.device, channels_last, cfg.train.deterministic)
        if self.channels_last:
            self.model.backbone.to(memory_format=torch.channels_last)
        freeze_except(self.model, cfg.train.trainable)
        counts = None
        if cfg.loss.reweight.obj or cfg.loss.reweight.verb:
            counts = pair_class_counts(self.train_set.annotations, self.meta)
        self.criterion = build_criterion(cfg, self.meta.num_obj_classes, counts).to(self.device)
        self.optimizer = build_optimizer(self.model, cfg.train, self.device)
        self.steps_per_epoch = self.sampler.num_local // cfg.train.batch_size // cfg.train.accumulate
        self.schedule = build_schedule(cfg.mining, self.steps_per_epoch)
        self.lr_schedule = build_lr_schedule(cfg.train, self.steps_per_epoch)
        # the configured lrs, not the ones a resumed optimiser state carries: the schedule applies them
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.amp = resolve_amp(cfg.train.amp, self.device)  # train.amp=auto -> bf16 or off on this device
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.train_model = self.model
        self.ddp: torch.nn.parallel.DistributedDataParallel | None = None
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # no find_unused_parameters: every parameter takes part in every step (zero-touch)
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self.train_model = self.ddp
        if cfg.train.compile:
            self.train_model = torch.compile(self.train_model)

        self.epoch, self.step, self.epoch_start_step, self.step_in_epoch = 0, 0, 0, 0
        self.best = -math.inf
        self.curves: Path | None = None  # curves.png, redrawn after every evaluation
        self.writer = RunWriter(self.out, self.main)
        self.checkpoints = CheckpointManager(self.out / "checkpoints", cfg.train.keep_last, self.main)
        if self.checkpoints.removed_stale:
            LOGGER.warning(
                "removed temporary checkpoint files of a write that never finished: "
                + ", ".join(self.checkpoints.removed_stale)
            )
        self.nonfinite = NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_nonfinite_skips)
        self.stop = StopSignals()  # entered by fit: SIGTERM / SIGINT stop at the next step boundary
        self.saved_step: int | None = None  # the step last.pt holds
        self.eval_due = False  # an evaluation owed for the last finished epoch (a resume runs it)
        self.resumed_metrics: dict[str, float] = {}  # the resumed checkpoint's last evaluation
        if ckpt is not None:
            self.resume(resume, ckpt)
        if self.main:  # written once the set-up succeeded: a refused resume keeps the run's config
            save_config(cfg, self.out / "config.yaml", run_config_header(self.out))
        n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        LOGGER.info(
            f"model: {cfg.model.detector} {cfg.model.backbone}"
            + (f" (width {cfg.model.backbone_width})" if cfg.model.backbone_width != 64 else "")
            + f", {n_train / 1e6:.2f}M trainable "
            f"parameters, mining={cfg.mining.strategy}, device={self.device}, world={self.world}"
        )

    # -- checkpoints --------------------------------------------------------------------------------
    def state(self, metrics: dict | None = None) -> dict:
        """Everything a resumed run needs. Collective under DDP (gathers every rank's RNG state)."""
        rngs = all_gather_object(rng_state())
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "lr_factor": self.lr_schedule.factor(self.step)},
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_start_step": self.epoch_start_step,
            "step_in_epoch": self.step_in_epoch,
            "best": self.best,
            "eval_due": self.eval_due,
            "config": config_to_dict(self.cfg),
            "meta": self.meta.to_dict(),
            "rng": rngs[0],
            "rng_per_rank": rngs,
            "world_size": self.world,
            "metrics": metrics or {},
        }

    def save(self, name: str, metrics: dict | None = None) -> None:
        """``last.pt`` (plus the step-stamped copy, see ``CheckpointManager``) or ``best.pt``. Called
        on every rank (the state is collective); only rank 0 writes."""
        state = self.state(metrics)
        if name == "best.pt":
            self.checkpoints.save_best(state)
        else:
            self.checkpoints.save_last(state, self.step)
            self.saved_step = self.step

    def _claim_run_dir(self, resume: str | None, overwrite: bool, restart: bool):
        """Rank 0 locks the run folder and checks it may write there (``rundir.claim_run_dir``);
        every rank raises the same error (``RunDirError``, ``OutputError``) when it may not."""
        lock, problem = None, None
        if self.main:
            try:
                lock = claim_run_dir(self.out, resume, overwrite, restart)
            except (RunDirError, OutputError) as e:
                problem = (type(e), str(e))
        problem = all_gather_object(problem)[0]
        if problem:
            raise problem[0](problem[1])
        return lock

    def resume(self, path: str, ckpt: dict | None = None) -> None:
        """Model, optimiser, scaler, epoch / step counters (hence the data position, the lr schedule and
        the mining schedule, functions of the step), best metric and random states. Settings that
        differ from the checkpoint's were already applied or refused in ``__init__``
        (``resume_policy``); a changed weight decay is written into the restored optimiser here."""
        ckpt = ckpt if ckpt is not None else read_training_state(path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        # the lr follows the schedule of the current config from the restored step on (a pure
        # function of the step); the weight decay the restored state carries is replaced too
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.cfg.train.weight_decay
        if ckpt["scaler"] or not self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        else:
            LOGGER.info("train.amp=fp16 from now on: a fresh gradient scaler (the run had none)")
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.epoch_start_step, self.step_in_epoch = ckpt["epoch_start_step"], ckpt["step_in_epoch"]
        self.best = ckpt["best"]
        self.eval_due = bool(ckpt.get("eval_due", False))
        metrics = ckpt.get("metrics")
        self.resumed_metrics = dict(metrics) if isinstance(metrics, dict) else {}
        self.saved_step = self.step
        world = ckpt.get("world_size", 1)
        if self.step_in_epoch and world != self.world:
            raise ResumeError(
                f"cannot resume from {path} mid-epoch with {self.world} processes: it was "
                f"written by {world} (the data position depends on it); resume from an "
                f"epoch-end checkpoint or keep the process count"
            )
        rngs = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        set_rng_state(rngs[self.rank] if len(rngs) == self.world else ckpt["rng"])
        LOGGER.info(f"resumed from {path}: {resume_position(self.step, self.epoch, self.step_in_epoch)}")

    # -- training -----------------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        """Train to ``train.epochs`` (or ``train.max_steps``), evaluating every ``eval.every`` epochs
        and at the end; returns the last metrics (fractions in [0, 1]).

        Faults end the run with a ``UserError`` whose message ends with the resume command:
        ``Interrupted`` after SIGTERM / SIGINT (``last.pt`` saved at the step boundary, see
        ``engine.signals``), ``NonFiniteError`` (``engine.nonfinite``; nothing written, ``last.pt``
        is the last good checkpoint) and ``OutputError`` (a checkpoint or log could not be written;
        the previous checkpoint is intact). The run directory's lock is released however it ends."""
        start = time.time()
        progress = self._progress()
        try:
            with self.stop:
                metrics = self._fit(progress)
        except UserError as e:
            if not isinstance(e, Interrupted):
                e.args = (f"{e}. {self.resume_hint()}",)
            raise
        except OSError as e:  # a log file (metrics.jsonl, results.csv, curves.png) the disk refused
            if not write_fault(e):
                raise
            raise output_error(e.filename or self.out, e, "write", self.resume_hint()) from None
        finally:
            progress.close()
            self.writer.close()
            self.stop_loader_workers()
            if self.run_lock is not None:
                self.run_lock.release()
        LOGGER.info(f"training finished in {time.time() - start:.0f}s ({self.step} steps)")
        if self.curves is not None:
            LOGGER.info(f"learning curves: {self.curves}")
        cleanup()
        return metrics

    def stop_loader_workers(self) -> None:
        """End the data loaders' persistent worker processes now. They ignore SIGTERM
        (``ignore_stop_signals``: a signal to the process group must reach the trainer first), and at
        interpreter exit multiprocessing ends daemonic children with SIGTERM and waits for them: a
        worker still alive then (a loader not yet garbage-collected) would hang the exit forever.
        Uses the loader's own shutdown (``DataLoader._iterator._shutdown_workers``)."""
        for loader in (self.train_loader, self.eval_setup.loader):
            it = getattr(loader, "_iterator", None)
            if it is not None and hasattr(it, "_shutdown_workers"):
                it._shutdown_workers()
                loader._iterator = None

    def _progress(self) -> TrainProgress:
        cfg = self.cfg
        total = self.lr_schedule.total_steps
        return TrainProgress(total, self.step, cfg.train.epochs, self.main, cfg.train.log_every, self.device)

    def _fit(self, progress: TrainProgress) -> dict[str, float]:
        cfg = self.cfg
        metrics: dict[str, float] = {}
        meter = SmoothedMeter()
        if self.epoch >= cfg.train.epochs or self._done():  # resumed from a run that had finished
            done = (
                f"nothing left to train: the checkpoint is at epoch {self.epoch} of {cfg.train.epochs}, "
                f"step {self.step} (raise train.epochs to train on); "
            )
            if self.resumed_metrics and not self.eval_due:  # nothing new to record in results.csv
                table = format_table(self.resumed_metrics)
                LOGGER.info(f"{done}its last evaluation (hqm eval evaluates it again):\n{table}")
                return self.resumed_metrics
            LOGGER.info(f"{done}evaluating it")
        if self.eval_due:  # resumed from an epoch end whose evaluation was interrupted: run it now
            progress.pause()
            metrics = self.evaluate_and_record()
            progress.resume()
        while self.epoch < cfg.train.epochs and not self._done():
            self.train_one_epoch(progress, meter)
            progress.pause()
            if self.step_in_epoch == 0:  # the epoch ran to its end
                self.epoch += 1
                self.epoch_start_step = self.step
                self.eval_due = cfg.eval.every > 0 and self.epoch % cfg.eval.every == 0 and not self._done()
            self.save("last.pt")
            if self.eval_due:
                metrics = self.evaluate_and_record()
            progress.resume()
        if not metrics or self._done():
            progress.pause()
            metrics = self.evaluate_and_record()
        return metrics

    def _done(self) -> bool:
        return self.cfg.train.max_steps > 0 and self.step >= self.cfg.train.max_steps

    def resume_command(self) -> str:
        """The command that continues this run (under torchrun: the same launch options)."""
        config, out = shlex.quote(str(self.out / "config.yaml")), shlex.quote(str(self.out))
        return f"{self._launch()} train {config} --resume {out}"

    def _launch(self) -> str:
        return "torchrun <the same options> -m hqm" if self.distributed else "hqm"

    def resume_hint(self) -> str:
        """Where the run can continue from, and how (appended to the messages of faults)."""
        last = self.out / "checkpoints" / "last.pt"
        if self.saved_step is None and not last.is_file():
            return (
                f"No checkpoint was written yet; start again with: {self._launch()} train "
                f"{shlex.quote(str(self.out / 'config.yaml'))} --overwrite"
            )
        at = f" (step {self.saved_step})" if self.saved_step is not None else ""
        return f"The last good checkpoint is {last}{at}; resume with: {self.resume_command()}"

    def _stop_if_requested(self, progress: TrainProgress) -> None:
        """At a step boundary (collective under DDP): after SIGTERM / SIGINT, save ``last.pt`` (unless
        this step's is already written) and stop."""
        if self.stop.requested() is None:
            return
        progress.pause()
        if self.saved_step != self.step:
            self.save("last.pt")
        self._interrupt(f"after step {self.step}")

    def _interrupt(self, where: str) -> None:
        signum = self.stop.signum or signal.SIGTERM
        raise Interrupted(
            f"stopped by {signal_name(signum)} {where}: {self.out / 'checkpoints' / 'last.pt'} holds step "
            f"{self.saved_step}. Resume with: {self.resume_command()}",
            signum,
        )

    def train_one_epoch(
        self, progress: TrainProgress | None = None, meter: SmoothedMeter | None = None
    ) -> None:
        """Optimiser steps to the end of the epoch (or ``train.max_steps``), with the periodic step
        checkpoints; stops at a step boundary after SIGTERM / SIGINT (see ``fit``)."""
        cfg, acc = self.cfg, self.cfg.train.accumulate
        meter = meter if meter is not None else SmoothedMeter()
        # called on its own (tests, notebooks): no progress output
        progress = progress or TrainProgress(0, self.step, cfg.train.epochs, False, 1, self.device)
        self.train_model.train()
        steps_per_epoch = self.steps_per_epoch
        batches = self.epoch_batches(self.step_in_epoch * acc)
        while self.step_in_epoch < steps_per_epoch and not self._done():
            t0 = time.time()
            window = [next(batches) for _ in range(acc)]
            data_time = time.time() - t0
            active = self.schedule.active(self.step, self.epoch_start_step)
            if self.schedule.stop_step and self.step == self.schedule.stop_step and self.schedule.miner_names:
                # steps counted from 1 as on the console and in metrics.jsonl
                LOGGER.info(
                    f"mining.epochs={cfg.mining.epochs}: no hard queries from step {self.step + 1} on"
                )
                meter.forget(tuple(f"{name}/" for name in self.schedule.miner_names))
            self.lr_schedule.apply(self.optimizer, self.base_lrs, self.step)
            loss, logs, applied = self.train_step(window, active)
            self.step += 1
            self.step_in_epoch += 1
            lr = self.optimizer.param_groups[0]["lr"]
            if applied:
                meter.update(
                    loss=loss,
                    data_time=data_time,
                    step_time=time.time() - t0,
                    **{k: v for k, v in logs.items() if not k[-1].isdigit()},
                )
                progress.step_done(self.step, self.epoch, meter, lr)
            if self.main and self.step % cfg.train.log_every == 0:
                self.writer.log(
                    "train", self.step, self.epoch, {**meter.averages(), "mining": ",".join(active), "lr": lr}
                )
            if cfg.train.checkpoint_every_steps and self.step % cfg.train.checkpoint_every_steps == 0:
                progress.pause()
                self.save("last.pt")
                progress.resume()
            self._stop_if_requested(progress)
        if self.step_in_epoch >= steps_per_epoch:
            self.step_in_epoch = 0

    def epoch_batches(self, done: int) -> Iterator[tuple]:
        """The collated batches of the current epoch after the first ``done`` ones. With
        ``train.size_grouping`` = P > 1 the loader yields pools of P batches of similar image size
        (``collate_size_grouped``), run in a random order seeded by (seed, epoch, pool): a resumed
        run reloads the pool it stopped in and skips what it had done, so it sees the same batches."""
        pool, bs = self.cfg.train.size_grouping, self.cfg.train.batch_size
        if pool == 1:
            self.sampler.set_epoch(self.epoch, done * bs)
            yield from self.train_loader
            return
        first = done // pool
        self.sampler.set_epoch(self.epoch, first * pool * bs)
        for k, batches in enumerate(self.train_loader, start=first):
            g = torch.Generator().manual_seed(
                ((self.cfg.train.seed * 1_000_003 + self.epoch) * 100_003 + k) % 2**63
            )
            order = torch.randperm(len(batches), generator=g).tolist()
            skip = done - first * pool if k == first else 0
            for j in order[skip:]:
                yield batches[j]

    def train_step(
        self, window: list[tuple], active: tuple[str, ...]
    ) -> tuple[float, dict[str, float], bool]:
        """One optimiser step over ``window`` (``train.accumulate`` collated micro-batches).

        Returns the rank's loss and terms of the whole window (each micro-batch's terms carry the
        window's global denominators, so their sum is the loss of one batch holding the window) and
        whether the update was applied: a non-finite loss or gradient skips it or stops the run
        (``NonFiniteError``), see ``engine.nonfinite``."""
        cfg = self.cfg
        norms = self.criterion.normalisers([t for _, _, t in window], self.model.num_queries)
        group_weights = self.schedule.weights(active)
        idle = self.model.miner_parameters(exclude=active)
        total, logs, loss_finite = 0.0, {}, True
        for i, (images, masks, targets) in enumerate(window):
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            masks = masks.to(self.device, non_blocking=True)
            targets = move_targets(targets, self.device)
            last = i == len(window) - 1
            sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with sync:
                with autocast_context(self.device, self.amp):
                    outputs = self.train_model(images, masks, targets, mining=active)
                with torch.autocast(self.device.type, enabled=False):  # matcher and losses in fp32
                    loss, terms = self.criterion(
                        outputs, targets, cfg.mining.alpha, group_weights, norms, idle_params=idle
                    )
                # backward even for a non-finite loss: under DDP every rank must join the gradient sync
                self.scaler.scale(loss).backward()
            value = loss.item()
            loss_finite = loss_finite and math.isfinite(value)
            total += value
            for k, v in terms.items():
                logs[k] = logs.get(k, 0.0) + v.item()
        if self.distributed:  # every rank skips the same steps
            loss_finite = all_reduce_sum([0.0 if loss_finite else 1.0])[0] == 0
        norm = None
        if loss_finite:
            fp16 = self.scaler.is_enabled()
            if cfg.train.clip_max_norm > 0 or not fp16:
                self.scaler.unscale_(self.optimizer)
                # max_norm inf: the norm only (a multiply by 1); fp16's inf steps are the scaler's business
                limit = cfg.train.clip_max_norm if cfg.train.clip_max_norm > 0 else math.inf
                total_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit)
                norm = None if fp16 else float(total_norm)
        decision = self.nonfinite.check(self.step, loss_finite, norm, logs)  # raises to stop
        if decision == "skip":
            self.optimizer.zero_grad(set_to_none=True)
            what = self.nonfinite.describe(self.step, loss_finite, norm, logs)
            LOGGER.warning(
                f"{what}: step skipped ({self.nonfinite.consecutive} in a row, {self.nonfinite.total} in "
                f"this process; train.max_nonfinite_skips={self.nonfinite.max_skips} in a row stop the run)"
            )
            self.writer.log(
                "nonfinite",
                self.step + 1,
                self.epoch,
                {"loss": total, "grad_norm": norm, "consecutive": self.nonfinite.consecutive},
            )
            return total, logs, False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total, logs, True

    def evaluate_and_record(self) -> dict[str, float]:
        """Evaluate on ``eval.split``, log and record the metrics (``metrics.jsonl``, ``results.csv``,
        curves), write ``best.pt`` / ``last.pt``. Stops with ``Interrupted`` between batches after
        SIGTERM / SIGINT (the epoch's ``last.pt`` is already written; a resume evaluates again)."""
        ev = self.eval_setup
        with evaluation_layout(self.model, self.channels_last):
            metrics, _ = ev.run(
                self.model,
                self.device,
                self.amp,
                self.cfg.eval.batching,
                show_progress=self.main,
                should_stop=lambda: self.stop.requested() is not None,
            )
        # a run stopped by train.max_steps inside an epoch is evaluated in that epoch, not after it
        when = f"after epoch {self.epoch}" if self.step_in_epoch == 0 else f"in epoch {self.epoch + 1}"
        if metrics is None:  # stopped between batches: the epoch's last.pt is written, eval_due in it
            self._interrupt(f"during the evaluation {when} (it runs again on resume)")
        LOGGER.info(f"evaluation {when} (step {self.step}):\n{format_table(metrics)}")
        self.writer.log("eval", self.step, self.epoch, metrics)
        self.writer.result(self.epoch, self.step, metrics)
        if self.main:
            self.curves = plot_curves(self.out)
        self.eval_due = False
        key = PRIMARY_METRIC[self.cfg.data.dataset]
        if metrics.get(key, -math.inf) > self.best:
            self.best = metrics[key]
            self.save("best.pt", metrics)
        self.save("last.pt", metrics)
        return metrics
