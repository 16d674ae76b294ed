"""The CPU dropout mask (hqm.models.dropout) against F.dropout's contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hqm.models.dropout import Dropout, drop_mask, dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_matches_p(p):
    torch.manual_seed(0)
    n = 400_000
    keep = 1.0 - drop_mask(torch.Size([n]), p).double().mean().item()
    expected = 1.0 - round(p * 65536) / 65536
    # 6 standard deviations of a binomial proportion: fails for any real bias, not by chance
    assert abs(keep - expected) < 6 * math.sqrt(expected * (1 - expected) / n)


def test_lanes_are_independent():
    """Neighbouring elements come from the same 64-bit word: their keep decisions must still be
    independent (P(both kept) = P(kept)^2)."""
    torch.manual_seed(1)
    m = drop_mask(torch.Size([200_000, 4]), 0.5).double()
    for a, b in [(0, 1), (1, 2), (2, 3), (0, 3)]:
        both = (m[:, a] * m[:, b]).mean().item()
        assert abs(both - 0.25) < 6 * math.sqrt(0.25 * 0.75 / m.shape[0])


def test_values_scale_and_gradient():
    torch.manual_seed(2)
    x = torch.randn(64, 300, requires_grad=True)
    y = dropout(x, 0.2, True)
    kept = y != 0
    assert 0.7 < kept.double().mean().item() < 0.9
    torch.testing.assert_close(y[kept], x[kept] / 0.8)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.to(x.dtype) / 0.8)


def test_eval_identity_seeded_and_module():
    x = torch.randn(8, 16)
    assert dropout(x, 0.3, False) is x
    torch.manual_seed(3)
    a = dropout(x, 0.3, True)
    torch.manual_seed(3)
    b = dropout(x, 0.3, True)
    assert torch.equal(a, b) and not torch.equal(a, x)
    m = Dropout(0.3)
    assert isinstance(m, torch.nn.Dropout) and list(m.parameters()) == []
    assert torch.equal(m.eval()(x), x)


def test_expected_value_matches_f_dropout():
    """Same estimator as F.dropout: both are unbiased for x."""
    torch.manual_seed(4)
    x = torch.rand(2000, 500) + 0.5
    ours = dropout(x, 0.1, True).mean().item()
    ref = F.dropout(x, 0.1, True).mean().item()
    assert abs(ours - x.mean().item()) < 2e-3 and abs(ref - x.mean().item()) < 2e-3
