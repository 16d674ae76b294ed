"""Mined query groups decoded in the learnable queries' own decoder call (``shares_decoder_calls``):
AMM's copies as a stacked batch, GBS's queries joined with a block-diagonal self-attention mask. Each
must compute what separate decoder passes compute: the same outputs, losses and gradients."""

from __future__ import annotations

import pytest
import torch

from conftest import NUM_OBJ, NUM_VERB, make_target, tiny_detector_cfg
from hqm.detectors import build_model
from hqm.models import build_criterion, build_matcher
from hqm.models.detector import QueryGroup, join_groups, split_outputs

GAUSSIAN_TWO_STAGE = ["model.query_type=gaussian", "model.box_refine=true", "model.two_stage=true"]


def _flat(outputs: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a decode's outputs by its path (``aux_outputs.0.pred_obj_logits`` ...)."""
    out = {}
    for k, v in outputs.items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v
        elif isinstance(v, list):
            for i, d in enumerate(v):
                out.update(_flat(d, f"{prefix}{k}.{i}."))
    return out


def _count_decodes(model) -> list[tuple[int, int]]:
    """Records (batch, queries) of every ``decode`` call of ``model``."""
    calls: list[tuple[int, int]] = []
    decode = model.decode

    def counted(enc, queries, *a, _decode=decode, _calls=calls, **kw):
        _calls.append((enc.memory.shape[0], queries.num_queries))
        return _decode(enc, queries, *a, **kw)

    model.decode = counted
    return calls


def _run(cfg, batch, mining, shared: bool):
    images, masks, targets = batch
    torch.manual_seed(0)
    model = build_model(cfg, NUM_OBJ, NUM_VERB).train()
    model.shares_decoder_calls = shared
    calls = _count_decodes(model)
    torch.manual_seed(1)  # AMM's random ranks, GBS's shifts
    out = model(images, masks, targets, mining=mining)
    crit = build_criterion(cfg, NUM_OBJ, build_matcher(cfg.loss))
    loss, _ = crit(out, targets, 1.0, {m: 1.0 for m in mining})
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return calls, out, loss, grads


def _assert_same(shared, separate, group: str, valid: list[int] | None = None):
    """Same learnable and mined outputs (mined: only the first ``valid[i]`` queries of image i, the
    unpadded ones, when given), loss and gradients."""
    (_, out_s, loss_s, grads_s), (_, out_p, loss_p, grads_p) = shared, separate
    pairs = {
        "": (out_s, out_p),
        group + "/": (out_s["groups"][group].outputs, out_p["groups"][group].outputs),
    }
    for name, (a, b) in pairs.items():
        fa = _flat({k: v for k, v in a.items() if k != "groups"})
        fb = _flat({k: v for k, v in b.items() if k != "groups"})
        assert fa.keys() == fb.keys()
        for k in fa:
            x, y = fa[k], fb[k]
            if name and valid is not None:
                x = torch.cat([x[i, :n] for i, n in enumerate(valid)])
                y = torch.cat([y[i, :n] for i, n in enumerate(valid)])
            assert torch.allclose(x, y, atol=1e-5, rtol=1e-4), name + k
    assert torch.allclose(loss_s, loss_p, atol=1e-5, rtol=1e-5)
    assert grads_s.keys() == grads_p.keys()
    for n in grads_s:
        assert torch.allclose(grads_s[n], grads_p[n], atol=1e-5, rtol=1e-3), n


@pytest.mark.parametrize(
    "detector,extra",
    [
        ("qpic", []),
        ("qpic", GAUSSIAN_TWO_STAGE),
        ("qpic", ["mining.amm.select=random"]),
        ("qpic", ["mining.amm.reference=self", "mining.amm.mask=bernoulli"]),
        ("cdn", []),
    ],
)
def test_amm_copies_stacked_beside_the_learnable_queries_compute_the_separate_passes(batch, detector, extra):
    """AMM ``queries: all``: the learnable queries and their masked copies as one batch of 2B images,
    each copy ranking keys by its learnable query's scores of the same layer call."""
    cfg = tiny_detector_cfg(detector, ["mining.strategy=amm", "mining.amm.k=6", *extra])
    shared, separate = _run(cfg, batch, ("amm",), True), _run(cfg, batch, ("amm",), False)
    assert shared[0] == [(4, 8)] and separate[0] == [(2, 8), (2, 8)]  # one call of 2B images, not two
    _assert_same(shared, separate, "amm")


@pytest.mark.parametrize(
    "detector,extra,pairs",
    [
        ("qpic", [], (3, 2)),
        ("qpic", GAUSSIAN_TWO_STAGE, (3, 2)),
        ("qpic", GAUSSIAN_TWO_STAGE + ["mining.gbs.shift=gaussian"], (1, 0)),  # an image without pairs
        ("cdn", [], (3, 2)),
        ("cdn", [], (0, 2)),
    ],
)
def test_gbs_queries_joined_to_the_learnable_queries_compute_the_separate_passes(detector, extra, pairs):
    """GBS: the hard queries after the learnable ones in one call, a block-diagonal self-attention
    mask keeping the groups (and the padding slots) apart."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 128)
    masks = torch.zeros(2, 96, 128, dtype=torch.bool)
    masks[1, :, 100:] = True
    batch = (images, masks, [make_target(n, seed=i + 1) for i, n in enumerate(pairs)])
    cfg = tiny_detector_cfg(detector, ["mining.strategy=gbs", *extra])
    shared, separate = _run(cfg, batch, ("gbs",), True), _run(cfg, batch, ("gbs",), False)
    n_max = max(max(pairs), 1)
    assert shared[0] == [(2, 8 + n_max)] and separate[0] == [(2, 8), (2, n_max)]
    for _, out, loss, grads in (shared, separate):
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
        assert all(torch.isfinite(v).all() for v in _flat(out["groups"]["gbs"].outputs).values())
    _assert_same(shared, separate, "gbs", valid=list(pairs))


def test_groups_that_cannot_share_the_call_take_one_of_their_own(batch):
    """HOTR (its decode points into a per-image instance set), AMM ``queries: matched`` (needs the
    learnable pass's assignment first), CJL (its pass has a hook of its own), GBS without reference
    points beside learnable queries with them, and GBS beside a hooked learnable pass (PJL: AMM's
    copies stacked, GBS alone) each keep a decoder call of their own."""
    cases = [
        ("hotr", ["mining.strategy=amm", "mining.amm.k=6"], ("amm",), [(2, 6), (2, 6)]),
        ("hotr", ["mining.strategy=gbs"], ("gbs",), [(2, 6), (2, 3)]),
        ("qpic", ["mining.strategy=amm", "mining.amm.k=6", "mining.amm.queries=matched"], ("amm",), None),
        ("qpic", ["mining.strategy=cjl", "mining.amm.k=6"], ("cjl",), [(2, 8), (2, 3), (2, 3)]),
        (
            "qpic",
            GAUSSIAN_TWO_STAGE + ["mining.strategy=gbs", "mining.gbs.reference_points=learned"],
            ("gbs",),
            [(2, 8), (2, 3)],
        ),
        ("qpic", ["mining.strategy=pjl", "mining.amm.k=6"], ("gbs", "amm"), [(4, 8), (2, 3)]),
    ]
    images, masks, targets = batch
    for detector, extra, mining, expected in cases:
        cfg = tiny_detector_cfg(detector, extra)
        torch.manual_seed(0)
        model = build_model(cfg, NUM_OBJ, NUM_VERB).train()
        calls = _count_decodes(model)
        out = model(images, masks, targets, mining=mining)
        assert all(m in out["groups"] for m in mining), (detector, extra)
        if expected is None:  # matched copies: as many queries as matched on some layer
            assert calls[0] == (2, 8) and len(calls) == 2 and calls[1][0] == 2, calls
        else:
            assert calls == expected, (detector, extra, calls)


def test_join_groups_blocks_other_groups_and_padding():
    pos = torch.randn(2, 3, 4)
    hard = QueryGroup(torch.randn(2, 2, 4), torch.tensor([[False, True], [True, True]]))
    joined = join_groups([QueryGroup(pos), hard])
    assert joined.pos.shape == (2, 5, 4) and joined.mask is None and joined.reference is None
    seen = torch.isfinite(joined.self_attn_bias[:, 0])  # (B, Q, Q): query i sees query j
    assert seen[:, :3, :3].all() and not seen[:, :3, 3:].any() and not seen[:, 3:, :3].any()
    # image 0: the hard query sees itself, not the padding slot; the slot sees the query and itself
    assert seen[0, 3, 3] and not seen[0, 3, 4] and seen[0, 4, 3] and seen[0, 4, 4]
    assert seen[1, 3:, 3:].equal(torch.eye(2, dtype=torch.bool))  # no pairs: every slot sees itself only
    with pytest.raises(ValueError, match="reference points"):
        join_groups([QueryGroup(pos, reference=torch.rand(2, 3, 4)), hard])
    with pytest.raises(ValueError, match="already a join"):
        join_groups([joined, hard])


def test_split_outputs_splits_nested_outputs_and_refuses_a_wrong_size():
    out = {"a": torch.arange(20.0).view(4, 5), "aux": [{"b": torch.zeros(4, 5)}], "n": 3}
    first, second = split_outputs(out, [1, 3], dim=0)
    assert first["a"].tolist() == [[0.0, 1.0, 2.0, 3.0, 4.0]] and second["a"].shape == (3, 5)
    assert first["aux"][0]["b"].shape == (1, 5) and first["n"] == second["n"] == 3
    left, right = split_outputs(out, [2, 3], dim=1)
    assert left["aux"][0]["b"].shape == (4, 2) and right["aux"][0]["b"].shape == (4, 3)
    with pytest.raises(ValueError, match="sizes \\[2, 2\\] along dim 1"):
        split_outputs(out, [2, 2], dim=1)


@pytest.mark.parametrize("detector", ["qpic", "cdn"])
def test_pjl_draws_its_random_numbers_in_the_order_of_separate_passes(batch, detector):
    """PJL: GBS's shifted boxes are drawn before AMM's masked ranks, as with separate passes (its
    queries are built before the stacked call, then decoded in a call of their own)."""
    cfg = tiny_detector_cfg(detector, ["mining.strategy=pjl", "mining.amm.k=6"])
    shared, separate = _run(cfg, batch, ("gbs", "amm"), True), _run(cfg, batch, ("gbs", "amm"), False)
    assert shared[0] == [(4, 8), (2, 3)] and separate[0] == [(2, 8), (2, 3), (2, 8)]
    _assert_same(shared, separate, "amm")
    gbs_s, gbs_p = _flat(shared[1]["groups"]["gbs"].outputs), _flat(separate[1]["groups"]["gbs"].outputs)
    assert all(torch.allclose(gbs_s[k], gbs_p[k], atol=1e-5) for k in gbs_s)
