"""AMM: top-K masking semantics, the hook on the attention paths, the miner's query variants."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, TINY_OVERRIDES
from hqm.config import load_config
from hqm.detectors import build_model
from hqm.mining.amm import AttentionMasking, topk_mask
from hqm.models import LearnableAssignment, build_criterion, build_matcher


def scores(b=2, t=3, q=5, s=40, pad=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, q, s, generator=g)
    if pad is not None:  # pad[i] = number of padded keys at the end of image i's key list
        for i, p in enumerate(pad):
            if p:
                x[i, ..., s - p :] = float("-inf")
    return x


def topk_sets(ref, k):
    return ref.topk(k, dim=-1).indices


@pytest.mark.parametrize("k,gamma", [(10, 0.4), (100, 0.4), (7, 0.5), (40, 0.3)])
def test_exact_count_masks_round_gamma_k_inside_the_reference_topk(k, gamma):
    torch.manual_seed(0)
    ref = scores(s=40, pad=[0, 15])
    hide = topk_mask(ref, k, gamma)
    for i, n_valid in enumerate((40, 25)):
        k_i = min(k, n_valid)
        expected = int(gamma * k_i + 0.5)
        assert (hide[i].sum(-1) == expected).all()
        top = torch.zeros_like(hide[i]).scatter_(-1, topk_sets(ref[i], k_i), True)
        assert not (hide[i] & ~top).any()  # every masked key is among the top-K
        assert not hide[i][..., n_valid:].any()  # never a padded key


def test_exact_count_ranks_are_shared_by_every_row_of_a_call():
    """Released semantics: one random set of ranks per layer call, for all images, heads and queries."""
    torch.manual_seed(0)
    ref = scores(s=30)
    hide = topk_mask(ref, 10, 0.4)
    order = ref.topk(30, dim=-1).indices
    hidden_ranks = torch.gather(hide, -1, order)  # (B, T, Q, S) hide flag by rank
    assert (hidden_ranks == hidden_ranks[0, 0, 0]).all()
    assert not hidden_ranks[..., 10:].any()
    other = topk_mask(ref, 10, 0.4)  # a new call draws new ranks (with high probability)
    assert not torch.equal(torch.gather(other, -1, order)[0, 0, 0], hidden_ranks[0, 0, 0])


def test_exact_count_per_row_draws_each_rows_ranks_on_its_own():
    """The variant keeps the count and the top-K but draws the masked ranks per (image, head, query)."""
    torch.manual_seed(0)
    ref = scores(b=2, t=3, q=20, s=40, pad=[0, 15])
    hide = topk_mask(ref, 10, 0.4, "exact_count_per_row")
    assert (hide.sum(-1) == 4).all()
    top = torch.zeros_like(hide).scatter_(-1, topk_sets(ref, 10), True)
    assert not (hide & ~top).any() and not hide[1][..., 25:].any()
    hidden_ranks = torch.gather(hide, -1, ref.topk(40, dim=-1).indices)[..., :10]
    rows = hidden_ranks.reshape(-1, 10)
    assert len(torch.unique(rows, dim=0)) > rows.shape[0] // 2  # not one shared set of ranks
    # every rank is hidden in about gamma of the rows, the best-attended key included
    assert (hidden_ranks.float().mean((0, 1, 2)) - 0.4).abs().max() < 0.2
    hook = AttentionMasking({0: ref.clone()}, k=10, gamma=0.4, mode="exact_count_per_row")
    probs = hook.post_softmax(0, hook.pre_softmax(0, ref).softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))  # renormalised


def test_unknown_mask_mode_is_refused():
    with pytest.raises(ValueError, match="unknown AMM mask mode 'per_entry'"):
        topk_mask(scores(), 10, 0.4, "per_entry")


def test_exact_count_masked_attention_renormalises():
    torch.manual_seed(0)
    logits = scores(s=50, pad=[0, 10])
    hook = AttentionMasking({0: logits.clone()}, k=20, gamma=0.4)
    masked = hook.pre_softmax(0, logits)
    probs = hook.post_softmax(0, masked.softmax(-1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert ((probs == 0).sum(-1)[0] == 8).all() and ((probs == 0).sum(-1)[1] == 18).all()


def test_bernoulli_drops_topk_entries_after_the_softmax_without_renormalising():
    torch.manual_seed(0)
    logits = scores(b=2, t=4, q=50, s=60)
    hook = AttentionMasking({0: logits.clone()}, k=20, gamma=0.4, mode="bernoulli")
    pre = hook.pre_softmax(0, logits)
    torch.testing.assert_close(pre, logits)  # nothing before the softmax
    full = pre.softmax(-1)
    probs = hook.post_softmax(0, full)
    dropped = (probs == 0) & (full > 0)
    top = torch.zeros_like(dropped).scatter_(-1, topk_sets(logits, 20), True)
    assert not (dropped & ~top).any()
    assert abs(dropped.float().sum(-1).mean().item() / 20 - 0.4) < 0.03  # Bernoulli(keep = 0.6)
    sums = probs.sum(-1)
    assert (sums < 1).all()  # rows are not renormalised
    torch.testing.assert_close(probs[~dropped], full[~dropped])


def test_select_random_masks_gamma_of_all_valid_keys():
    torch.manual_seed(0)
    logits = scores(s=50, pad=[0, 20])
    hook = AttentionMasking(None, k=5, gamma=0.4, select="random")
    masked = hook.pre_softmax(0, logits)
    n_inf = torch.isinf(masked).sum(-1)
    assert (n_inf[0] == 20).all() and (n_inf[1] == 20 + 12).all()


def test_reference_self_ranks_by_the_incoming_logits():
    torch.manual_seed(0)
    logits = scores(s=30)
    masked = AttentionMasking(None, k=10, gamma=0.5).pre_softmax(0, logits)
    hidden = torch.isinf(masked)
    top = torch.zeros_like(hidden).scatter_(-1, topk_sets(logits, 10), True)
    assert (hidden.sum(-1) == 5).all() and not (hidden & ~top).any()


def test_k_is_capped_and_a_key_always_survives():
    torch.manual_seed(0)
    ref = scores(s=4, pad=[0, 3])  # image 1 has a single valid key
    hide = topk_mask(ref, 100, 0.9)
    assert (hide[0].sum(-1) == 4 - 1).all() and not hide[1].any()


def _tiny(extra):
    torch.manual_seed(0)
    cfg = load_config(None, TINY_OVERRIDES + extra)
    model = build_model(cfg, NUM_OBJ, NUM_VERB).train()
    return cfg, model, build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss))


def test_amm_pass_uses_the_learnable_reference_and_copies(batch, masking_reference):
    images, masks, targets = batch
    _, model, crit = _tiny(["mining.strategy=amm", "mining.amm.k=6"])
    out = model(images, masks, targets, mining=("amm",))
    group = out["groups"]["amm"]
    assert group.assignment == LearnableAssignment(query_map=None)
    assert group.outputs["pred_obj_logits"].shape == out["pred_obj_logits"].shape
    ref = masking_reference["reference"]
    assert sorted(ref) == [0, 1] and ref[0].shape[:3] == (2, 4, 8) and not ref[0].requires_grad
    loss, logs = crit(out, targets, 1.0, {"amm": 1.0})
    assert torch.isfinite(loss) and "amm/loss_verb_ce" in logs and "amm/loss_obj_ce_0" in logs


def test_amm_matched_queries_decode_only_matched_copies(batch):
    images, masks, targets = batch
    _, model, crit = _tiny(["mining.strategy=amm", "mining.amm.queries=matched", "mining.amm.k=6"])
    out = model(images, masks, targets, mining=("amm",))
    group = out["groups"]["amm"]
    qmap = group.assignment.query_map
    # the Hungarian assignment computed in forward travels with the group, the criterion reuses it
    assert group.learnable_indices is not None
    for i, t in enumerate(targets):
        matched = torch.unique(torch.cat([idx[i][0] for idx in group.learnable_indices]))
        assert torch.equal(qmap[i], matched) and len(t["obj_labels"]) <= len(qmap[i])
    assert group.outputs["pred_obj_logits"].shape[1] == max(len(m) for m in qmap)
    loss, _ = crit(out, targets, 1.0, {"amm": 1.0})
    assert torch.isfinite(loss)


def test_amm_skip_final_norm_and_target_learnable(batch):
    images, masks, targets = batch
    _, model, _ = _tiny(["mining.strategy=amm", "mining.amm.target=learnable", "mining.amm.k=6"])
    base = model(images, masks, targets)
    masked = model(images, masks, targets, mining=("amm",))
    assert "amm" not in masked.get("groups", {})  # w/o Q^m: no extra group
    assert not torch.allclose(base["pred_verb_logits"], masked["pred_verb_logits"])
    _, model, _ = _tiny(["mining.strategy=amm", "mining.amm.skip_final_norm=true", "mining.amm.k=6"])
    calls = []
    decode = model.decode
    model.decode = lambda *a, **kw: calls.append(kw.get("final_norm", True)) or decode(*a, **kw)
    model(images, masks, targets, mining=("amm",))
    assert calls == [True, False]
