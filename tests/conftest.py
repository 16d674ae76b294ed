"""Shared fixtures: tiny configs of every registered detector and hand-made targets (hidden 32, 1-2
layers, 8 queries)."""

from __future__ import annotations

import pytest
import torch

from hqm.config import Config, load_config
from hqm.data.dataset import pair_instances

TINY_OVERRIDES = [
    "model.backbone=resnet18",
    "model.backbone_norm=batch",
    "model.train_backbone_from=conv1",
    "model.backbone_out=layer3",
    "model.backbone_width=16",  # a quarter-width ResNet-18: the tests exercise the wiring, not its capacity
    "model.hidden_dim=32",
    "model.nheads=4",
    "model.enc_layers=1",
    "model.dec_layers=2",
    "model.dim_feedforward=64",
    "model.num_queries=8",
    "model.dropout=0.0",
    "device=cpu",
]

NUM_OBJ, NUM_VERB = 6, 5

#: per registered detector (``hqm.detectors.DETECTORS``), what turns the tiny config into it; the
#: contract, seam, mining and evaluation-invariance tests run over every entry, and a test checks
#: that every registered detector has one
DETECTOR_OVERRIDES = {
    "qpic": [],
    "cdn": ["model.detector=cdn", "model.cdn.interaction_layers=2"],  # 2 pair + 2 interaction layers
    # 8 instance queries, 2 DETR + 2 interaction layers, 6 interaction queries
    "hotr": ["model.detector=hotr", "model.hotr.interaction_layers=2", "model.hotr.num_hoi_queries=6"],
}
DETECTORS = list(DETECTOR_OVERRIDES)


def tiny_detector_cfg(detector: str, extra: list[str] | tuple[str, ...] = ()) -> Config:
    return load_config(None, TINY_OVERRIDES + DETECTOR_OVERRIDES[detector] + list(extra))


# the tiny synthetic preset at 64 px: every image resized into (32, 64] on both sides and training
# batches padded to 64 x 64 (train.size_divisibility), so batches of any composition have the same
# shape and N ranks x batch b train exactly like one process with batch N * b (random batches: the
# demo config's size grouping would cut pools of different sizes into different batches)
TINY_DATA_64 = [
    "train.size_divisibility=64",
    "train.size_grouping=1",
    "data.dataset=synthetic",
    "data.synth_preset=tiny",
    "data.scales=[64]",
    "data.max_size=64",
    "data.test_scale=64",
    "data.crop_resize=[64]",
    "data.crop_min=48",
    "data.crop_max=64",
    "data.num_workers=0",
    "eval.every=0",
]


def tiny_demo_cfg(root, out, *extra: str) -> Config:
    """The demo config (qpic_r18_synthetic) on the tiny benchmark at ``root``, writing to ``out``:
    fp32, batch 2, plus ``extra`` overrides."""
    overrides = [f"data.root={root}", f"train.output_dir={out}", "train.amp=off", "train.batch_size=2"]
    return load_config("qpic_r18_synthetic", TINY_OVERRIDES + overrides + list(extra))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """The tiny synthetic benchmark, generated once per test session (read-only for tests)."""
    from hqm.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("synth") / "tiny", preset="tiny")


def tiny_checkpoint(root, path, detector: str = "qpic"):
    """An untrained checkpoint of the tiny ``detector`` for the tiny benchmark at ``root``, as
    ``hqm train`` writes one (weights, config, meta), saved at ``path`` (returned): for commands'
    checks of their inputs, not their numbers."""
    from hqm.config import config_to_dict
    from hqm.data import build_meta
    from hqm.detectors import build_model
    from hqm.engine.checkpoint import save_checkpoint

    cfg = tiny_detector_cfg(detector, TINY_DATA_64 + [f"data.root={root}"])
    meta = build_meta(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg, meta.num_obj_classes, meta.num_verb_classes)
    save_checkpoint(
        path, {"model": model.state_dict(), "config": config_to_dict(cfg), "meta": meta.to_dict()}
    )
    return path


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_root, tmp_path_factory):
    """:func:`tiny_checkpoint` of QPIC on ``tiny_root`` (read-only for tests)."""
    return tiny_checkpoint(tiny_root, tmp_path_factory.mktemp("ckpt") / "model.pt")


@pytest.fixture
def tiny_cfg() -> Config:
    return load_config(None, TINY_OVERRIDES)


@pytest.fixture(params=DETECTORS)
def detector_cfg(request) -> Config:
    """The tiny config of each registered detector in turn."""
    return tiny_detector_cfg(request.param)


def make_target(
    n: int,
    num_verbs: int = NUM_VERB,
    num_obj: int = NUM_OBJ,
    seed: int = 0,
    has_obj: list[bool] | None = None,
) -> dict:
    g = torch.Generator().manual_seed(seed)
    cxcy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
    wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
    cxcy2 = torch.rand(n, 2, generator=g) * 0.5 + 0.25
    verbs = (torch.rand(n, num_verbs, generator=g) > 0.6).float()
    verbs[torch.arange(n), torch.randint(0, num_verbs, (n,), generator=g)] = 1.0
    exists = torch.tensor(has_obj if has_obj is not None else [True] * n, dtype=torch.bool)
    obj_boxes = torch.cat([cxcy2, wh * 0.8], 1) * exists[:, None]
    obj_labels = torch.randint(0, num_obj, (n,), generator=g)
    pairs = {
        "obj_labels": obj_labels,
        "sub_boxes": torch.cat([cxcy, wh], 1),
        "obj_boxes": obj_boxes,
        "has_obj": exists,
    }
    return {
        **pairs,
        # instances: the n humans, then the existing objects (HOTR's targets, see hqm.data.dataset)
        **pair_instances(pairs),
        "verb_labels": verbs,
        "orig_size": torch.tensor([96, 128]),
        "size": torch.tensor([96, 128]),
        "image_id": seed,
        "file_name": f"img_{seed}.jpg",
    }


@pytest.fixture
def batch():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 128)
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[1, :, 100:] = True
    masks[1, 80:, :] = True
    targets = [make_target(3, seed=1), make_target(2, seed=2)]
    return images, masks, targets


@pytest.fixture
def masking_reference(monkeypatch) -> dict:
    """Records the reference scores every ``AttentionMasking`` hook is built with (key "reference")."""
    from hqm.mining.amm import AttentionMasking

    seen: dict = {}
    original = AttentionMasking.__init__

    def spy(self, reference, *args, **kw):
        seen["reference"] = reference
        original(self, reference, *args, **kw)

    monkeypatch.setattr(AttentionMasking, "__init__", spy)
    return seen


def mining_steps(cfg: Config, model, criterion, batch, steps: int = 2):
    """Train-mode forward + criterion + backward for ``steps`` steps of ``cfg.mining``'s schedule
    (the miners a step does not run are touched as idle); asserts a finite loss and yields
    ``(outputs, logs)`` after each backward, while the step's gradients are still there."""
    from hqm.mining.schedule import build_schedule

    images, masks, targets = batch
    schedule = build_schedule(cfg.mining)
    for step in range(steps):
        active = schedule.active(step)
        model.zero_grad(set_to_none=True)
        out = model.train()(images, masks, targets, mining=active)
        idle = model.miner_parameters(exclude=active)
        loss, logs = criterion(out, targets, cfg.mining.alpha, schedule.weights(active), idle_params=idle)
        loss.backward()
        assert torch.isfinite(loss)
        yield out, logs
