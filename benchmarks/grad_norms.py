"""How much of each update the hard queries take: gradient norms of the learnable queries' loss, the
hard queries' loss (GBS or AMM, as AJL alternates them) and their sum, and the cosine between the two
gradients, on training batches of a checkpoint's own data.

Why it matters: the QPIC / HQM recipe clips the total gradient norm to ``train.clip_max_norm`` (0.1)
and AdamW normalises every coordinate; when the norms are far above the clip, the update follows the
direction of the summed gradient, so a hard-query loss as large as the learnable one (and only partly
aligned with it) shrinks the learnable queries' share of each step.

    python benchmarks/grad_norms.py runs/convergence/runs/ajl-s42/checkpoints/last.pt [--batches 6]

The checkpoint's config is used with ``mining.strategy=ajl`` (its miners' weights load when it was
trained with them, else they start fresh); batches of ``train.batch_size`` from the training split,
augmented as in training, padded to ``train.size_divisibility``; fp32, model in training mode.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--batches", type=int, default=6, help="training batches (GBS and AMM alternate)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides (e.g. data.root=...)")
    args = ap.parse_args()

    from hqm.data import build_dataset, collate_fn
    from hqm.detectors import build_criterion, build_model
    from hqm.zoo import read_state_dict, resolve_model_config

    torch.manual_seed(0)
    state, info = read_state_dict(args.checkpoint)
    cfg = resolve_model_config(info, args.checkpoint, None, ["mining.strategy=ajl", *args.overrides]).cfg
    data = build_dataset(cfg.data, "train", train=True)
    model = build_model(cfg, data.meta.num_obj_classes, data.meta.num_verb_classes)
    result = model.load_state_dict(state, strict=False)
    fresh = [k for k in result.missing_keys if k.startswith("miners.")]
    if result.unexpected_keys or len(fresh) != len(result.missing_keys):
        raise SystemExit(f"{args.checkpoint}: weights do not fit the model ({result})")
    model.train()
    criterion = build_criterion(cfg, data.meta.num_obj_classes)
    params = [p for p in model.parameters() if p.requires_grad]
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        collate_fn=functools.partial(collate_fn, size_divisibility=cfg.train.size_divisibility),
        generator=torch.Generator().manual_seed(0),
    )

    def gradient(outputs, targets, group: str, alpha: float, beta: float) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss, _ = criterion(outputs, targets, alpha, {group: beta})
        loss.backward(retain_graph=True)
        return torch.cat([p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in params])

    rows: dict[str, dict[str, list[float]]] = {}
    for i, (images, masks, targets) in enumerate(loader):
        if i == args.batches:
            break
        group = "gbs" if i % 2 == 0 else "amm"
        outputs = model(images, masks, targets, mining=(group,))
        g_learn = gradient(outputs, targets, group, 1.0, 0.0)
        g_hard = gradient(outputs, targets, group, 0.0, cfg.mining.beta)
        r = rows.setdefault(group, {"learnable": [], "hard": [], "sum": [], "cos": []})
        r["learnable"].append(float(g_learn.norm()))
        r["hard"].append(float(g_hard.norm()))
        r["sum"].append(float((g_learn + g_hard).norm()))
        r["cos"].append(float(torch.nn.functional.cosine_similarity(g_learn, g_hard, dim=0)))
    fresh_note = f"; miners' weights fresh ({len(fresh)} tensors)" if fresh else ""
    print(
        f"{args.checkpoint}: {args.batches} training batches of {cfg.train.batch_size}, "
        f"beta {cfg.mining.beta}, clip_max_norm {cfg.train.clip_max_norm}{fresh_note}; median [min, max]"
    )
    print("| hard group | norm g_learn | norm g_hard | norm g_sum | cos(g_learn, g_hard) | g_learn / g_sum |")
    print("|---|---|---|---|---|---|")
    for group, r in rows.items():
        cells = [f"{statistics.median(v):.3g} [{min(v):.3g}, {max(v):.3g}]" for v in r.values()]
        share = statistics.median(a / b for a, b in zip(r["learnable"], r["sum"]))
        print(f"| {group} | " + " | ".join(cells) + f" | {share:.2f} |")


if __name__ == "__main__":
    main()
