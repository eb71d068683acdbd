"""What one sample's walk through an encoder costs, in MACs, as the systems report it.

Every system prices an encoder the same way: the backbone up to the exit it stopped at, plus the heads
that really ran. An encoder that pads its input (text: ``ExitOutput.attention_mask`` is set) is priced
at each sample's own real token count, so a long command costs more than a short one in ``full``,
``static``, ``rexit`` and ``exitflow`` alike, batched or not, and the figure equals the text encoder's
own count (:meth:`encoders.text.TextEarlyExitEncoder.exit_macs` at that length). Encoders that do not
pad (CNN, ViT) cost the same for every sample.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol, cast

from exitflow.encoders.base import EarlyExitEncoder, ExitOutput


class TokenPricedEncoder(Protocol):
    """An encoder that pads its input (text): per-sample MACs at a given real token count."""

    def exit_macs(self, tokens: int | None = None) -> list[int]: ...

    def head_macs(self, tokens: int | None = None) -> list[int]: ...


def row_tokens(out: ExitOutput, row: int = 0) -> int | None:
    """Real token count of row ``row`` of ``out`` (None when the encoder does not pad: its cost is fixed)."""
    return None if out.attention_mask is None else int(out.attention_mask[row].sum())


def truncated_macs(encoder: EarlyExitEncoder, exit_index: int, tokens: int | None = None) -> int:
    """Per-sample MACs of the backbone up to ``exit_index`` plus that exit's head only; a padding (text)
    encoder at ``tokens`` real tokens (None: its reference length, ``TextEncoderConfig.ref_tokens``)."""
    if tokens is None:
        cumulative, heads = encoder.exit_macs(), encoder.head_macs()
    else:
        priced = cast(TokenPricedEncoder, encoder)  # tokens are only given for an encoder that pads (text)
        cumulative, heads = priced.exit_macs(tokens), priced.head_macs(tokens)
    return int(cumulative[exit_index] - sum(heads[: exit_index + 1]) + heads[exit_index])


def exit_path_macs(encoder: EarlyExitEncoder, last: ExitOutput, evaluated: Collection[int], row: int = 0) -> int:
    """Per-sample MACs of one walk through ``encoder`` for row ``row`` of ``last``: the backbone up to its exit
    plus the heads in ``evaluated`` (the others never ran). A padded input (text) is priced at that row's real
    token count, not at the batch's mean (``last.macs``) or the encoder's reference length."""
    tokens = row_tokens(last, row)
    priced = cast(TokenPricedEncoder, encoder)  # called with tokens only when the encoder pads (text)
    try:
        heads = encoder.head_macs() if tokens is None else priced.head_macs(tokens)
    except NotImplementedError:  # an encoder that does not count its heads apart
        return int(last.macs)
    cumulative = int(last.macs) if tokens is None else int(priced.exit_macs(tokens)[last.exit_index])
    skipped = set(range(last.exit_index + 1)) - set(evaluated)
    return cumulative - sum(int(heads[j]) for j in skipped)
