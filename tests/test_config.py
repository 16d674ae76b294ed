"""Config system: defaults, YAML inheritance, overrides, errors with suggestions, round-trip."""

from __future__ import annotations

import pytest
import yaml

from hqm.config import CONFIG_DIR, ConfigError, config_from_dict, config_to_dict, load_config, save_config


def test_defaults_are_the_paper_recipe():
    cfg = load_config()
    assert (cfg.model.detector, cfg.model.backbone, cfg.model.num_queries, cfg.model.hidden_dim) == (
        "qpic",
        "resnet50",
        100,
        256,
    )
    assert (cfg.train.lr, cfg.train.lr_backbone, cfg.train.weight_decay, cfg.train.clip_max_norm) == (
        1e-4,
        1e-5,
        1e-4,
        0.1,
    )
    assert (cfg.loss.bbox_loss_coef, cfg.loss.eos_coef) == (2.5, 0.1)
    assert cfg.mining.gbs.iou_range == [0.4, 0.6] and cfg.mining.amm.k == 100 and cfg.mining.amm.gamma == 0.4


def test_overrides_and_types():
    cfg = load_config(
        None,
        [
            "train.lr=3e-4",
            "model.num_queries=16",
            "data.scales=[128, 160]",
            "model.aux_loss=false",
            "device=cpu",
        ],
    )
    assert cfg.train.lr == 3e-4 and cfg.model.num_queries == 16 and cfg.data.scales == [128, 160]
    assert cfg.model.aux_loss is False and cfg.device == "cpu"


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1"])
    with pytest.raises(ConfigError, match="Did you mean 'mining.amm.gamma'"):
        load_config(None, ["mining.amm.gama=0.3"])


def test_bad_values_fail_clearly():
    with pytest.raises(ConfigError, match="mining.strategy"):
        load_config(None, ["mining.strategy=magic"])
    with pytest.raises(ConfigError, match="expected an integer"):
        load_config(None, ["model.num_queries=abc"])
    with pytest.raises(ConfigError, match="iou_range"):
        load_config(None, ["mining.gbs.iou_range=[0.7, 0.2]"])
    # a short side above the long-side cap would be silently cut down to it: refused
    with pytest.raises(
        ConfigError, match=r"^data.test_scale=100000 exceeds data.max_size=224, .*raise data.max_size"
    ):
        load_config("qpic_r18_synthetic", ["data.test_scale=100000"])
    assert load_config("qpic_r18_synthetic", ["data.test_scale=224"]).data.test_scale == 224


def test_yaml_base_inheritance_and_file_errors(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  hidden_dim: 64\ntrain:\n  epochs: 3\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ntrain:\n  epochs: 5\n")
    cfg = load_config(child)
    assert cfg.model.hidden_dim == 64 and cfg.train.epochs == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle:\n  hidden_dim: 64\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*Did you mean 'model'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip(tmp_path):
    cfg = load_config(None, ["mining.strategy=ajl", "mining.beta=0.8", "data.scales=[96]"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == cfg


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_packaged_configs_load(path):
    load_config(path)


def test_off_and_on_stay_strings_in_files_and_overrides(tmp_path):
    # YAML 1.1 reads off / on / yes / no as booleans; train.amp=off must mean "off", not False
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  amp: off\nmodel:\n  aux_loss: false\n")
    cfg = load_config(path)
    assert cfg.train.amp == "off" and cfg.model.aux_loss is False
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
    assert load_config(None, ["model.aux_loss=true"]).model.aux_loss is True


def test_a_bad_value_set_by_the_file_names_the_file(tmp_path):
    """A choice or range error names the config file when the file set the value, not an override."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: qpic_r18_synthetic\nmining:\n  epochs: -3\n  strategy: sideways\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: mining\.strategy='sideways' is not one of") as e:
        load_config(bad)
    assert e.value.key == "mining.strategy"
    with pytest.raises(ConfigError, match=r"bad\.yaml: mining\.epochs=-3 is out of range"):
        load_config(bad, ["mining.strategy=ajl"])
    assert load_config(bad, ["mining.strategy=ajl", "mining.epochs=2"]).mining.epochs == 2
    with pytest.raises(ConfigError, match=r"^mining\.epochs=-1 is out of range"):  # the override's value
        load_config(bad, ["mining.strategy=ajl", "mining.epochs=-1"])


def test_a_bad_value_set_by_a_base_file_names_that_file(tmp_path):
    """A value from a ``_base_`` file is reported under that file's name, not its child's; a key the
    child sets again is the child's."""
    (tmp_path / "base.yaml").write_text("mining:\n  strategy: sideways\ntrain:\n  epochs: 2.5\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\ntrain:\n  epochs: 4\nmodel:\n  hiden_dim: 8\n")
    with pytest.raises(ConfigError, match=r"child\.yaml: unknown config key 'model\.hiden_dim'"):
        load_config(child)
    child.write_text("_base_: base.yaml\ntrain:\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"/base\.yaml: mining\.strategy='sideways' is not one of"):
        load_config(child)
    (tmp_path / "base.yaml").write_text("train:\n  epochs: 2.5\n")
    child.write_text("_base_: base.yaml\nmodel:\n  hidden_dim: 8\n")
    with pytest.raises(ConfigError, match=r"/base\.yaml: train\.epochs: expected an integer, got 2\.5"):
        load_config(child)
    child.write_text("_base_: base.yaml\ntrain:\n  epochs: 4\n")
    assert load_config(child).train.epochs == 4


def test_a_binary_file_given_as_config_is_one_clear_error(tmp_path):
    """A non-UTF-8 file (a checkpoint where a config goes) raised UnicodeDecodeError deep in YAML."""
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ConfigError, match=r"binary\.yaml: not a YAML config: not a text file$"):
        load_config(tmp_path / "binary.yaml")
    (tmp_path / "best.pt").write_bytes(b"PK\x03\x04\x80\x02garbage")
    with pytest.raises(ConfigError, match=r"best\.pt: not a YAML config: .*`hqm eval CKPT`"):
        load_config(tmp_path / "best.pt")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "model.safetensors").write_bytes(b"")
    (exported / "config.yaml").write_bytes(b"\xff\xfe")
    from hqm.zoo.export import read_exported
    from hqm.zoo.safe_load import CheckpointError

    with pytest.raises(CheckpointError, match=r"config\.yaml: not a text file"):
        read_exported(exported)
    save_config(load_config("qpic_r18_synthetic"), exported / "config.yaml")  # a run's, not an export's
    with pytest.raises(CheckpointError, match=r"config\.yaml: a run's config, not an export's"):
        read_exported(exported)


def test_a_key_given_twice_in_a_file_is_an_error(tmp_path):
    """PyYAML keeps the last of two `lr:` lines in silence; the first value would be lost unseen."""
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  lr: 1.0e-4\n  epochs: 3\n  lr: 2.0e-4\n")
    with pytest.raises(
        ConfigError, match=r"dup\.yaml: not valid YAML \(line 4, column 3\): the key 'lr' is given twice"
    ):
        load_config(path)
    path.write_text("train:\n  lr: 1.0e-4\nmodel:\n  lr: 2\n")  # the same name in two sections: fine
    with pytest.raises(ConfigError, match="unknown config key 'model.lr'"):
        load_config(path)


def test_an_empty_output_dir_is_refused():
    """train.output_dir= (empty) trained into the current folder."""
    with pytest.raises(ConfigError, match="train.output_dir is empty"):
        load_config("qpic_r18_synthetic", ["train.output_dir="])
