"""One clear line for every bad input: each case the issue lists (and its kind in every command)
ends in one stderr line naming the file, key or record, with exit code 2 (usage) or 1 (runtime);
``--debug`` adds the traceback; internal bugs are never turned into one-liners."""

from __future__ import annotations

import errno
import os
import pathlib
import re

import pytest
import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.cli import main
from hqm.config import ConfigError, load_config
from hqm.engine.rundir import LOCK_NAME
from hqm.errors import UserError


def one_line(capsys, argv: list[str], code: int, *needles: str) -> str:
    """Run ``hqm argv``; the exit code is ``code`` and stderr's last line names every needle, with no
    traceback anywhere."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hqm {argv[0]}: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def train_args(root, out, *extra: str) -> list[str]:
    return [
        "train",
        "qpic_r18_synthetic",
        *TINY_OVERRIDES,
        *TINY_DATA_64,
        f"data.root={root}",
        f"train.output_dir={out}",
        "train.max_steps=1",
        "train.batch_size=2",
        *extra,
    ]


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory) -> dict[str, pathlib.Path]:
    """A truncated, a zero-byte and a non-checkpoint ``.pt``, and weights without a config."""
    d = tmp_path_factory.mktemp("bad")
    good = d / "weights.pt"
    torch.save({"model": {"w": torch.zeros(1000)}}, good)  # weights only: no config, no optimiser
    data = good.read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "notes.pt").write_text("these are my notes, not a checkpoint\n")
    return {"weights": good, **{p.stem: p for p in d.glob("*.pt") if p != good}}


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("truncated", "truncated or damaged"),
        ("empty", "empty (0 bytes)"),
        ("notes", "not a PyTorch checkpoint"),
    ],
)
def test_unreadable_checkpoint_in_every_command(bad_checkpoints, tiny_root, tmp_path, capsys, kind, reason):
    path = str(bad_checkpoints[kind])
    for argv in (
        ["eval", path],
        ["predict", path, f"source={tiny_root}/images/test2015", f"out={tmp_path / 'pred'}"],
        ["export", path, str(tmp_path / "exported")],
        ["convert", "detr-to-hoi", path, str(tmp_path / "converted.pt")],
        train_args(tiny_root, tmp_path / "run", "--resume", path),
    ):
        one_line(capsys, argv, 1, path, reason)
    assert not (tmp_path / "run").exists() and not (tmp_path / "exported").exists()


def test_resume_on_weights_without_a_config(bad_checkpoints, tiny_root, tmp_path, capsys):
    weights = str(bad_checkpoints["weights"])
    one_line(
        capsys,
        train_args(tiny_root, tmp_path / "run", "--resume", weights),
        2,
        weights,
        "no training state",
        f"model.pretrained={weights}",
    )
    one_line(capsys, ["eval", weights], 2, weights, "carries no hqm config")


def test_eval_of_what_is_not_a_checkpoint_says_what_it_is_and_the_syntax(
    bad_checkpoints, tiny_ckpt, tmp_path, capsys
):
    """``hqm eval notes.txt`` said "give a checkpoint (hqm eval CKPT), or a config ..." and ``hqm eval
    detr.pth`` (weights without a config) "name one, e.g. qpic_r50_hico", without the syntax."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    one_line(
        capsys,
        ["eval", str(notes)],
        2,
        f"{notes} is neither a readable checkpoint (it is not a PyTorch checkpoint",
        "nor a config (the top level must be a mapping)",
        "hqm eval CKPT",
        "hqm eval CONFIG weights=PATH",
    )
    one_line(
        capsys,
        ["eval", "qpic_r18_synthetic"],
        2,
        "qpic_r18_synthetic is a config",
        "hqm eval qpic_r18_synthetic weights=PATH",
    )
    weights = bad_checkpoints["weights"]  # HOI-style weights without a config
    one_line(capsys, ["eval", str(weights)], 2, "carries no hqm config", f"hqm eval CONFIG weights={weights}")
    detr = tmp_path / "detr.pth"  # a raw DETR state dict: an initialisation, no HOI heads to evaluate
    torch.save(
        {"class_embed.weight": torch.zeros(92, 4), "bbox_embed.layers.0.weight": torch.zeros(4, 4)}, detr
    )
    one_line(
        capsys,
        ["eval", str(detr)],
        2,
        f"{detr} holds DETR weights",
        f"hqm train CONFIG model.pretrained={detr}",
        "hqm eval CONFIG weights=",
    )
    assert notes.read_text() == "my notes\n"
    # hqm predict and the Python API of the same weights: the syntax of each ("name one, e.g. ...")
    one_line(
        capsys,
        ["predict", str(weights), "source=x.jpg", "out=o"],
        2,
        f"hqm predict qpic_r50_hico weights={weights}",
        f"HOIDetector.from_checkpoint('{weights}', config='qpic_r50_hico')",
    )
    # a checkpoint under a name of its own (not .pt / .pth / .safetensors) is read as one
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    assert main(["eval", str(ckpt), "--json"]) == 0
    assert "mAP_full" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.num_queries=0", "model.num_queries=0"),
        ("data.scales=[]", "data.scales=[]"),
        ("train.log_every=0", "train.log_every=0"),
        ("train.epochs=0", "train.epochs=0"),
        ("train.max_steps=-1", "train.max_steps=-1"),
        ("train.lr=-0.001", "train.lr=-0.001"),
        ("train.lr=.nan", "train.lr=nan"),
        ("train.batch_size=0", "train.batch_size=0"),
        ("model.nheads=5", "not divisible by model.nheads=5"),
        ("model.dropout=1.5", "model.dropout=1.5"),
        ("eval.max_dets=0", "eval.max_dets=0"),
        ("mining.gbs.iou_range=[0.4]", "mining.gbs.iou_range=[0.4]"),
        ("train.on_nonfinite=ignore", "train.on_nonfinite='ignore' is not one of skip, stop"),
        ("device=gpu", "device='gpu'"),
        ("model.query_type=embed", "model.box_refine=true and model.two_stage=true need reference points"),
    ],
)
def test_config_values_are_checked_by_range(override, key):
    with pytest.raises(ConfigError, match=None) as e:
        load_config("qpic_r18_synthetic", [override])
    assert key in str(e.value)


def test_config_errors_in_every_command(bad_checkpoints, tiny_root, tmp_path, capsys):
    bad = [f"data.root={tiny_root}", "model.num_queries=0"]
    weights = f"weights={bad_checkpoints['weights']}"  # released-style weights: the config is used
    for argv in (
        ["train", "qpic_r18_synthetic", *bad],
        ["demo", *bad],
        ["check-data", "qpic_r18_synthetic", *bad],
        ["eval", "qpic_r18_synthetic", weights, *bad],
        ["predict", "qpic_r18_synthetic", weights, "source=x", "out=y", *bad],
    ):
        one_line(capsys, argv, 2, "model.num_queries=0", "out of range")
    one_line(capsys, ["synth", "--out", str(tmp_path / "s"), "train_size=0"], 2, "train_size")


def test_missing_base_file_says_where_it_looked(tmp_path, capsys):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("_base_: qpic_r50_hico_typo.yaml\ntrain:\n  epochs: 3\n")
    line = one_line(capsys, ["train", str(cfg)], 2, str(cfg), "qpic_r50_hico_typo.yaml", "not found")
    assert str(tmp_path / "qpic_r50_hico_typo.yaml") in line and "configs/qpic_r50_hico_typo.yaml" in line
    # a packaged config may be named as the base
    cfg.write_text("_base_: qpic_r50_hico\ntrain:\n  epochs: 3\n")
    assert load_config(cfg).train.epochs == 3 and load_config(cfg).data.dataset == "hico_det"


def test_cuda_without_a_gpu(bad_checkpoints, tiny_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line(capsys, train_args(tiny_root, tmp_path / "run", "device=cuda"), 2, "device=cuda", "device=cpu")
    weights = f"weights={bad_checkpoints['weights']}"
    one_line(capsys, ["eval", "qpic_r18_synthetic", weights, "device=cuda:1"], 2, "device=cuda:1", "CUDA")
    one_line(
        capsys,
        ["predict", "qpic_r18_synthetic", weights, "device=cuda", "source=x", "out=y"],
        2,
        "device=cuda",
        "CUDA is not available",
    )
    assert not (tmp_path / "run").exists()
    from hqm.device import DeviceError, resolve_device

    with pytest.raises(DeviceError):
        resolve_device("cuda")


def test_read_only_output_directory(tiny_root, tmp_path, capsys, monkeypatch):
    """A run directory the machine refuses: a read-only mount is simulated (root ignores chmod)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(ro)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refuse)
    out = ro / "run"
    one_line(capsys, train_args(tiny_root, out), 1, f"train.output_dir={out}", "read-only file system")
    one_line(
        capsys,
        ["synth", "--out", str(ro / "synth"), "--preset", "tiny"],
        1,
        str(ro / "synth"),
        "read-only file system",
    )


def test_missing_inputs_are_usage_errors(tiny_root, tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    one_line(capsys, ["eval", missing], 2, missing, "not found")
    one_line(capsys, ["export", missing, str(tmp_path / "e")], 2, missing)
    one_line(capsys, train_args(tiny_root, tmp_path / "run", "--resume", missing), 2, missing)
    one_line(
        capsys,
        ["eval-file", "--dataset", "synthetic", "--root", str(tiny_root), "--predictions", missing],
        2,
        missing,
    )
    one_line(capsys, ["check-data", "qpic_r18_synthetic", f"data.root={tmp_path}"], 2, "meta.json not found")


def test_eval_file_missing_root_names_the_option_it_was_given_with(tmp_path, capsys):
    # eval-file's --root was reported as "data.root=..." with a training hint (data.generate=true)
    for dataset, missing_file in (("synthetic", "meta.json"), ("hico_det", "test_hico.json")):
        args = ["eval-file", "--dataset", dataset, "--root", str(tmp_path), "--predictions", "p.json"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"at --root {tmp_path}:" in err and missing_file in err
        assert "data.root" not in err and "data.generate" not in err
    assert main(["check-data", "qpic_r18_synthetic", f"data.root={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert f"at data.root={tmp_path}:" in err and "data.generate=true" in err
    notes = tmp_path / "notes.txt"  # a file as the root was told to `hqm synth --out notes.txt`
    notes.write_text("mine")
    args = ["eval-file", "--dataset", "synthetic", "--root", str(notes), "--predictions", "p.json"]
    one_line(capsys, args, 2, f"--root {notes} is a file, not a dataset folder")
    one_line(
        capsys, ["check-data", "qpic_r18_synthetic", f"data.root={notes}"], 2, "is a file, not a dataset"
    )
    assert notes.read_text() == "mine"
    # a relative root says what it is relative to (a checkpoint's data.root read from elsewhere)
    with pytest.MonkeyPatch.context() as m:
        m.chdir(tmp_path)
        args = ["eval-file", "--dataset", "synthetic", "--root", "nope", "--predictions", "p.json"]
        one_line(capsys, args, 2, f"at --root nope (in the current folder {tmp_path}): nope/annotations")


def test_debug_shows_the_traceback_and_bugs_keep_theirs(capsys, monkeypatch):
    assert main(["--debug", "train", "qpic_r18_synthetic", "train.epochs=0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("hqm train: error: train.epochs=0")
    monkeypatch.setenv("HQM_DEBUG", "1")
    assert main(["train", "qpic_r18_synthetic", "train.epochs=0"]) == 2
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("HQM_DEBUG")

    import hqm.config

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(hqm.config, "load_config", bug)
    with pytest.raises(ValueError, match="an internal bug"):  # not a one-line "error:"
        main(["train", "qpic_r18_synthetic"])
    assert not issubclass(ValueError, UserError)


def test_api_raises_the_same_typed_errors(bad_checkpoints, monkeypatch):
    from hqm import HOIDetector
    from hqm.zoo.safe_load import CheckpointError

    with pytest.raises(CheckpointError, match="truncated"):
        HOIDetector.from_checkpoint(bad_checkpoints["truncated"])
    with pytest.raises(ValueError):  # CheckpointError is a ValueError, as the API always raised
        HOIDetector.from_checkpoint(bad_checkpoints["empty"])
    with pytest.raises(FileNotFoundError):
        HOIDetector.from_checkpoint(bad_checkpoints["empty"].with_name("absent.pt"))


def test_command_line_slips(bad_checkpoints, tiny_root, tmp_path, capsys):
    """Typos on the command line: each one line and exit code 2, before any model is loaded."""
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  epochs: [1\n")
    one_line(capsys, ["train", str(bad_yaml)], 2, str(bad_yaml), "not valid YAML (line 3, column 1)")
    one_line(capsys, ["train", "qpic_r18_synthetc"], 2, "Did you mean 'qpic_r18_synthetic'?")
    one_line(capsys, ["train", "qpic_r18_synthetic", "train.lr=abc"], 2, "train.lr", "expected a number")
    weights = str(bad_checkpoints["weights"])
    predict = ["predict", weights, "source=x", "out=y"]
    one_line(capsys, ["predict", weights, "out=y"], 2, "source=... is required")
    one_line(capsys, [*predict, "threshold=abc"], 2, "threshold=abc", "expected a number")
    one_line(capsys, [*predict, "top_k=0"], 2, "top_k=0", ">= 1")
    one_line(capsys, ["eval", "qpic_r18_synthetic"], 2, "weights=PATH")
    convert = ["convert", "detr-to-hoi", "--detector", "cdn", "--init", "x", weights, "o.pt"]
    one_line(capsys, convert, 2, "no DETR initialisation 'x'")
    trainable = train_args(tiny_root, tmp_path / "run", "train.trainable=[nope]")
    one_line(capsys, trainable, 2, "train.trainable names no parameter of this model: nope")


def test_full_disk_in_export_and_synth(tmp_path, capsys, monkeypatch):
    """The disk fills up while `hqm export` / `hqm synth` write (simulated: ENOSPC from the write)."""
    from PIL import Image

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    ckpt = tmp_path / "last.pt"
    torch.save({"model": {"w": torch.zeros(3)}, "config": {}, "meta": {}}, ckpt)
    import hqm.output

    opened = hqm.output.open_new

    class FullDisk:  # the temporary file opens; every write to it fails
        def __init__(self, f):
            self.f = f

        def write(self, data):
            full()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    with monkeypatch.context() as m:
        m.setattr(hqm.output, "open_new", lambda path, mode="wb": FullDisk(opened(path, mode)))
        out = tmp_path / "exported"
        one_line(capsys, ["export", str(ckpt), str(out)], 1, f"cannot export to {out}", "no space left")
        assert list(out.iterdir()) == []  # no partial file
    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "synth"
    line = one_line(capsys, ["synth", "--out", str(out), "--preset", "tiny"], 1, str(out), "no space left")
    assert "marked incomplete" in line and '"complete": false' in (out / "synth_config.json").read_text()


def test_a_failed_run_says_why_in_its_log(bad_checkpoints, tiny_root, tmp_path, capsys):
    """A run that stops on a user error after its folder was set up (here: unreadable
    ``model.pretrained`` weights) leaves no folder it created; in a folder that already had a log
    (an earlier attempt's), the log ends with the console's one line, so the folder says why."""
    out = tmp_path / "run"
    path = str(bad_checkpoints["notes"])
    args = train_args(tiny_root, out, f"model.pretrained={path}")
    line = one_line(capsys, args, 1, path)
    assert not out.exists()
    out.mkdir()
    (out / LOCK_NAME).write_text("pid 1 on elsewhere\n")  # an earlier attempt that never trained
    (out / "log.txt").write_text("[10:00:00] an earlier attempt\n")
    assert one_line(capsys, args, 1, path) == line
    last = (out / "log.txt").read_text().strip().splitlines()[-1]
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] ERROR: " + re.escape(line), last), last


def test_a_folder_where_a_file_goes_is_named_as_a_folder(tmp_path, capsys):
    """`hqm export FOLDER x` said "checkpoint not found", `hqm train FOLDER` "config not found"."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    one_line(
        capsys, ["export", str(folder), str(tmp_path / "x")], 2, "imgs is a folder, not a checkpoint file"
    )
    one_line(capsys, ["train", str(folder)], 2, "imgs' is a folder: give a YAML file")
    assert not (tmp_path / "x").exists()


def test_a_torchrun_worker_other_than_rank_0_tags_its_error_line(capsys, monkeypatch):
    # every rank printed the same untagged line: N copies read as N different failures
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "qpic_r18_synthetic", "train.epohcs=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqm train [rank 1]: error: unknown config key 'train.epohcs'"), err
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "qpic_r18_synthetic", "train.epohcs=3"]) == 2
    assert capsys.readouterr().err.startswith("hqm train: error: unknown config key")


def test_rank_and_world_size_without_a_torchrun_launch_is_one_line(capsys, monkeypatch, tmp_path):
    """RANK / WORLD_SIZE left in the shell without MASTER_ADDR: a 22-line traceback from the
    env:// rendezvous; now one line saying to launch with torchrun or unset them."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    args = ["train", "qpic_r18_synthetic", "data.root=nope", f"train.output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "MASTER_ADDR and MASTER_PORT are not" in err and "torchrun --nproc-per-node" in err
    assert not (tmp_path / "run").exists()


def test_json_in_another_encoding_is_one_line_and_utf16_is_read(tiny_root, tmp_path, capsys):
    """A latin-1 annotation / predictions file was a UnicodeDecodeError traceback (check-data, train,
    eval, eval-file); JSON's other encodings (UTF-16) are read."""
    import json
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_root, root)
    train = root / "annotations" / "trainval_hico.json"
    records = json.loads(train.read_text())
    train.write_bytes('[{"file_name": "caf\u00e9.jpg"}]'.encode("latin-1"))
    check = ["check-data", "qpic_r18_synthetic", f"data.root={root}", "--no-decode"]
    assert main(check) == 1
    out = capsys.readouterr()
    assert "Traceback" not in out.err and f"{train}: not UTF-8 text (byte 0xe9 at offset 19" in out.out
    one_line(capsys, train_args(root, tmp_path / "run"), 1, str(train), "not UTF-8 text", "save it as UTF-8")
    train.write_bytes(json.dumps(records).encode("utf-16"))
    assert main(check) == 0
    capsys.readouterr()
    preds = tmp_path / "p.json"
    preds.write_bytes('[{"file_name": "caf\u00e9.jpg"}]'.encode("latin-1"))
    args = ["eval-file", "--dataset", "synthetic", "--root", str(root), "--predictions", str(preds)]
    one_line(capsys, args, 1, str(preds), "not UTF-8 text")
