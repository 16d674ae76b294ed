"""``train.size_grouping``: training batches cut from pools of augmented images by size (less padding),
every image of the epoch used once, a resumed epoch seeing exactly the batches it had left, any seed,
the resume policy; and two trainer guards met on the way (a batch larger than the training set, loader
workers ended by ``fit``)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_demo_cfg
from hqm.config import ConfigError, load_config
from hqm.data.batching import size_grouped_batches
from hqm.engine.trainer import Trainer


def test_pool_is_cut_by_padded_height_then_width_and_the_remainder_dropped():
    sizes = [(120, 150), (200, 100), (118, 100), (190, 190), (121, 160), (199, 120), (100, 100)]
    # padded to 32: (128,160) (224,128) (128,128) (192,192) (128,160) (224,128) (128,128)
    assert size_grouped_batches(sizes, 2, 32) == [[2, 6], [0, 4], [3, 1]]  # position 5 left over
    assert size_grouped_batches(sizes, 7, 1) == [[6, 2, 0, 4, 3, 5, 1]]
    assert size_grouped_batches(sizes[:1], 2, 32) == []
    with pytest.raises(ValueError, match="batch_size"):
        size_grouped_batches(sizes, 0)


def _trainer(root, out, *extra):
    # data.repeat_threshold=0: every image once per epoch (repeat factors: test_repeat_factors.py)
    return Trainer(tiny_demo_cfg(root, out, "train.size_divisibility=16", "data.repeat_threshold=0", *extra))


def _names(batch) -> list[str]:
    return [t["file_name"] for t in batch[2]]


def test_an_epoch_uses_every_image_once_with_less_padding(tiny_root, tmp_path):
    plain = _trainer(tiny_root, tmp_path / "plain", "train.size_grouping=1")
    grouped = _trainer(tiny_root, tmp_path / "grouped", "train.size_grouping=4")
    assert grouped.steps_per_epoch == plain.steps_per_epoch
    a, b = list(plain.epoch_batches(0)), list(grouped.epoch_batches(0))
    assert len(a) == len(b) == plain.steps_per_epoch
    assert all(len(_names(x)) == 2 for x in a + b)
    n = len(plain.train_set)
    if n % 2 == 0:  # drop_last drops nothing: the same images, in other batches
        assert sorted(sum(map(_names, a), [])) == sorted(sum(map(_names, b), []))
    assert len(set(sum(map(_names, b), []))) == 2 * len(b)  # none twice

    def padding(batches) -> float:
        return sum(x[1].float().sum().item() for x in batches) / sum(x[1].numel() for x in batches)

    assert padding(b) < padding(a)
    # the same image gets the same augmentation in both: grouping changes batch-mates only
    first = {t["file_name"]: t["sub_boxes"] for x in a for t in x[2]}
    assert all(torch.equal(first[t["file_name"]], t["sub_boxes"]) for x in b for t in x[2])


@pytest.mark.parametrize("done", [1, 4, 5])
def test_a_resumed_epoch_sees_exactly_the_batches_it_had_left(tiny_root, tmp_path, done):
    whole = list(_trainer(tiny_root, tmp_path / "a", "train.size_grouping=4").epoch_batches(0))
    rest = list(_trainer(tiny_root, tmp_path / "b", "train.size_grouping=4").epoch_batches(done))
    assert len(whole) > done
    assert [_names(x) for x in rest] == [_names(x) for x in whole[done:]]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(rest, whole[done:]))


def test_grouping_is_refused_below_one_and_on_resume(tiny_root, tmp_path):
    with pytest.raises(ConfigError, match="train.size_grouping"):
        load_config("qpic_r18_synthetic", ["train.size_grouping=0"])
    from hqm.engine.resume_policy import ResumeError, check_compatible

    old = load_config("qpic_r18_synthetic", [])
    new = load_config("qpic_r18_synthetic", ["train.size_grouping=4"])
    with pytest.raises(ResumeError, match="train.size_grouping"):
        check_compatible(old, new, "last.pt")


@pytest.mark.parametrize("seed", [4294967295, 2**63 - 1])
def test_any_seed_trains_with_grouping(tiny_root, tmp_path, seed):
    """The epoch permutation's and the pool order's seeds are reduced into the generator's range
    (seed 2**32 - 1 overflowed the pool order, 2**63 - 1 the permutation); 2**63 is refused."""
    trainer = _trainer(tiny_root, tmp_path / "s", "train.size_grouping=4", f"train.seed={seed}")
    assert len(next(iter(trainer.epoch_batches(0)))[2]) == 2
    with pytest.raises(ConfigError, match="train.seed"):
        load_config("qpic_r18_synthetic", [f"train.seed={2**63}"])


def test_size_divisibility_is_refused_on_resume_only_when_batches_are_grouped():
    from hqm.engine.resume_policy import ResumeError, check_compatible

    grouped = load_config("qpic_r18_synthetic", ["train.size_grouping=8", "train.size_divisibility=16"])
    with pytest.raises(ResumeError, match="train.size_divisibility"):
        check_compatible(grouped, load_config("qpic_r18_synthetic", ["train.size_divisibility=32"]), "x")
    plain = load_config("qpic_r18_synthetic", ["train.size_grouping=1", "train.size_divisibility=16"])
    other = load_config("qpic_r18_synthetic", ["train.size_grouping=1", "train.size_divisibility=32"])
    assert check_compatible(plain, other, "x")["applied"] == [("train.size_divisibility", 16, 32)]


def test_a_batch_larger_than_the_training_set_is_refused(tiny_root, tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size=1000 .* lower train.batch_size"):
        _trainer(tiny_root, tmp_path / "big", "train.batch_size=1000")


def test_training_ends_its_persistent_loader_workers(tiny_root, tmp_path):
    """Workers ignore SIGTERM, so one left alive would hang the interpreter's exit (seen after a
    resumed run with data.num_workers=1 that stopped mid-epoch): fit() ends them itself."""
    import multiprocessing

    trainer = _trainer(
        tiny_root,
        tmp_path / "w",
        "data.num_workers=1",
        "train.max_steps=3",
        "eval.every=0",
        "train.size_grouping=1",
    )
    trainer.fit()  # stops mid-epoch, the loader iterator still holds its worker
    assert trainer.train_loader._iterator is None
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
