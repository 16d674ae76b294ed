"""One training step of the *released* QPIC code, for ``throughput.py --modes released``.

Nothing of QPIC is part of hqm: point ``--qpic-root`` at your own checkout of
https://github.com/hitachi-rd-cv/qpic (a fork of facebookresearch/detr: ``models/backbone.py``,
``transformer.py``, ``matcher.py``, ``hoi.py``, ``util/misc.py`` ...). The step is what its
``engine.py`` runs for HICO-DET with the defaults of ``main.py`` and the README's HICO-DET command
(``--set_cost_bbox 2.5 --set_cost_giou 1 --bbox_loss_coef 2.5 --giou_loss_coef 1``): R50 with
frozen BN (conv1 / layer1 frozen, lr_backbone 1e-5), 6 + 6 layers, 100 queries, aux losses, focal
verb loss, AdamW (per-tensor loop, as released), gradient clipping 0.1. Images are batched by its own
``nested_tensor_from_tensor_list`` (padded to the batch maximum, not to a multiple of 32).

Two import-time shims, no edits to the checkout (today's torch / torchvision and no internet):
``util/misc.py`` checks ``float(torchvision.__version__[:3]) < 0.7``, which reads "0.29" as 0.2 and
imports an op that no longer exists, so the version is shown as "0.7" while it imports; the backbone
asks for ``pretrained=is_main_process()`` (an ImageNet download), so ``is_main_process`` answers False
(random weights, as in every other mode of the table).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch


def released_args() -> argparse.Namespace:
    """QPIC main.py defaults for HICO-DET training, with the README's box cost / loss weights."""
    return argparse.Namespace(
        lr=1e-4,
        lr_backbone=1e-5,
        weight_decay=1e-4,
        clip_max_norm=0.1,
        backbone="resnet50",
        dilation=False,
        position_embedding="sine",
        enc_layers=6,
        dec_layers=6,
        dim_feedforward=2048,
        hidden_dim=256,
        dropout=0.1,
        nheads=8,
        num_queries=100,
        pre_norm=False,
        masks=False,
        hoi=True,
        num_obj_classes=80,
        num_verb_classes=117,
        subject_category_id=0,
        verb_loss_type="focal",
        aux_loss=True,
        set_cost_class=1,
        set_cost_bbox=2.5,
        set_cost_giou=1,
        set_cost_obj_class=1,
        set_cost_verb_class=1,
        bbox_loss_coef=2.5,
        giou_loss_coef=1,
        obj_loss_coef=1,
        verb_loss_coef=1,
        eos_coef=0.1,
        dataset_file="hico",
    )


def _import_released(root: Path) -> dict:
    if not (root / "models" / "hoi.py").is_file():
        raise SystemExit(f"--qpic-root {root}: no models/hoi.py there (expected a QPIC checkout)")
    sys.path.insert(0, str(root))
    import torchvision

    real_version = torchvision.__version__
    torchvision.__version__ = "0.7"  # see the module docstring
    try:
        misc = importlib.import_module("util.misc")
    finally:
        torchvision.__version__ = real_version
    mods = {n: importlib.import_module(f"models.{n}") for n in ("backbone", "transformer", "matcher", "hoi")}
    mods["backbone"].is_main_process = lambda: False  # no ImageNet download: random weights
    mods["misc"] = misc
    return mods


def build_released_step(bench: argparse.Namespace, device: torch.device):
    """-> (step(): runs one optimiser step, input shape (B, 3, H, W)). ``bench``: throughput.py's
    arguments (qpic_root, size, batch, pairs, backbone, queries)."""
    mods = _import_released(Path(bench.qpic_root))
    args = released_args()
    args.device = str(device)
    args.backbone, args.num_queries = bench.backbone, bench.queries
    size, batch, pairs = bench.size, bench.batch, bench.pairs
    torch.manual_seed(0)
    model = (
        mods["hoi"]
        .DETRHOI(
            mods["backbone"].build_backbone(args),
            mods["transformer"].build_transformer(args),
            num_obj_classes=args.num_obj_classes,
            num_verb_classes=args.num_verb_classes,
            num_queries=args.num_queries,
            aux_loss=args.aux_loss,
        )
        .to(device)
    )
    weights = {
        "loss_obj_ce": args.obj_loss_coef,
        "loss_verb_ce": args.verb_loss_coef,
        "loss_sub_bbox": args.bbox_loss_coef,
        "loss_obj_bbox": args.bbox_loss_coef,
        "loss_sub_giou": args.giou_loss_coef,
        "loss_obj_giou": args.giou_loss_coef,
    }
    weights.update({f"{k}_{i}": v for i in range(args.dec_layers - 1) for k, v in list(weights.items())})
    criterion = (
        mods["hoi"]
        .SetCriterionHOI(
            args.num_obj_classes,
            args.num_queries,
            args.num_verb_classes,
            matcher=mods["matcher"].build_matcher(args),
            weight_dict=weights,
            eos_coef=args.eos_coef,
            losses=["obj_labels", "verb_labels", "sub_obj_boxes", "obj_cardinality"],
            verb_loss_type=args.verb_loss_type,
        )
        .to(device)
    )
    groups = [
        {"params": [p for n, p in model.named_parameters() if "backbone" not in n and p.requires_grad]},
        {
            "params": [p for n, p in model.named_parameters() if "backbone" in n and p.requires_grad],
            "lr": args.lr_backbone,
        },
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, weight_decay=args.weight_decay)

    g = torch.Generator().manual_seed(0)
    width = round(size * 4 / 3)
    images = [torch.randn(3, size, width, generator=g) for _ in range(batch)]
    samples = mods["misc"].nested_tensor_from_tensor_list(images).to(device)
    targets = []
    for _ in range(batch):
        wh = torch.rand(2 * pairs, 2, generator=g) * 0.3 + 0.1
        boxes = torch.cat([wh / 2 + (1 - wh) * torch.rand(2 * pairs, 2, generator=g), wh], 1)
        verbs = (torch.rand(pairs, args.num_verb_classes, generator=g) > 0.98).float()
        verbs[torch.arange(pairs), torch.randint(0, args.num_verb_classes, (pairs,), generator=g)] = 1.0
        obj_labels = torch.randint(0, args.num_obj_classes, (pairs,), generator=g)
        t = {
            "obj_labels": obj_labels,
            "verb_labels": verbs,
            "sub_boxes": boxes[:pairs],
            "obj_boxes": boxes[pairs:],
            "labels": torch.cat([torch.zeros(pairs, dtype=torch.int64), obj_labels]),
            "boxes": boxes,
        }
        targets.append({k: v.to(device) for k, v in t.items()})

    def step() -> None:  # engine.py train_one_epoch, one iteration
        model.train()
        criterion.train()
        loss_dict = criterion(model(samples), targets)
        loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_max_norm)
        optimizer.step()

    return step, tuple(samples.tensors.shape)
