"""The ``hqm`` command line: train, eval, demo, synth, eval-file, predict, convert, export, check-data.

Errors: a problem the user can fix (``hqm.errors.UserError``: a bad config value, a missing or
unreadable file, an output folder that cannot be written, ...) is printed as one line naming the
file, key or record, with exit code 2 (usage) or 1 (runtime); anything else is a bug and keeps its
traceback. ``--debug`` (or ``HQM_DEBUG=1``) shows the traceback of user errors too.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

from hqm import __version__
from hqm.errors import UsageError

EPILOG = """Configs are YAML files (see configs/) or the name of a packaged config, e.g.
qpic_r18_synthetic. Any key can be overridden as section.key=value, e.g.
  hqm train qpic_r18_synthetic train.epochs=2 mining.strategy=ajl device=cpu

Exit codes: 0 success; 1 runtime failure (unreadable file, bad records, output not writable, disk
full, training stopped on non-finite losses); 2 usage error (bad option, config key or value,
missing file); 130 / 143 training stopped by SIGINT / SIGTERM after saving a checkpoint.
Errors are one line; --debug (or HQM_DEBUG=1) shows the traceback."""

JSON_HELP = (
    "print the metrics as one JSON object on the last line of stdout (AP and recall as fractions in "
    "[0, 1]; the table shows them in percent)"
)


def _metrics_json(metrics: dict) -> str:
    """One-line strict JSON (NaN, e.g. a mean over no class, becomes null)."""
    return json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in metrics.items()})


def _is_main() -> bool:
    """Only torchrun's rank 0 prints results (every rank returns the same gathered metrics)."""
    from hqm.distributed import launch_rank

    return launch_rank() == 0


def _split_overrides(items: list[str], special: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    overrides, extra = [], {}
    for item in items:
        key = item.split("=", 1)[0]
        if key in special and "=" in item:
            extra[key] = item.split("=", 1)[1]
        else:
            overrides.append(item)
    return overrides, extra


def cmd_train(args: argparse.Namespace) -> int:
    from hqm.config import load_config

    cfg = load_config(args.config, args.overrides)
    from hqm.engine.trainer import Trainer

    metrics = Trainer(cfg, resume=args.resume, overwrite=args.overwrite).fit()
    if args.json and _is_main():
        print(_metrics_json(metrics))
    return 0


def _is_weights(target: str) -> bool:
    """A checkpoint file or an exported model folder (as opposed to a config name or YAML file)."""
    p = Path(target)
    return p.is_dir() or p.suffix in (".pt", ".pth", ".safetensors")


def _eval_weights(target: str) -> str:
    """``hqm eval TARGET`` without ``weights=``, TARGET not named like weights (``_is_weights``):
    TARGET itself when it is a file that is not a config but may be a checkpoint (a ``.ckpt``, a
    ``.bin``); else a ``UsageError`` line saying what TARGET is and the syntax."""
    from hqm.config import ConfigError, load_config

    syntax = (
        "give a checkpoint (hqm eval CKPT: a .pt / .pth / .safetensors file or an exported folder), or a "
        "config and its weights (hqm eval CONFIG weights=PATH)"
    )
    try:
        load_config(target)
    except ConfigError as e:
        if not Path(target).is_file():  # neither a file nor a packaged config: the config's line
            raise UsageError(f"{e} To evaluate: {syntax}") from None
        if Path(target).suffix in (".yaml", ".yml"):  # meant as a config: what is wrong with it
            raise
        from hqm.zoo.safe_load import diagnose_checkpoint_file

        why = diagnose_checkpoint_file(target)
        if why is None:  # a zip archive or a pickle: read as the checkpoint it may be
            return target
        not_config = str(e).removeprefix(f"{Path(target).resolve()}: ")
        raise UsageError(
            f"{target} is neither a readable checkpoint ({why}) nor a config ({not_config}): {syntax}"
        ) from None
    raise UsageError(
        f"{target} is a config: give the weights to evaluate with it (hqm eval {target} weights=PATH), or "
        "a checkpoint alone (hqm eval CKPT)"
    )


def cmd_eval(args: argparse.Namespace) -> int:
    overrides, extra = _split_overrides(args.overrides, ("weights",))
    config, weights = (None, args.config) if _is_weights(args.config) else (args.config, extra.get("weights"))
    if config is None and "weights" in extra:
        raise UsageError(
            f"weights={extra['weights']} goes with a config (hqm eval CONFIG weights=PATH); {args.config} is "
            "already the weights: drop one of them"
        )
    if weights is None:
        config, weights = None, _eval_weights(args.config)
    if args.overwrite and not args.save_predictions:
        raise UsageError("--overwrite replaces the --save-predictions file; without one it has nothing to do")
    from hqm.engine.evaluator_run import evaluate_checkpoint

    metrics = evaluate_checkpoint(
        config, weights, overrides, save_predictions=args.save_predictions, overwrite=args.overwrite
    )
    from hqm.evaluation import format_table

    if _is_main():
        print(format_table(metrics))
        if args.json:
            print(_metrics_json(metrics))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hqm.config import load_config

    cfg = load_config(args.config, args.overrides)
    if cfg.data.dataset == "synthetic" and not any(o.startswith("data.generate=") for o in args.overrides):
        # the demo writes the synthetic benchmark (into an absent, empty or generator-made data.root)
        cfg.data.generate = True
    from hqm.engine.rundir import foreign_files, holds_run, next_free_run_dir, run_dir_candidates
    from hqm.engine.trainer import Trainer
    from hqm.evaluation import format_table

    chosen = any(o.startswith("train.output_dir=") for o in args.overrides)
    earlier, foreign = holds_run(cfg.train.output_dir), foreign_files(cfg.train.output_dir)
    if (earlier or foreign) and not (chosen or args.overwrite):
        # a re-run keeps the earlier demo: the next free folder (runs/demo-2, ...), said up front
        fresh = next_free_run_dir(cfg.train.output_dir)
        if _is_main():
            what = "an earlier demo run" if earlier else f"files hqm did not write ({', '.join(foreign)})"
            taken = list(itertools.takewhile(lambda c: c != fresh, run_dir_candidates(cfg.train.output_dir)))
            also = "".join(  # the folders skipped on the way, and why
                f"; {c} holds " + ("an earlier run" if holds_run(c) else "files hqm did not write")
                for c in taken[1:]
            )
            print(
                f"hqm demo: {cfg.train.output_dir} holds {what}{also}; this one goes to {fresh}"
                + (" (--overwrite replaces the earlier one)" if earlier else ""),
                file=sys.stderr,
            )
        cfg.train.output_dir = str(fresh)
    trainer = Trainer(cfg, overwrite=args.overwrite)
    metrics = trainer.fit()
    if not _is_main():
        return 0
    print()
    print(
        f"hqm demo: {cfg.model.detector} ({cfg.model.backbone}, mining={cfg.mining.strategy}) trained "
        f"for {trainer.step} steps on the synthetic benchmark at {cfg.data.root}"
    )
    print(format_table(metrics))
    print(f"run directory: {Path(cfg.train.output_dir).resolve()}")
    if args.json:
        print(_metrics_json(metrics))
    return 0


def cmd_eval_file(args: argparse.Namespace) -> int:
    from hqm.engine.evaluator_run import evaluate_file
    from hqm.engine.logging import setup_logging
    from hqm.evaluation import format_table

    if args.max_dets < 1:
        raise UsageError(f"--max-dets {args.max_dets}: must be >= 1 (triplets kept per image)")
    setup_logging(None, True)  # warnings: test images without a record, records of other images

    metrics, _ = evaluate_file(
        args.dataset, args.root, args.predictions, args.mode, args.max_dets, ap_thresholds=args.ap_thresholds
    )
    print(format_table(metrics))
    if args.json:
        print(_metrics_json(metrics))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from hqm.data.synthetic import generate
    from hqm.engine.logging import setup_logging

    setup_logging(None, True)  # generation progress (a bar on a terminal, log lines otherwise)
    root = generate(args.out, preset=args.preset, overrides=args.overrides, overwrite=args.overwrite)
    print(f"synthetic HOI benchmark ({args.preset}) written to {root}")
    return 0


def _number(extra: dict, key: str, kind: type, default):
    """``key=VALUE`` of ``hqm predict`` as ``kind`` (``default`` when absent); a usage error if not a
    number of that kind (the range is checked by ``hqm.api.check_predict_options``)."""
    if key not in extra:
        return default
    try:
        return kind(extra[key])
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise UsageError(f"{key}={extra[key]}: expected {expected}") from None


def cmd_predict(args: argparse.Namespace) -> int:
    from hqm.api import HOIDetector, check_predict_options
    from hqm.viz.predict_files import predict_to_dir

    keys = ("source", "out", "threshold", "top_k", "size", "batch", "weights", "device")
    overrides, extra = _split_overrides(args.overrides, keys)
    for item in overrides:  # a config override is section.key=value: a bare word is a mistyped option
        key = item.split("=", 1)[0]
        if "=" not in item:
            raise UsageError(f"unrecognized argument {item!r}: options are key=value")
        if "." not in key:
            import difflib

            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}=?" if close else f"the options are {'=, '.join(keys)}="
            raise UsageError(f"unknown option {key}= ({hint}); config overrides are section.key=value")
    for key in ("source", "out"):
        if not extra.get(key, "").strip():  # out= (empty) would write into the current folder
            raise UsageError(f"{key}=... is required" + (" (it is empty)" if key in extra else ""))
    threshold = _number(extra, "threshold", float, 0.0)
    top_k, batch, size = (_number(extra, k, int, None) for k in ("top_k", "batch", "size"))
    check_predict_options(extra, threshold=threshold, top_k=top_k, batch=batch, size=size)  # before loading
    from hqm.engine.logging import setup_logging

    setup_logging(None, True)  # one line per skipped file, model-loading notes
    target = Path(args.model)
    device = extra.get("device", "auto")
    if _is_weights(args.model):
        if "weights" in extra:  # the checkpoint is the weights: another file would be ignored
            raise UsageError(
                f"weights={extra['weights']} goes with a config (hqm predict CONFIG weights=PATH); "
                f"{args.model} is already the weights: drop one of them"
            )
        det = HOIDetector.from_checkpoint(target, device=device, overrides=overrides or None)
    elif "weights" in extra:  # a config + released / converted weights
        det = HOIDetector.from_checkpoint(
            extra["weights"], device=device, config=args.model, overrides=overrides
        )
    else:
        raise UsageError("give a checkpoint (.pt / exported folder), or a config with weights=PATH")
    summary = predict_to_dir(
        det,
        extra["source"],
        extra["out"],
        threshold=threshold,
        top_k=10 if top_k is None else top_k,
        attention=args.attn,
        batch_size=batch,
        size=size,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    for src, name in list(summary["renamed"].items())[:5]:
        print(f"hqm predict: {src} -> {name}.png (another input has the same name)", file=sys.stderr)
    if len(summary["renamed"]) > 5:
        print(f"hqm predict: ... {len(summary['renamed']) - 5} more renamed outputs", file=sys.stderr)
    from hqm.progress import counted

    skipped = f", {summary['skipped']} skipped (see the warnings)" if summary["skipped"] else ""
    n_img, n_trip = summary["images"], summary["triplets"]
    where = summary["out"] if n_img else "nothing written"
    print(f"hqm predict: {counted(n_img, 'image')}{skipped}, {counted(n_trip, 'triplet')} -> {where}")
    return 0 if n_img else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from hqm.zoo import convert_detr_file

    report = convert_detr_file(
        args.input,
        args.output,
        detector=args.detector,
        dataset=args.dataset,
        init=args.init,
        overwrite=args.overwrite,
    )
    print(report.summary(verbose=True))
    print(f"hqm convert: wrote {args.output} (use it as model.pretrained={args.output})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hqm.zoo import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir, overwrite=args.overwrite)
    print(f"hqm export: wrote {out / 'model.safetensors'} and {out / 'config.yaml'}")
    return 0


def _debug_parent() -> argparse.ArgumentParser:
    """``--debug`` accepted after the command too (``hqm train CFG --debug``)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return common


DEBUG_HELP = "show the traceback of an error (also HQM_DEBUG=1)"


def _subcommand(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=[_debug_parent()], **kwargs)


def cmd_check_data(args: argparse.Namespace) -> int:
    from hqm.config import load_config
    from hqm.engine.check_data import check_dataset, format_report
    from hqm.engine.logging import setup_logging

    setup_logging(None, True)  # decoding progress (a bar on a terminal, log lines otherwise)
    cfg = load_config(args.config, args.overrides)
    report = check_dataset(cfg.data, decode=not args.no_decode)
    print(format_report(report))
    if args.json:
        print(json.dumps(report.to_dict()))
    return 0 if report.ok else 1


def add_api_commands(sub) -> None:
    """``predict``, ``convert`` and ``export`` (the "using a trained model" commands)."""
    pr = _subcommand(
        sub,
        "predict",
        help="detect HOIs in images: annotated PNGs + predictions.jsonl",
        epilog="example: hqm predict runs/demo/checkpoints/best.pt source=imgs/ out=pred/ threshold=0.3 "
        "top_k=5 --attn",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pr.add_argument(
        "model",
        metavar="CONFIG_OR_CHECKPOINT",
        help="checkpoint (.pt), exported folder, or a config together with weights=PATH",
    )
    pr.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="source=FILE|DIR|GLOB out=DIR (required); threshold=, top_k= (pairs drawn), "
        "size= (input short side), batch=, device=, weights=; section.key=value",
    )
    pr.add_argument(
        "--attn",
        action="store_true",
        help="also write <name>_attn.png: the decoder cross-attention map of each shown pair",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace files already in out= at the names this run writes (predictions.jsonl, "
        "<name>.png, <name>_attn.png; refused otherwise); a link there is always refused",
    )
    pr.set_defaults(func=cmd_predict)

    cv = _subcommand(
        sub, "convert", help="convert a DETR COCO checkpoint into an HOI detector initialisation"
    )
    cv.add_argument("kind", choices=["detr-to-hoi"], help="conversion kind")
    cv.add_argument("input", metavar="IN.pth", help="DETR checkpoint, e.g. detr-r50-e632da11.pth")
    cv.add_argument(
        "output",
        metavar="OUT.pt",
        help="converted file (use as model.pretrained=OUT.pt; missing folders are created)",
    )
    cv.add_argument(
        "--detector",
        default="qpic",
        help="target detector, a model.detector name (default: qpic; see the README's detector table)",
    )
    cv.add_argument(
        "--init",
        default=None,
        help="the detector's DETR initialisation; cdn: paper (default: DETR's decoder in the pair AND "
        "the interaction decoder, as the paper's runs) | released (the published converter: "
        "interaction decoder random); hotr: published (default: DETR's decoder also initialises the "
        "interaction decoder, --pretrained_dec) | fresh (interaction decoder random)",
    )
    cv.add_argument(
        "--dataset",
        default="hico_det",
        choices=["hico_det", "vcoco", "hoia"],
        help="object vocabulary for the classifier rows (default: hico_det)",
    )
    cv.add_argument("--overwrite", action="store_true", help="replace OUT.pt when it exists (else refused)")
    cv.set_defaults(func=cmd_convert)

    ex = _subcommand(sub, "export", help="export a checkpoint as model.safetensors + config.yaml")
    ex.add_argument("checkpoint", help="checkpoint written by hqm train (e.g. RUN/checkpoints/best.pt)")
    ex.add_argument("out_dir", help="output folder")
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace model.safetensors / config.yaml (else refused)",
    )
    ex.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hqm",
        description="DETR-based HOI detection (QPIC, CDN, HOTR) with Hard-Positive Query Mining.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hqm {__version__}")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = _subcommand(
        sub,
        "train",
        help="train a detector",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="YAML config file or packaged config name")
    t.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides")
    t.add_argument(
        "--resume",
        help="resume from a checkpoint file, a run folder or 'auto' (train.output_dir; a folder gives its "
        "newest readable checkpoint: last.pt, else the newest step_*.pt; 'auto' starts afresh when there "
        "is none). Changed schedule / length / eval settings are applied and logged; changed model, "
        "data, batch geometry, seed or mining strategy are refused",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="train.output_dir holds a finished or stopped run: delete its checkpoints and logs, start over",
    )
    t.add_argument("--json", action="store_true", help=JSON_HELP)
    t.set_defaults(func=cmd_train)

    e = _subcommand(
        sub,
        "eval",
        help="evaluate a checkpoint on the test split",
        description="Evaluate weights with their own config (hqm eval CKPT) or, for released weights "
        "that carry none, with a config (hqm eval CONFIG weights=PATH). A config given for weights that "
        "carry one is only compared with it: the values it would change are printed, not applied; "
        "key=value overrides are applied. Weights that do not fit the model are refused.",
    )
    e.add_argument(
        "config",
        metavar="CKPT_OR_CONFIG",
        help="checkpoint (.pt) / exported folder, or a config (YAML or name)",
    )
    e.add_argument(
        "overrides",
        nargs="*",
        default=[],
        help="weights=PATH (with a config) and section.key=value overrides",
    )
    e.add_argument("--json", action="store_true", help=JSON_HELP)
    e.add_argument(
        "--save-predictions",
        metavar="FILE",
        help="also write the predictions file (JSON; missing folders on its path are created)",
    )
    e.add_argument(
        "--overwrite", action="store_true", help="replace the --save-predictions FILE when it exists"
    )
    e.set_defaults(func=cmd_eval)

    d = _subcommand(sub, "demo", help="generate the synthetic benchmark if missing, train, evaluate")
    d.add_argument("--config", default="qpic_r18_synthetic", help="config (default: qpic_r18_synthetic)")
    d.add_argument("overrides", nargs="*", default=[], help="section.key=value overrides")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier demo run in train.output_dir (default: a re-run into the default runs/demo "
        "goes to runs/demo-2, ...; a train.output_dir you chose is refused instead)",
    )
    d.add_argument("--json", action="store_true", help=JSON_HELP)
    d.set_defaults(func=cmd_demo)

    f = _subcommand(
        sub,
        "eval-file",
        help="evaluate a predictions JSON file without a model",
        description="Evaluate a predictions file: a JSON list of per-image records "
        '{"file_name", "predictions": [{"bbox": [x1,y1,x2,y2], "category_id"}], '
        '"hoi_prediction": [{"subject_id", "object_id", "category_id", "score"}]} with the '
        "id conventions of the dataset's annotation files.",
    )
    f.add_argument("--dataset", required=True, choices=["hico_det", "vcoco", "hoia", "synthetic"])
    f.add_argument("--root", required=True, help="dataset root (annotations/ and images/)")
    f.add_argument("--predictions", required=True, help="predictions JSON file")
    f.add_argument(
        "--mode",
        default="default",
        choices=["default", "ko", "both"],
        help="HICO-DET: Default, Known-Object or both",
    )
    f.add_argument("--max-dets", type=int, default=100, help="triplets kept per image (default 100)")
    f.add_argument(
        "--ap-thresholds",
        default="matlab",
        choices=["matlab", "numpy", "exact"],
        help="HICO-DET 11-point recall thresholds: matlab (official ho-rcnn 0:0.1:1, default), numpy "
        "(as printed by the QPIC / CDN / HQM Python evaluators) or exact (k/10)",
    )
    f.add_argument("--json", action="store_true", help=JSON_HELP)
    f.set_defaults(func=cmd_eval_file)

    s = _subcommand(sub, "synth", help="write the synthetic HOI benchmark (HICO-DET format)")
    s.add_argument(
        "--out",
        required=True,
        help="output folder: absent, empty, or written by hqm synth (the same preset and config are "
        "rewritten byte for byte; another one needs --overwrite)",
    )
    s.add_argument(
        "--preset",
        default="default",
        choices=["tiny", "default"],
        help="default: the demo's benchmark (2,000 train / 400 test images); tiny: 16 / 8, for tests",
    )
    s.add_argument(
        "--overwrite", action="store_true", help="replace a benchmark of another preset or config in --out"
    )
    s.add_argument("overrides", nargs="*", default=[], help="generator key=value overrides")
    s.set_defaults(func=cmd_synth)

    c = _subcommand(
        sub,
        "check-data",
        help="validate a dataset (annotations and images) without training",
        description="Read both splits of the config's dataset (data.dataset at data.root) the way "
        "training does, decode every image, and print a summary: images, labelled pairs, classes, rare "
        "classes, and the problems by kind with the first examples. Exit code 0: no problem; 1: problems "
        "found; 2: no such dataset.",
    )
    c.add_argument("config", help="YAML config file or packaged config name")
    c.add_argument(
        "overrides", nargs="*", default=[], help="section.key=value overrides, e.g. data.root=PATH"
    )
    c.add_argument("--no-decode", action="store_true", help="check image headers only (faster)")
    c.add_argument("--json", action="store_true", help="also print the report as one JSON object")
    c.set_defaults(func=cmd_check_data)

    add_api_commands(sub)
    for command_parser in sub.choices.values():  # usage errors found after parsing name their command
        command_parser.set_defaults(command_parser=command_parser)
    return p


def _user_error(command: str, e: BaseException) -> tuple[str, int] | None:
    """(the one line for stderr, the exit code) of a user error; None for a bug (keep the traceback)."""
    from hqm.errors import EXIT_RUNTIME, EXIT_USAGE, Interrupted, UserError, output_error, write_fault

    if isinstance(e, UserError):
        text = " / ".join(line.strip() for line in str(e).splitlines() if line.strip())  # one line
        return f"hqm {command}: {'' if isinstance(e, Interrupted) else 'error: '}{text}", e.exit_code
    if isinstance(e, KeyboardInterrupt):
        return f"hqm {command}: interrupted", 130
    if isinstance(e, OSError) and write_fault(e):  # the disk refused a write: never a bug
        return f"hqm {command}: error: {output_error(e.filename or 'the output', e)}", EXIT_RUNTIME
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError)) and e.filename:
        return f"hqm {command}: error: {e.filename}: {e.strerror.lower()}", EXIT_USAGE
    return None


def _command_words(command: str) -> str:
    """``train``, or ``train [rank 3]`` in a torchrun worker other than rank 0: each worker prints its
    own error (one rank may fail alone, e.g. a data folder missing on one node), tagged so that the
    same line from every rank reads as one error seen N times."""
    from hqm.distributed import launch_rank

    rank = launch_rank()
    return f"{command} [rank {rank}]" if rank > 0 else command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # overrides may also follow an option (`hqm train CONFIG --overwrite key=value`): argparse stops
    # filling a positional list at the first option, so the key=value words it left are added back
    args, rest = parser.parse_known_args(argv)
    if rest:
        bad = [r for r in rest if r.startswith("-") or "=" not in r] if hasattr(args, "overrides") else rest
        if bad:  # only those: the key=value words beside them are fine (the command's usage, not hqm's)
            getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(bad)}")
        args.overrides = list(args.overrides or []) + rest
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("HQM_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        known = _user_error(_command_words(args.command), e)
        if known is None:
            raise  # a bug: the traceback is what a bug report needs
        if debug:
            import traceback

            traceback.print_exc()
        print(known[0], file=sys.stderr)
        run_logging = sys.modules.get("hqm.engine.logging")  # loaded only by commands that log
        if run_logging is not None:  # a run folder's log.txt records why the run stopped
            run_logging.record_failure(known[0])
        return known[1]


if __name__ == "__main__":
    sys.exit(main())
