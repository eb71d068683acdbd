from __future__ import annotations

import pytest
import torch

from exitflow.encoders.base import EncoderInputError
from exitflow.encoders.early_exit_runner import run_early_exit

TEXTS = ["place red at b 7 now", "set blue by k please", "lay green with y seven again soon", "bin"]


def test_forcing_last_exit_equals_plain_bert(tiny_text):
    outs = tiny_text(TEXTS)
    enc = tiny_text.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ref = tiny_text.backbone(**enc).last_hidden_state
    torch.testing.assert_close(outs[-1].hidden, ref)
    assert [o.layer for o in outs] == [1, 2, 3]
    assert outs[0].attention_mask.shape == enc["attention_mask"].shape
    assert all(o.logits.shape == (4, 4) for o in outs)


def test_padding_does_not_change_a_sample(tiny_text):
    alone = tiny_text([TEXTS[3]])
    batch = tiny_text(TEXTS)
    for a, b in zip(alone, batch, strict=True):
        torch.testing.assert_close(a.logits[0], b.logits[3], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_batched_text_exits_equal_batch_of_one(tiny_text):
    words = ["place", "set", "lay", "bin", "red", "blue", "green", "at", "by", "b", "k", "7", "one", "now"]
    gen = torch.Generator().manual_seed(0)
    texts = [
        " ".join(words[int(i)] for i in torch.randint(0, len(words), (int(n),), generator=gen))
        for n in torch.randint(1, 8, (256,), generator=gen)
    ]
    with torch.no_grad():
        threshold = float(torch.quantile(tiny_text(texts)[0].confidence, 0.5))
    batched = run_early_exit(tiny_text, texts, "max_prob", threshold)
    assert 0 < int((batched.exit_index == 0).sum()) < 256
    mismatches = 0
    for i, text in enumerate(texts):
        single = run_early_exit(tiny_text, [text], "max_prob", threshold)
        mismatches += int(single.exit_index[0]) != int(batched.exit_index[i])
        torch.testing.assert_close(single.logits[0], batched.logits[i], rtol=1e-4, atol=1e-4)
    assert mismatches == 0


def test_text_macs_grow_with_length(tiny_text):
    short, long = tiny_text.exit_macs(5), tiny_text.exit_macs(20)
    assert all(s < lo for s, lo in zip(short, long, strict=True))
    assert short == sorted(short)
    state = tiny_text.start(["a b c"])  # [CLS] a b c [SEP] = 5 tokens
    assert tiny_text.step(state).macs == short[0]


def test_bad_text_input(tiny_text):
    with pytest.raises(EncoderInputError, match="empty"):
        tiny_text.start(["ok", "   "])
    with pytest.raises(EncoderInputError):
        tiny_text.start([])
    with pytest.raises(EncoderInputError, match="str"):
        tiny_text.start(["ok", 3])


def test_long_text_is_truncated_with_a_warning(tiny_text):
    with pytest.warns(UserWarning, match="truncated"):
        state = tiny_text.start(["word " * 100])
    assert state.hidden.shape[1] == tiny_text.max_tokens == 24


def test_bad_exit_layers(tiny_text):
    from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig

    with pytest.raises(ValueError, match="exit_layers"):
        TextEarlyExitEncoder(TextEncoderConfig(exit_layers=(1, 2)), tiny_text.backbone, tiny_text.tokenizer)
