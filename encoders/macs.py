"""Multiply-accumulate counts measured with ``torch.utils.flop_counter.FlopCounterMode``.

No count here is written by hand: every figure comes from running the module once on a
batch of one under the flop counter (MACs = flops / 2). Hugging Face attention is switched
to the ``eager`` implementation while counting, because the counter does not see inside the
fused CPU ``scaled_dot_product_attention`` kernel and would miss the QK^T and AV products.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextmanager
def eager_attention(*modules: nn.Module) -> Iterator[None]:
    """Temporarily switch every Hugging Face config found in ``modules`` to eager attention."""
    configs = []
    for module in modules:
        for sub in module.modules():
            config = getattr(sub, "config", None)
            if config is not None and hasattr(config, "_attn_implementation") and config not in configs:
                configs.append(config)
    saved = [c._attn_implementation for c in configs]
    try:
        for config in configs:
            config._attn_implementation = "eager"
        yield
    finally:
        for config, value in zip(configs, saved, strict=True):
            config._attn_implementation = value


def count_macs(fn: Callable[..., Any], *args: Any, modules: tuple[nn.Module, ...] = (), **kwargs: Any) -> int:
    """MACs of one call ``fn(*args, **kwargs)``, measured with the flop counter.

    Args:
        fn: The computation to count (a module or a closure).
        *args: Its positional inputs; pass a batch of one to get per-sample MACs.
        modules: Modules whose Hugging Face attention must be counted (switched to eager).
        **kwargs: Its keyword inputs.

    Returns:
        Multiply-accumulates (flops // 2) of the call, for the batch given.
    """
    with torch.no_grad(), eager_attention(*modules), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops()) // 2


def cumulative(values: list[int]) -> list[int]:
    """Running sums of ``values`` (e.g. segment MACs into MACs-so-far)."""
    out, total = [], 0
    for value in values:
        total += int(value)
        out.append(total)
    return out


def equal_mac_exit_layers(embed_macs: int, layer_macs: list[int], num_exits: int) -> tuple[int, ...]:
    """Exit layers that split the backbone's MACs into ``num_exits`` near-equal segments.

    LGViT places exits so that the compute between adjacent exit points is about the same;
    this picks, for each target ``total * j / num_exits``, the layer whose cumulative MACs is
    closest, keeps the list strictly increasing, and always ends at the last layer.

    Args:
        embed_macs: MACs of the embedding (counted before the first layer).
        layer_macs: MACs of each backbone layer, in order.
        num_exits: How many exits, the final one included.

    Returns:
        1-based layer indices, strictly increasing, the last equal to ``len(layer_macs)``.
    """
    depth = len(layer_macs)
    if not 1 <= num_exits <= depth:
        raise ValueError(f"num_exits must be in [1, {depth}] for a {depth}-layer backbone, got {num_exits}")
    after = [embed_macs + c for c in cumulative(layer_macs)]  # MACs after layer l (1-based: index l-1)
    total = after[-1]
    chosen: list[int] = []
    for j in range(1, num_exits):
        target = total * j / num_exits
        lo = chosen[-1] + 1 if chosen else 1
        hi = depth - (num_exits - j)  # leave room for the remaining exits
        best = min(range(lo, hi + 1), key=lambda layer: abs(after[layer - 1] - target))
        chosen.append(best)
    chosen.append(depth)
    return tuple(chosen)
