"""Training engine: gradient accumulation equivalence, bf16 on the CPU, checkpoint files and resume
helpers, the incompatible-config error, and the data loader leaving the global random stream alone."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.config import load_config
from hqm.engine.checkpoint import CheckpointManager, load_checkpoint, resolve_resume
from hqm.engine.trainer import Trainer, check_compatible

# fixed 64 x 64 batches (every image resized into (32, 64] on both sides, padded to 64), frozen BN,
# no dropout: the gradient of a batch is exactly the sum of its parts
EXACT = TINY_DATA_64 + [
    "train.amp=off",  # the demo config trains in bf16 with a warm-up: these tests want fp32 from step 1
    "train.lr_schedule=step",
    "train.warmup_steps=0",
    "eval.batch_size=8",
    "model.backbone_norm=frozen",
    "model.dropout=0.0",
    "train.deterministic=true",
    "train.log_every=1",
]


def exact_cfg(root, out, *extra: str):
    return load_config(
        "qpic_r18_synthetic",
        TINY_OVERRIDES
        + EXACT
        + [
            f"data.root={root}",
            f"train.output_dir={out}",
            *extra,
        ],
    )


def final_weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model"]


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def test_accumulation_equals_the_large_batch(tiny_root, tmp_path):
    torch.manual_seed(0)
    Trainer(exact_cfg(tiny_root, tmp_path / "b4", "train.batch_size=4", "train.max_steps=3")).fit()
    Trainer(
        exact_cfg(
            tiny_root, tmp_path / "b2x2", "train.batch_size=2", "train.accumulate=2", "train.max_steps=3"
        )
    ).fit()
    w4, w22 = final_weights(tmp_path / "b4"), final_weights(tmp_path / "b2x2")
    init = Trainer(exact_cfg(tiny_root, tmp_path / "init")).model.state_dict()
    assert max_abs_diff(w4, init) > 1e-4  # the runs did train
    diff = max_abs_diff(w4, w22)
    print(f"accumulation: max |batch 4 - batch 2 x accumulate 2| = {diff:.3g}")
    assert diff < 1e-5


def test_bf16_autocast_on_cpu(tiny_root, tmp_path):
    trainer = Trainer(
        exact_cfg(tiny_root, tmp_path / "bf16", "train.amp=bf16", "train.max_steps=2", "train.batch_size=2")
    )
    trainer.train_one_epoch()
    assert trainer.step == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_takes_bf16_only_where_the_device_runs_it_natively(native, monkeypatch, caplog):
    """train.amp=auto: bf16 on an AVX-512 CPU / bf16 GPU, float32 on an AVX2-only CPU, where oneDNN's
    bf16 fallback made the demo's step 9x slower (README, "Mixed precision, compile"); said once."""
    import hqm.device as dev

    monkeypatch.setattr(dev, "native_bf16", lambda device: native)
    dev._announce.cache_clear()
    cpu = torch.device("cpu")
    with caplog.at_level("INFO", logger="hqm"):
        assert dev.resolve_amp("auto", cpu) == ("bf16" if native else "off")
        assert dev.resolve_amp("auto", cpu) == ("bf16" if native else "off")
    said = [r.getMessage() for r in caplog.records if "train.amp=auto" in r.getMessage()]
    assert said == [
        f"train.amp=auto: {'bf16 autocast' if native else 'float32'} (this CPU "
        f"{'has' if native else 'has no'} native bf16 kernels)"
    ]
    # explicit settings are kept; an explicit bf16 without native kernels is warned about, once
    caplog.clear()
    with caplog.at_level("INFO", logger="hqm"):
        assert [dev.resolve_amp(a, cpu) for a in ("off", "fp16", "bf16", "bf16")] == [
            "off",
            "fp16",
            "bf16",
            "bf16",
        ]
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "train.amp=bf16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    # hqm eval and the API pass the checkpoint's setting as it is: autocast_context resolves it
    from hqm.engine.evaluate import autocast_context

    with autocast_context(cpu, "auto"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 or not native
        assert torch.is_autocast_enabled("cpu") == native
    dev._announce.cache_clear()


def test_amp_auto_trains_with_the_resolved_autocast(tiny_root, tmp_path, monkeypatch):
    """The trainer and its evaluation use the resolved setting: float32 activations when auto says off,
    bf16 ones when it says bf16 (a forward hook on the verb head sees the dtype)."""
    import hqm.device as dev

    for native, dtype in ((False, torch.float32), (True, torch.bfloat16)):
        monkeypatch.setattr(dev, "native_bf16", lambda device, native=native: native)
        cfg = exact_cfg(
            tiny_root, tmp_path / f"auto{native}", "train.amp=auto", "train.max_steps=1", "train.batch_size=2"
        )
        trainer = Trainer(cfg)
        assert trainer.amp == ("bf16" if native else "off")
        seen = []
        head = trainer.model.verb_class_embed
        head.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o.dtype))
        trainer.train_one_epoch()
        assert trainer.step == 1 and seen and set(seen) == {dtype}


def test_step_checkpoints_keep_last_and_resume_helpers(tiny_root, tmp_path):
    out = tmp_path / "run"
    Trainer(
        exact_cfg(
            tiny_root,
            out,
            "train.batch_size=2",
            "train.max_steps=5",
            "train.checkpoint_every_steps=1",
            "train.keep_last=2",
        )
    ).fit()
    folder = out / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*.pt")) == ["step_0000004.pt", "step_0000005.pt"]
    assert load_checkpoint(folder / "step_0000004.pt")["step"] == 4
    assert load_checkpoint(folder / "last.pt")["step"] == 5 and (folder / "best.pt").is_file()
    assert not list(folder.glob(".*tmp*"))  # atomic writes leave no temporary file
    path, ckpt = resolve_resume("auto", out)
    assert path == str(folder / "last.pt") and ckpt["step"] == 5
    assert resolve_resume(str(out), out)[0] == str(folder / "last.pt")
    assert resolve_resume(str(folder), out)[0] == str(folder / "last.pt")  # RUN/checkpoints
    assert resolve_resume("auto", tmp_path / "fresh") == (None, None)
    with pytest.raises(FileNotFoundError):
        resolve_resume(str(tmp_path / "missing.pt"), out)

    # an incompatible config is refused with the key that differs
    with pytest.raises(ValueError, match="train.batch_size"):
        Trainer(exact_cfg(tiny_root, out, "train.batch_size=4"), resume="auto")
    old = load_config(out / "config.yaml")
    new = load_config(out / "config.yaml", ["model.hidden_dim=64"])
    with pytest.raises(ValueError, match="model"):
        check_compatible(old, new, "last.pt")
    check_compatible(old, load_config(out / "config.yaml", ["train.lr=1e-3"]), "last.pt")  # lr may change


def test_checkpoint_manager_prunes_oldest(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    for step in (10, 20, 30, 40, 1000):
        mgr.save_last({"w": torch.full((2,), float(step))}, step)
    assert [p.name for p in mgr.step_files()] == ["step_0000030.pt", "step_0000040.pt", "step_0001000.pt"]
    assert torch.equal(load_checkpoint(tmp_path / "step_0000040.pt")["w"], torch.full((2,), 40.0))
    assert torch.equal(load_checkpoint(tmp_path / "last.pt")["w"], torch.full((2,), 1000.0))
    single = CheckpointManager(tmp_path / "one", keep_last=1)
    single.save_last({"w": torch.zeros(1)}, 5)
    assert not single.step_files() and (tmp_path / "one" / "last.pt").is_file()


def test_loading_data_leaves_the_global_random_stream_alone(tiny_root, tmp_path):
    trainer = Trainer(exact_cfg(tiny_root, tmp_path / "rng", "train.batch_size=2"))
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    expected = torch.rand(3), np.random.rand(), random.random()
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    next(iter(trainer.train_loader))
    next(iter(trainer.eval_setup.loader))
    got = torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(expected[0], got[0]) and expected[1:] == got[1:]


@pytest.mark.slow
def test_compile_trains_on_cpu(tiny_root, tmp_path):
    """torch.compile (inductor) of the tiny model: minutes of compilation on a 2-core CPU."""
    trainer = Trainer(
        exact_cfg(
            tiny_root, tmp_path / "compiled", "train.compile=true", "train.max_steps=2", "train.batch_size=2"
        )
    )
    trainer.train_one_epoch()
    assert trainer.step == 2 and all(torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_amp_channels_last_fused_adamw(tiny_root, tmp_path, amp):
    cfg = exact_cfg(
        tiny_root,
        tmp_path / amp,
        f"train.amp={amp}",
        "train.max_steps=3",
        "train.batch_size=2",
        "device=cuda",
    )
    trainer = Trainer(cfg)
    assert trainer.channels_last and trainer.optimizer.defaults["fused"]
    trainer.train_one_epoch()
    assert trainer.step == 3 and all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_evaluation_runs_in_the_layout_hqm_eval_uses(tiny_root, tmp_path, monkeypatch):
    """A backbone trained in channels_last is evaluated in NCHW (as ``hqm eval`` and the API run it:
    oneDNN rounds differently in NHWC), then goes back; the recorded metrics are what ``hqm eval``
    gives for the saved checkpoint."""
    import hqm.engine.evaluate as evaluate_module
    from hqm.engine.evaluator_run import evaluate_checkpoint

    layouts = []
    real = evaluate_module.run_evaluation

    def first_conv(model):
        return next(p for p in model.backbone.parameters() if p.dim() == 4)

    def spy(model, *args, **kwargs):
        w = first_conv(model)
        layouts.append(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "run_evaluation", spy)
    cfg = exact_cfg(tiny_root, tmp_path / "run", "train.amp=bf16", "train.max_steps=2", "train.batch_size=2")
    cfg.train.deterministic = False
    trainer = Trainer(cfg, channels_last=True)
    trainer.train_one_epoch()
    metrics = trainer.evaluate_and_record()
    conv1 = first_conv(trainer.model)
    assert layouts == [False]  # NCHW during the evaluation
    assert conv1.is_contiguous(memory_format=torch.channels_last) and not conv1.is_contiguous()  # back
    again = evaluate_checkpoint(None, str(tmp_path / "run" / "checkpoints" / "last.pt"), [])
    assert json.dumps(again, sort_keys=True) == json.dumps(metrics, sort_keys=True)  # NaN == NaN here


def test_resume_position_counts_epochs_as_the_console_does():
    """An interrupt at epoch 25's last step was logged on resume as "epoch 24, step 50"."""
    from hqm.engine.trainer import resume_position

    assert resume_position(50, 25, 0) == "step 50 (25 epochs done)"
    assert resume_position(50, 24, 2) == "step 50 (step 2 of epoch 25)"
    assert resume_position(51, 25, 1) == "step 51 (step 1 of epoch 26)"
