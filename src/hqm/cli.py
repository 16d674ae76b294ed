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

    metrics = Trainer(cfg, resume=args.resume).fit()
    if args.json:
        print(json.dumps(metrics))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    overrides, extra = _split_overrides(args.overrides, ("weights",))
    if "weights" not in extra:
        print("hqm eval: weights=PATH is required", file=sys.stderr)
        return 2
    from hqm.engine.evaluator_run import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.config, extra["weights"], overrides,
                                  save_predictions=args.save_predictions)
    from hqm.evaluation import format_table

    print(format_table(metrics))
    if args.json:
        print(json.dumps(metrics))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from hqm.config import load_config

    cfg = load_config(args.config, args.overrides)
    from hqm.engine.trainer import Trainer
    from hqm.evaluation import format_table

    trainer = Trainer(cfg)
    metrics = trainer.fit()
    print()
    print(f"hqm demo: {cfg.model.detector} ({cfg.model.backbone}, mining={cfg.mining.strategy}) trained "
          f"for {trainer.step} steps on the synthetic benchmark at {cfg.data.root}")
    print(format_table(metrics))
    print(f"run directory: {Path(cfg.train.output_dir).resolve()}")
    if args.json:
        print(json.dumps(metrics))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from hqm.data.synthetic import generate

    root = generate(args.out, preset=args.preset, overrides=args.overrides)
    print(f"synthetic HOI benchmark ({args.preset}) written to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hqm", description="DETR-based HOI detection with Hard-Positive "
                                "Query Mining (QPIC + HQM).", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"hqm {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a detector", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config", help="YAML config file or packaged config name")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides")
    t.add_argument("--resume", help="checkpoint to resume from (e.g. RUN/checkpoints/last.pt)")
    t.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last line")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the config's test split")
    e.add_argument("config", help="YAML config file or packaged config name")
    e.add_argument("overrides", nargs="*", help="weights=PATH (required) and section.key=value overrides")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    e.add_argument("--save-predictions", metavar="FILE", help="also write the predictions file (JSON)")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="generate the synthetic benchmark if missing, train, evaluate")
    d.add_argument("--config", default="qpic_r18_synthetic", help="config (default: qpic_r18_synthetic)")
    d.add_argument("overrides", nargs="*", help="section.key=value overrides")
    d.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("synth", help="write the synthetic HOI benchmark (HICO-DET format)")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--preset", default="default", choices=["tiny", "default"])
    s.add_argument("overrides", nargs="*", help="generator key=value overrides")
    s.set_defaults(func=cmd_synth)
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
