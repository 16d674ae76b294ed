"""Same-size batching: grouping, the evaluation batch sampler, cropping padded batches, and evaluation
predictions that do not depend on eval.batch_size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_DATA_64, TINY_OVERRIDES
from hqm.config import load_config
from hqm.data import collate_fn
from hqm.data.batching import SizeGroupedBatchSampler, same_size_groups, unpadded_groups
from hqm.engine.sampling import EpochSampler


def test_same_size_groups_first_appearance_order_and_chunks():
    assert same_size_groups(["a", "b", "a", "c", "a", "b"]) == [[0, 2, 4], [1, 5], [3]]
    assert same_size_groups(["a", "b", "a", "c", "a", "b"], 2) == [[0, 2], [4], [1, 5], [3]]
    assert same_size_groups([]) == []


@pytest.mark.parametrize("world", [1, 2])
def test_size_grouped_batch_sampler_keeps_every_item_once(world):
    sizes = [(64, 48), (48, 64), (64, 48), (64, 48), (32, 32), (48, 64), (64, 48)]
    for rank in range(world):
        sampler = EpochSampler(len(sizes), 0, False, rank, world)
        batches = list(SizeGroupedBatchSampler(sampler, sizes, batch_size=2))
        assert len(batches) == len(SizeGroupedBatchSampler(sampler, sizes, batch_size=2))
        flat = [item for b in batches for item in b]
        assert sorted(flat) == sorted(sampler)  # (index, epoch) items, padding repeats included
        assert all(len(b) <= 2 and len({sizes[i] for i, _ in b}) == 1 for b in batches)
    one = list(SizeGroupedBatchSampler(EpochSampler(len(sizes), 0, False), sizes, batch_size=4))
    assert [[i for i, _ in b] for b in one] == [[0, 2, 3, 6], [1, 5], [4]]


def test_unpadded_groups_crop_the_padding_off():
    a, b, c = torch.rand(3, 4, 6), torch.rand(3, 5, 3), torch.rand(3, 4, 6)
    images, masks, _ = collate_fn([(a, {}), (b, {}), (c, {})])
    groups = list(unpadded_groups(images, masks, [(4, 6), (5, 3), (4, 6)]))
    assert [g[0] for g in groups] == [[0, 2], [1]]
    (_, x0, m0), (_, x1, m1) = groups
    assert torch.equal(x0, torch.stack([a, c])) and torch.equal(x1, b[None])
    assert x0.shape == (2, 3, 4, 6) and not m0.any() and m1.shape == (1, 5, 3) and not m1.any()


def _eval_predictions(root, batch_size: int, batching: str) -> tuple[dict, dict]:
    from hqm.detectors import build_model
    from hqm.engine.evaluate import build_eval_setup, run_evaluation

    overrides = [f"data.root={root}", f"eval.batch_size={batch_size}", f"eval.batching={batching}"]
    cfg = load_config(None, TINY_OVERRIDES + TINY_DATA_64 + overrides + ["eval.ap_thresholds=numpy"])
    ev = build_eval_setup(cfg, None, torch.device("cpu"))
    assert ev.evaluator.ap_thresholds == "numpy"  # the config reaches the evaluator
    torch.manual_seed(0)
    model = build_model(cfg, ev.dataset.meta.num_obj_classes, ev.dataset.meta.num_verb_classes)
    metrics, preds = run_evaluation(
        model, ev.loader, ev.postprocessor, ev.evaluator, torch.device("cpu"), batching=batching
    )
    torch.set_grad_enabled(True)
    return metrics, {p.file_name: p for p in preds}


def test_eval_predictions_do_not_depend_on_batch_size(tiny_root):
    """8 test images of 8 stored sizes: same-size batching gives batch size 4 the predictions of
    batch size 1 up to the rounding of batched kernels (images of one input size share a pass);
    padding them into batches (the released code's batching) changes them."""
    m1, one = _eval_predictions(tiny_root, 1, "same_size")
    m4, four = _eval_predictions(tiny_root, 4, "same_size")
    assert m4 == pytest.approx(m1, abs=1e-9) and one.keys() == four.keys() and len(one) == 8
    for name, p in one.items():
        np.testing.assert_allclose(p.scores, four[name].scores, rtol=0, atol=1e-6)
        np.testing.assert_allclose(p.sub_boxes, four[name].sub_boxes, rtol=0, atol=1e-3)  # pixels
    _, padded = _eval_predictions(tiny_root, 4, "padded")
    moved = [abs(float(p.scores[0]) - float(padded[n].scores[0])) for n, p in one.items()]  # best triplet
    assert sum(d > 1e-5 for d in moved) >= 4  # 8 sizes, batches of 4: at least 6 images are padded


def test_evaluation_batches_group_images_by_input_size_not_stored_size(tiny_root):
    """Different stored sizes that the test resize maps to one input size share a batch: the
    sampler's key is each image's real input size, so every loader batch is one unpadded size."""
    from hqm.engine.evaluate import build_eval_setup, input_sizes

    overrides = [f"data.root={tiny_root}", "eval.batch_size=8", "data.test_scale=32", "data.max_size=32"]
    ev = build_eval_setup(load_config(None, TINY_OVERRIDES + overrides), None, torch.device("cpu"))
    keys = input_sizes(ev.dataset)
    stored = {(a.width, a.height) for a in ev.dataset.annotations}
    assert [tuple(ev.dataset[i][0].shape[-2:]) for i in range(len(keys))] == keys
    assert len(set(keys)) < len(stored)  # the point: fewer forward passes than stored sizes
    batches = list(ev.loader)
    assert len(batches) == len(set(keys))
    assert all(not masks.any() for _, masks, _ in batches)  # nothing padded
