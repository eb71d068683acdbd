"""Text is priced per sample at its real token count in every system (issue 25 item 6).

``full`` and ``static`` (:class:`TruncatedSystem`), the engine behind ``exitflow``/``rexit`` and its batched
form all charge a text sample what the text encoder itself counts at that sample's length, never the
12-token reference nor a padded batch's mean.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from exitflow.encoders.late_fusion import MaskedLateFusion
from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig, bundled_minilm_path
from exitflow.pipeline.inference.adaptive_systems import TruncatedSystem
from exitflow.pipeline.inference.batch_engine import BatchEngine
from exitflow.pipeline.inference.engine import Engine
from exitflow.pipeline.inference.pricing import exit_path_macs, truncated_macs
from exitflow.pipeline.messages import Decision, Sample
from exitflow.scheduler.policy import Policy, PolicySettings
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile

SHORT = "two"
LONG = "move the red block to the left shelf then say the digit seven out loud please"
NUM_CLASSES = 4


@pytest.fixture(scope="module")
def text() -> TextEarlyExitEncoder:
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()), local_files_only=True)
    bert = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=3,
                                num_attention_heads=2, intermediate_size=32, max_position_embeddings=32),
                     add_pooling_layer=False).eval()
    cfg = TextEncoderConfig(exit_layers=(1, 2, 3), num_classes=NUM_CLASSES, head_hidden=8, embedding_exit=True)
    return TextEarlyExitEncoder(cfg, backbone=bert, tokenizer=tokenizer).eval()


def tokens(enc: TextEarlyExitEncoder, s: str) -> int:
    return enc.token_counts([s])[0]


def samples() -> list[Sample]:
    return [Sample(0, 0, {"text": SHORT}, label=1), Sample(1, 0, {"text": LONG}, label=2)]


def test_the_two_texts_differ_in_length_and_neither_is_the_reference(text) -> None:
    n_short, n_long = tokens(text, SHORT), tokens(text, LONG)
    assert n_short < text.config.ref_tokens < n_long


@pytest.mark.parametrize("exit_index", [0, 2, 3])
def test_truncation_prices_each_text_at_its_own_tokens(text, exit_index: int) -> None:
    """``full`` (last exit) and ``static`` (an earlier one): the encoder's own count at each text's length."""
    system = TruncatedSystem("static", {"text": text}, {"text": exit_index})
    got = [system.process(s).macs for s in samples()]
    want = []
    for s in (SHORT, LONG):
        n = tokens(text, s)
        # the backbone to the exit, plus that exit's head only (the skipped heads never ran)
        want.append(text.exit_macs(n)[exit_index] - sum(text.head_macs(n)[:exit_index]))
    assert got == want
    assert got[0] < got[1] or exit_index == 0 and got[0] == got[1]  # the embedding exit's head pools: free
    if exit_index == text.num_exits - 1:
        assert got == [text.plain_macs(tokens(text, s)) for s in (SHORT, LONG)]
    assert system.macs == truncated_macs(text, exit_index)  # the nominal figure stays the reference's


def test_a_padded_truncation_batch_prices_rows_as_batches_of_one(text) -> None:
    system = TruncatedSystem("full", {"text": text}, {"text": text.num_exits - 1})
    batched = system.process_batch(samples())
    assert all(isinstance(d, Decision) for d in batched)
    assert [d.macs for d in batched if isinstance(d, Decision)] == [system.process(s).macs for s in samples()]


def test_exit_path_macs_reads_each_row_of_a_padded_batch(text) -> None:
    outs = text([SHORT, LONG])  # every exit, the short text padded to the long one
    last = outs[2]
    for row, s in enumerate((SHORT, LONG)):
        n = tokens(text, s)
        assert exit_path_macs(text, last, [0, 1, 2], row) == text.exit_macs(n)[2]
        assert exit_path_macs(text, last, [2], row) == truncated_macs(text, 2, n)
    assert exit_path_macs(text, last, [0, 1, 2], 0) != last.macs  # not the batch's mean


def _engine(text: TextEarlyExitEncoder) -> Engine:
    exits = tuple(ExitProfile("text", j, 0.5 + 0.1 * j, 0.0, float(m)) for j, m in enumerate(text.exit_macs()))
    profile = Profile(exits={"text": exits}, fusion=(FusionProfile(("text",), 0.9, 10.0),),
                      thresholds={"text": 0.0})
    policy = Policy(profile, PolicySettings(exit_rule="none", skip_negative=False))  # every exit, then fusion
    fusion = MaskedLateFusion({"text": 16}, NUM_CLASSES)
    return Engine({"text": text}, fusion, policy)


def test_the_engine_prices_text_at_its_tokens_batched_or_not(text) -> None:
    engine = _engine(text)
    one = [engine.process(s) for s in samples()]
    assert [sorted(d.exits.items()) for d in one] == [[("text", 3)]] * 2  # the whole walk ran
    fusion_macs = int(engine.fusion.macs)
    assert [d.macs for d in one] == [text.exit_macs(tokens(text, s))[3] + fusion_macs for s in (SHORT, LONG)]
    batched = BatchEngine(engine).process_batch(samples())
    assert [d.macs for d in batched if isinstance(d, Decision)] == [d.macs for d in one]


def test_under_the_text_prior_the_engine_runs_and_prices_text_s_cheap_exit_only(text) -> None:
    """PriorPolicy (issue 25 item 5): text stops at its embedding exit, priced at its tokens, fused at the end."""
    from exitflow.scheduler.prior import PriorPolicy

    engine = _engine(text)
    engine.policy = PriorPolicy(engine.policy.profile, PolicySettings(exit_rule="entropy", skip_negative=False,
                                                                      thresholds={"text": 0.0}))
    decisions = [engine.process(s) for s in samples()]
    assert [d.exits for d in decisions] == [{"text": 0}] * 2 and {d.exited_by for d in decisions} == {"fusion"}
    fusion_macs = int(engine.fusion.macs)
    assert [d.macs for d in decisions] == [text.exit_macs(tokens(text, s))[0] + fusion_macs for s in (SHORT, LONG)]
