from __future__ import annotations

import math

import torch

from exitflow.encoders.exit_rules import PatienceCounter, cosine_to_previous, max_prob, normalized_entropy


def test_max_prob_and_entropy_per_sample():
    logits = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    p = max_prob(logits)
    assert p.shape == (2,)
    assert p[0] > 0.99 and math.isclose(float(p[1]), 1 / 3, rel_tol=1e-5)
    h = normalized_entropy(logits)
    assert h.shape == (2,)
    assert float(h[0]) < 0.01 and math.isclose(float(h[1]), 1.0, rel_tol=1e-5)


def test_rules_do_not_mix_samples():
    a = torch.randn(5, 4)
    b = torch.randn(3, 4)
    both = torch.cat([a, b])
    torch.testing.assert_close(max_prob(both)[:5], max_prob(a))
    torch.testing.assert_close(normalized_entropy(both)[5:], normalized_entropy(b))


def test_cosine_to_previous():
    h = torch.randn(4, 6, 8)
    assert torch.allclose(cosine_to_previous(h, h), torch.ones(4), atol=1e-6)
    assert torch.allclose(cosine_to_previous(h, -h), -torch.ones(4), atol=1e-6)


def test_patience_counts_consecutive_agreement():
    counter = PatienceCounter()
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert counter.update(torch.cat([a, a])).tolist() == [0, 0]
    assert counter.update(torch.cat([a, b])).tolist() == [1, 0]
    assert counter.update(torch.cat([a, b])).tolist() == [2, 1]
    counter.select(torch.tensor([1]))
    assert counter.update(a).tolist() == [0]
