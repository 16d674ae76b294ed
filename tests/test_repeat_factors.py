"""``data.repeat_threshold``: LVIS repeat-factor sampling of rare HOI classes -- the factors, an epoch
that keeps its length and repeats rare images about r times as often, each copy augmented on its own,
exact resumption, and the refusals."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_demo_cfg
from hqm.config import ConfigError, load_config
from hqm.data.repeat_factors import repeat_factors
from hqm.engine.sampling import EpochSampler, SeededDataset
from hqm.engine.trainer import Trainer
from hqm.structures import ImageAnnotation


def _record(name: str, hois: list[tuple[int, int]]) -> ImageAnnotation:
    """One person (instance 0) with one object per HOI; hois: (verb, object class) with class -1 = none."""
    labels = [0] + [c for _, c in hois if c >= 0]
    rows, k = [], 1
    for verb, c in hois:
        rows.append([0, k if c >= 0 else -1, verb])
        k += c >= 0
    return ImageAnnotation(
        file_name=name,
        boxes=np.zeros((len(labels), 4), np.float32),
        labels=np.array(labels, np.int64),
        hois=np.array(rows, np.int64).reshape(-1, 3),
    )


def test_factors_follow_lvis_per_hoi_class_and_image():
    # 100 images: (0, 1) in 90 of them, (1, 2) in 4, (2, none) in 1, plus 5 without HOIs
    records = [_record(f"c{i}", [(0, 1)]) for i in range(86)]
    records += [_record(f"r{i}", [(0, 1), (1, 2)]) for i in range(4)]
    records += [_record("none", [(2, -1)])] + [_record(f"e{i}", []) for i in range(9)]
    r = repeat_factors(records, 0.1)
    assert r.shape == (100,) and r.dtype == np.float64
    assert np.all(r[:86] == 1.0)  # f = 0.9 >= t: never repeated
    assert np.allclose(r[86:90], math.sqrt(0.1 / 0.04))  # the image's largest class factor
    assert r[90] == pytest.approx(math.sqrt(0.1 / 0.01))  # a role without object is a class too
    assert np.all(r[91:] == 1.0)  # no HOI: 1
    # the same HOI class twice in one image counts the image once: f = 1 / 2, not 2 / 2
    two = repeat_factors([_record("a", [(1, 2), (1, 2)]), _record("b", [(0, 1)])], 1.0)
    assert two[0] == pytest.approx(math.sqrt(2))
    assert np.all(repeat_factors(records, 0.001) == 1.0)


def test_an_epoch_keeps_its_length_and_repeats_rare_images_about_r_times():
    r = np.ones(200)
    r[:4] = 4.0
    r[4] = 2.5
    seen = Counter()
    epochs = 200
    for epoch in range(epochs):
        sampler = EpochSampler(200, seed=3, repeat_factors=r)
        sampler.set_epoch(epoch)
        items = list(sampler)
        assert len(items) == len(sampler) == 200
        assert all(it[1] == epoch for it in items)
        assert len(set(items)) == 200  # each copy once: (index, epoch) or (index, epoch, k >= 1)
        assert all(len(it) == 2 or it[2] >= 1 for it in items)
        seen.update(it[0] for it in items)
    keep = 200 / r.sum()  # the share of the repeated list an epoch keeps
    assert seen[0] / epochs == pytest.approx(4 * keep, rel=0.1)
    assert seen[4] / epochs == pytest.approx(2.5 * keep, rel=0.15)
    common = np.mean([seen[i] for i in range(5, 200)]) / epochs
    assert common == pytest.approx(keep, rel=0.05)
    # a pure function of (seed, epoch)
    a, b, c = (EpochSampler(200, seed=s, repeat_factors=r) for s in (3, 3, 4))
    for s in (a, b, c):
        s.set_epoch(7)
    assert list(a) == list(b) != list(c)
    a.set_epoch(7, start=50)
    assert list(a) == list(b)[50:]


def test_ranks_split_one_epoch_and_factors_of_one_change_nothing():
    r = np.ones(10)
    r[0] = 3.0
    whole = EpochSampler(10, seed=1, repeat_factors=r)
    whole.set_epoch(2)
    shards = []
    for rank in range(2):
        s = EpochSampler(10, seed=1, rank=rank, world_size=2, repeat_factors=r)
        s.set_epoch(2)
        shards.append(list(s))
    assert sorted(shards[0] + shards[1]) == sorted(whole)
    ones = EpochSampler(10, seed=1, repeat_factors=np.ones(10))
    ones.set_epoch(2)
    assert sorted(i for i, _ in ones) == list(range(10))


class _Draw(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        return torch.rand(()).item()


def test_each_copy_is_augmented_on_its_own_and_copy_zero_as_before():
    ds = SeededDataset(_Draw(), seed=5)
    assert ds[(2, 1)] == ds[(2, 1, 0)] == ds[(2, 1)]
    assert ds[(2, 1, 1)] != ds[(2, 1)] and ds[(2, 1, 1)] != ds[(2, 1, 2)]
    assert ds[(2, 1, 1)] == ds[(2, 1, 1)]


def _trainer(root, out, *extra):
    return Trainer(tiny_demo_cfg(root, out, *extra))


@pytest.mark.parametrize("grouping", [1, 4])
def test_training_keeps_its_steps_and_a_resumed_epoch_its_batches(tiny_root, tmp_path, grouping):
    extra = [f"train.size_grouping={grouping}", "data.repeat_threshold=1.0"]
    plain = _trainer(tiny_root, tmp_path / "plain", f"train.size_grouping={grouping}")
    rfs = _trainer(tiny_root, tmp_path / "a", *extra)
    assert rfs.sampler.repeat_factors.max() > 1  # the tiny preset has rarer and commoner classes
    assert rfs.steps_per_epoch == plain.steps_per_epoch
    whole = list(rfs.epoch_batches(0))
    names = [t["file_name"] for x in whole for t in x[2]]
    assert len(set(names)) < len(names)  # some image twice in the epoch
    rest = list(_trainer(tiny_root, tmp_path / "b", *extra).epoch_batches(3))
    assert len(rest) == len(whole) - 3
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(rest, whole[3:]))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["data.repeat_threshold=-0.1"], "data.repeat_threshold"),
        (["data.repeat_threshold=1.5"], "data.repeat_threshold"),
        (
            ["data.repeat_threshold=0.01", "data.dataset=synthetic", "data.synth_stream=true"],
            "add data.repeat_threshold=0 to train on the stream, or data.synth_stream=false",
        ),
    ],
)
def test_bad_thresholds_are_refused(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)
