"""The ``hqm`` command line: train, eval, demo, synth, eval-file, predict, convert, export."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hqm import __version__

EPILOG = """Configs are YAML files (see configs/) or the name of a packaged config, e.g.
qpic_r18_synthetic. Any key can be overridden as section.key=value, e.g.
  hqm train qpic_r18_synthetic train.epochs=2 mining.strategy=ajl device=cpu"""


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


def cmd_eval(args: argparse.Namespace) -> int:
    overrides, extra = _split_overrides(args.overrides, ("weights",))
    config, weights = (None, args.config) if _is_weights(args.config) else (args.config, extra.get("weights"))
    if weights is None or (config is None and "weights" in extra):
        print("hqm eval: give a checkpoint (hqm eval CKPT), or a config with weights=PATH", file=sys.stderr)
        return 2
    from hqm.engine.evaluator_run import evaluate_checkpoint

    metrics = evaluate_checkpoint(config, weights, overrides, save_predictions=args.save_predictions)
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
    from hqm.engine.rundir import holds_run, next_free_run_dir
    from hqm.engine.trainer import Trainer
    from hqm.evaluation import format_table

    chosen = any(o.startswith("train.output_dir=") for o in args.overrides)
    if holds_run(cfg.train.output_dir) and not (chosen or args.overwrite):
        # a re-run keeps the earlier demo: the next free folder (runs/demo-2, ...), said up front
        fresh = next_free_run_dir(cfg.train.output_dir)
        if _is_main():
            print(
                f"hqm demo: {cfg.train.output_dir} holds an earlier demo run; this one goes to {fresh} "
                "(--overwrite replaces the earlier one)",
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
    from hqm.evaluation import format_table

    metrics, _ = evaluate_file(
        args.dataset, args.root, args.predictions, args.mode, args.max_dets, ap_thresholds=args.ap_thresholds
    )
    print(format_table(metrics))
    if args.json:
        print(_metrics_json(metrics))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from hqm.data.synthetic import generate

    root = generate(args.out, preset=args.preset, overrides=args.overrides)
    print(f"synthetic HOI benchmark ({args.preset}) written to {root}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hqm.api import HOIDetector
    from hqm.viz.predict_files import predict_to_dir

    keys = ("source", "out", "threshold", "top_k", "size", "batch", "weights", "device")
    overrides, extra = _split_overrides(args.overrides, keys)
    for key in ("source", "out"):
        if key not in extra:
            print(f"hqm predict: {key}=... is required", file=sys.stderr)
            return 2
    from hqm.engine.logging import setup_logging

    setup_logging(None, True)  # one line per skipped file, model-loading notes
    target = Path(args.model)
    device = extra.get("device", "auto")
    if _is_weights(args.model):
        det = HOIDetector.from_checkpoint(target, device=device, overrides=overrides or None)
    elif "weights" in extra:  # a config + released / converted weights
        det = HOIDetector.from_checkpoint(
            extra["weights"], device=device, config=args.model, overrides=overrides
        )
    else:
        print(
            "hqm predict: give a checkpoint (.pt / exported folder), or a config with weights=PATH",
            file=sys.stderr,
        )
        return 2
    summary = predict_to_dir(
        det,
        extra["source"],
        extra["out"],
        threshold=float(extra.get("threshold", 0.0)),
        top_k=int(extra.get("top_k", 10)),
        attention=args.attn,
        batch_size=int(extra["batch"]) if "batch" in extra else None,
        size=int(extra["size"]) if "size" in extra else None,
        progress=not args.quiet,
    )
    for src, name in list(summary["renamed"].items())[:5]:
        print(f"hqm predict: {src} -> {name}.png (another input has the same name)", file=sys.stderr)
    if len(summary["renamed"]) > 5:
        print(f"hqm predict: ... {len(summary['renamed']) - 5} more renamed outputs", file=sys.stderr)
    skipped = f", {summary['skipped']} unreadable skipped" if summary["skipped"] else ""
    n_img, n_trip = summary["images"], summary["triplets"]
    print(f"hqm predict: {n_img} images{skipped}, {n_trip} triplets -> {summary['out']}")
    return 0 if n_img else 1


def cmd_convert(args: argparse.Namespace) -> int:
    from hqm.zoo import convert_detr_file

    report = convert_detr_file(
        args.input, args.output, detector=args.detector, dataset=args.dataset, init=args.init
    )
    print(report.summary(verbose=True))
    print(f"hqm convert: wrote {args.output} (use it as model.pretrained={args.output})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hqm.zoo import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out_dir)
    print(f"hqm export: wrote {out / 'model.safetensors'} and {out / 'config.yaml'}")
    return 0


def add_api_commands(sub) -> None:
    """``predict``, ``convert`` and ``export`` (the "using a trained model" commands)."""
    pr = sub.add_parser(
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
        help="source=FILE|DIR|GLOB out=DIR (required); threshold=, top_k= (pairs drawn), "
        "size= (input short side), batch=, device=, weights=; section.key=value",
    )
    pr.add_argument(
        "--attn",
        action="store_true",
        help="also write <name>_attn.png: the decoder cross-attention map of each shown pair",
    )
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=cmd_predict)

    cv = sub.add_parser("convert", help="convert a DETR COCO checkpoint into an HOI detector initialisation")
    cv.add_argument("kind", choices=["detr-to-hoi"], help="conversion kind")
    cv.add_argument("input", metavar="IN.pth", help="DETR checkpoint, e.g. detr-r50-e632da11.pth")
    cv.add_argument("output", metavar="OUT.pt", help="converted file (use as model.pretrained=OUT.pt)")
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
        "interaction decoder random)",
    )
    cv.add_argument(
        "--dataset",
        default="hico_det",
        choices=["hico_det", "vcoco", "hoia"],
        help="object vocabulary for the classifier rows (default: hico_det)",
    )
    cv.set_defaults(func=cmd_convert)

    ex = sub.add_parser("export", help="export a checkpoint as model.safetensors + config.yaml")
    ex.add_argument("checkpoint", help="checkpoint written by hqm train (e.g. RUN/checkpoints/best.pt)")
    ex.add_argument("out_dir", help="output folder")
    ex.set_defaults(func=cmd_export)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hqm",
        description="DETR-based HOI detection with Hard-Positive Query Mining (QPIC + HQM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"hqm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser(
        "train", help="train a detector", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    t.add_argument("config", help="YAML config file or packaged config name")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument(
        "--resume",
        help="resume from a checkpoint file, a run folder (its checkpoints/last.pt) or 'auto' (last.pt of "
        "train.output_dir if it exists). Changed schedule / length / eval settings are applied and logged; "
        "changed model, data, batch geometry, seed or mining strategy are refused",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="train.output_dir holds a finished or stopped run: delete its checkpoints and logs, start over",
    )
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last line")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
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
        "overrides", nargs="*", help="weights=PATH (with a config) and section.key=value overrides"
    )
    e.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    e.add_argument("--save-predictions", metavar="FILE", help="also write the predictions file (JSON)")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="generate the synthetic benchmark if missing, train, evaluate")
    d.add_argument("--config", default="qpic_r18_synthetic", help="config (default: qpic_r18_synthetic)")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the earlier demo run in train.output_dir (default: a re-run goes to runs/demo-2, ...)",
    )
    d.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    d.set_defaults(func=cmd_demo)

    f = sub.add_parser(
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
    f.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    f.set_defaults(func=cmd_eval_file)

    s = sub.add_parser("synth", help="write the synthetic HOI benchmark (HICO-DET format)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--preset", default="default", choices=["tiny", "default"])
    s.add_argument("overrides", nargs="*", help="generator key=value overrides")
    s.set_defaults(func=cmd_synth)

    add_api_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from hqm.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # user errors (bad config, missing files, bad records) get one clear line, not a traceback
        print(f"hqm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
