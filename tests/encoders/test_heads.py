from __future__ import annotations

import pytest
import torch

from exitflow.encoders.heads import (
    GlobalAggregationHead,
    LocalPerceptionHead,
    MLPHead,
    TextExitHead,
    build_vit_heads,
    gah_window_sizes,
    lph_kernel_sizes,
)


def test_lph_kernel_map_decreases_to_bypass():
    assert lph_kernel_sizes(4, k_max=5, k_min=0) == [5, 3, 1, 0]
    assert lph_kernel_sizes(3, k_max=3, k_min=0) == [3, 1, 0]
    assert lph_kernel_sizes(1, k_max=3) == [3]
    assert lph_kernel_sizes(0) == []
    sizes = lph_kernel_sizes(6, k_max=7, k_min=0)
    assert sizes == sorted(sizes, reverse=True)
    assert all(k == 0 or k % 2 == 1 for k in sizes)


def test_gah_window_map_increases_from_two():
    assert gah_window_sizes(2, 2, 3) == [2, 3]
    assert gah_window_sizes(3, 2, 4) == [2, 3, 4]
    assert gah_window_sizes(1) == [2]
    with pytest.raises(ValueError):
        gah_window_sizes(2, s_min=1)
    with pytest.raises(ValueError):
        lph_kernel_sizes(2, k_max=4)


@pytest.mark.parametrize("kernel", [0, 1, 3, 5])
def test_lph_shapes(kernel):
    head = LocalPerceptionHead(16, 7, (5, 5), kernel, expand=2).eval()
    out = head(torch.randn(3, 26, 16))
    assert out.logits.shape == (3, 7)
    assert out.embedding.shape == (3, 16)
    assert out.feature.shape == (3, 25, 16)
    assert torch.isfinite(out.logits).all()
    assert isinstance(head.depthwise, torch.nn.Identity) == (kernel == 0)


@pytest.mark.parametrize(("window", "tokens"), [(2, 9), (3, 4), (5, 1)])
def test_gah_shapes(window, tokens):
    head = GlobalAggregationHead(16, 7, (5, 5), window, num_heads=4).eval()
    out = head(torch.randn(2, 26, 16))
    assert out.logits.shape == (2, 7)
    assert out.feature.shape == (2, tokens, 16)
    assert torch.isfinite(out.logits).all()


def test_mlp_and_text_heads():
    out = MLPHead(16, 3)(torch.randn(4, 10, 16))
    assert out.logits.shape == (4, 3) and out.embedding.shape == (4, 16)
    head = TextExitHead(16, 3, hidden=8)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    hidden = torch.randn(2, 3, 16)
    pooled = head.pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    assert head(hidden, mask).logits.shape == (2, 3)


def test_build_heads_splits_lower_lph_upper_gah():
    heads, kinds = build_vit_heads("lgvit", 5, 16, 4, (4, 4), gah_heads=2)
    assert kinds == ["lph", "lph", "lph", "gah", "gah"]
    assert [h.kernel_size for h in heads[:3]] == [5, 1, 0]
    assert [h.window for h in heads[3:]] == [2, 3]
    heads, kinds = build_vit_heads("mlp", 3, 16, 4, (4, 4))
    assert kinds == ["mlp"] * 3
    with pytest.raises(ValueError):
        build_vit_heads("conv", 3, 16, 4, (4, 4))  # type: ignore[arg-type]


def test_wrong_token_count_is_a_clear_error():
    head = LocalPerceptionHead(16, 3, (4, 4), 3)
    with pytest.raises(ValueError, match="patch tokens"):
        head(torch.randn(1, 10, 16))
