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


@pytest.fixture()
def cheap_text(tiny_text):
    """The tiny encoder with the layer-0 embedding exit and temperatures."""
    from exitflow.encoders.text import TextEarlyExitEncoder, TextEncoderConfig

    cfg = TextEncoderConfig(
        exit_layers=(1, 2, 3), num_classes=4, head_hidden=8, embedding_exit=True, temperature_scaled=True
    )
    torch.manual_seed(1)
    return TextEarlyExitEncoder(cfg, backbone=tiny_text.backbone, tokenizer=tiny_text.tokenizer).eval()


def test_embedding_exit_runs_no_layer(cheap_text):
    assert cheap_text.exit_layers == (0, 1, 2, 3)
    state = cheap_text.start(["a b c"])
    out = cheap_text.step(state)
    assert (out.layer, state.layer, out.exit_index) == (0, 0, 0)
    macs = cheap_text.exit_macs(5)
    assert out.macs == macs[0] < macs[1] / 5  # the head only: far below one layer
    assert out.embedding.shape == (1, 16) and out.logits.shape == (1, 4)
    enc = cheap_text.tokenizer(TEXTS, padding=True, return_tensors="pt")
    ref = cheap_text.backbone(**enc).last_hidden_state
    torch.testing.assert_close(cheap_text(TEXTS)[-1].hidden, ref)  # the last exit is still plain BERT


def test_padded_batch_macs_count_real_tokens(cheap_text):
    texts = ["a b c", "a b c d e f g h i"]  # 5 and 11 tokens: the first is padded to 11
    counts = cheap_text.token_counts(texts)
    assert counts == [5, 11]
    outs = cheap_text(texts)
    for i, out in enumerate(outs):
        real = (cheap_text.exit_macs(5)[i] + cheap_text.exit_macs(11)[i]) / 2
        assert out.macs == round(real)
        assert out.macs < cheap_text.exit_macs(11)[i] or i == 0  # padding is not counted
    mean = cheap_text.mean_exit_macs(texts + ["a b c"])
    want = [(2 * a + b) / 3 for a, b in zip(cheap_text.exit_macs(5), cheap_text.exit_macs(11), strict=True)]
    assert mean == pytest.approx(want)
    with pytest.raises(ValueError, match="at least one"):
        cheap_text.mean_exit_macs([])


def test_head_macs_do_not_depend_on_length(cheap_text):
    # the engine drops skipped heads with head_macs() at ref_tokens: that is only right if pooling is free
    assert cheap_text.head_macs(5) == cheap_text.head_macs(20)


def test_temperatures_scale_logits(cheap_text, tiny_text):
    before = [o.logits for o in cheap_text(TEXTS)]
    cheap_text.set_temperatures([2.0, 1.0, 0.5, 4.0])
    after = [o.logits for o in cheap_text(TEXTS)]
    for b, a, t in zip(before, after, [2.0, 1.0, 0.5, 4.0], strict=True):
        torch.testing.assert_close(a, b / t)
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    assert cheap_text.temperatures() == [2.0, 1.0, 0.5, 4.0]
    with pytest.raises(ValueError, match="4 temperatures"):
        cheap_text.set_temperatures([1.0, 1.0])
    with pytest.raises(ValueError, match="4 temperatures"):
        cheap_text.set_temperatures([1.0, 1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="temperature_scaled"):
        tiny_text.set_temperatures([1.0, 1.0, 1.0])


def test_cheap_text_checkpoint_round_trip(cheap_text, tmp_path):
    from exitflow.encoders.checkpoint import load_encoder, save_encoder

    cheap_text.set_temperatures([1.5, 1.0, 1.0, 0.8])
    save_encoder(cheap_text, tmp_path / "text")
    loaded = load_encoder(tmp_path / "text", backbone=cheap_text.backbone, tokenizer=cheap_text.tokenizer)
    assert loaded.exit_layers == (0, 1, 2, 3)
    assert loaded.temperatures() == pytest.approx([1.5, 1.0, 1.0, 0.8])
    for a, b in zip(loaded(TEXTS), cheap_text(TEXTS), strict=True):
        torch.testing.assert_close(a.logits, b.logits)


def test_embedding_head_training_learns_and_checks_shapes(cheap_text):
    from exitflow.pipeline.training.text_exit import EmbeddingExitSettings, train_embedding_head

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (256,), generator=gen)
    centres = torch.randn(4, 16, generator=gen)
    pooled = centres[labels] + 0.1 * torch.randn(256, 16, generator=gen)  # separable classes
    target = pooled @ torch.randn(16, 16, generator=gen)  # a linear map the head can learn
    head = cheap_text.heads[0]
    history = train_embedding_head(head, pooled, target, labels, EmbeddingExitSettings(epochs=40, lr=0.01))
    assert history[-1] < history[0] / 2
    with torch.no_grad():
        logits, embedding = head.classify(pooled)
    assert float((logits.argmax(-1) == labels).float().mean()) > 0.9
    assert float(torch.nn.functional.cosine_similarity(embedding, target).mean()) > 0.9
    with pytest.raises(ValueError, match="matching"):
        train_embedding_head(head, pooled, target[:10], labels, EmbeddingExitSettings(epochs=1))
