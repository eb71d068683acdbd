"""CNN encoders with exits: shapes, equivalences, MACs, calibration, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from exitflow.encoders.base import EncoderInputError
from exitflow.encoders.calibration import expected_calibration_error, fit_temperature
from exitflow.encoders.cnn import CNNEarlyExitEncoder, CNNEncoderConfig, cnn_preset
from exitflow.encoders.macs import count_macs

TINY = CNNEncoderConfig(
    modality="audio", input_size=16, stem_channels=4, stem_stride=2,
    block_channels=(8, 8, 16), block_strides=(2, 1, 2), num_classes=5,
)


@pytest.fixture
def tiny_cnn() -> CNNEarlyExitEncoder:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    enc = CNNEarlyExitEncoder(TINY)
    enc.train()
    enc(torch.randn(8, 1, 16, 16))  # move BatchNorm statistics off their defaults
    return enc.eval()


def test_shapes_no_nan_and_incremental_equals_forward(tiny_cnn):
    x = torch.randn(3, 1, 16, 16)
    outs = tiny_cnn(x)
    assert len(outs) == tiny_cnn.num_exits == 3
    for i, (out, dim) in enumerate(zip(outs, tiny_cnn.embed_dims, strict=True)):
        assert out.logits.shape == (3, 5) and out.embedding.shape == (3, dim) and out.confidence.shape == (3,)
        assert torch.isfinite(out.logits).all() and out.exit_index == i and out.layer == i + 1
        assert out.hidden.dim() == 3 and out.hidden.shape[0] == 3
    state = tiny_cnn.start(x)
    for out in outs:
        step = tiny_cnn.step(state)
        torch.testing.assert_close(step.logits, out.logits)
    assert tiny_cnn.done(state)
    with pytest.raises(ValueError, match="already ran"):
        tiny_cnn.step(state)


def test_last_exit_equals_the_plain_network(tiny_cnn):
    x = torch.randn(2, 1, 16, 16)
    h = tiny_cnn.stem(x)
    for block in tiny_cnn.blocks:
        h = block(h)
    logits, _ = tiny_cnn.heads[-1](h)
    torch.testing.assert_close(tiny_cnn(x)[-1].logits, logits)


def test_macs_monotone_and_measured(tiny_cnn):
    macs = tiny_cnn.exit_macs()
    assert all(b > a for a, b in zip(macs, macs[1:], strict=False))
    def plain_forward(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = tiny_cnn.stem(t)
        for block in tiny_cnn.blocks:
            h = block(h)
        return tiny_cnn.heads[-1](h)

    plain = count_macs(plain_forward, torch.zeros(1, 1, 16, 16))
    assert tiny_cnn.plain_macs() == plain
    assert macs[-1] == plain + sum(tiny_cnn.head_macs()[:-1])
    assert [o.macs for o in tiny_cnn(torch.randn(1, 1, 16, 16))] == macs


def test_batch_of_one_equals_batched_and_select(tiny_cnn):
    x = torch.randn(4, 1, 16, 16)
    batched = tiny_cnn(x)
    for i in range(4):
        single = tiny_cnn(x[i])  # (C, H, W) gets a batch dimension
        for a, b in zip(single, batched, strict=True):
            torch.testing.assert_close(a.logits[0], b.logits[i], rtol=1e-5, atol=1e-5)
    state = tiny_cnn.start(x)
    tiny_cnn.step(state)
    kept = tiny_cnn.select(state, torch.tensor([1, 3]))
    torch.testing.assert_close(tiny_cnn.step(kept).logits, batched[1].logits[[1, 3]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.zeros(2, 1, 15, 16), "shape"),
        (torch.zeros(2, 3, 16, 16), "shape"),
        (torch.zeros(0, 1, 16, 16), "empty"),
        (torch.full((2, 1, 16, 16), float("nan")), "NaN"),
        ([[0.0]], "torch.Tensor"),
    ],
)
def test_bad_input_raises_encoder_input_error(tiny_cnn, bad, match):
    with pytest.raises(EncoderInputError, match=match):
        tiny_cnn.start(bad)


def test_bad_configs_and_presets():
    with pytest.raises(ValueError, match="equal length"):
        CNNEncoderConfig(block_channels=(8, 8), block_strides=(1,))
    with pytest.raises(ValueError, match="multiple"):
        CNNEncoderConfig(input_size=30, stem_stride=4)
    with pytest.raises(ValueError, match="unknown"):
        CNNEncoderConfig.from_dict({"depth": 3})
    assert CNNEncoderConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="no CNN preset"):
        cnn_preset("text")
    audio = CNNEarlyExitEncoder(cnn_preset("audio"))
    image = CNNEarlyExitEncoder(cnn_preset("image"))
    assert audio.exit_macs()[0] < audio.exit_macs()[-1] / 4  # the first exit is cheap
    assert image.exit_macs()[-1] < audio.exit_macs()[0]


def test_temperatures_calibrate_without_changing_predictions(tiny_cnn):
    torch.manual_seed(1)
    labels = torch.randint(0, 5, (400,))
    logits = F.one_hot(labels, 5).float() * 8 + torch.randn(400, 5) * 4  # over-confident scores
    t = fit_temperature(logits, labels)
    assert t > 1.0
    assert expected_calibration_error(logits / t, labels) < expected_calibration_error(logits, labels)
    x = torch.randn(3, 1, 16, 16)
    before = tiny_cnn(x)
    tiny_cnn.set_temperatures([2.0, 1.0, 0.5])
    after = tiny_cnn(x)
    torch.testing.assert_close(after[0].logits, before[0].logits / 2.0)
    assert torch.equal(after[2].logits.argmax(1), before[2].logits.argmax(1))
    assert tiny_cnn.state_dict()["temperatures"].tolist() == [2.0, 1.0, 0.5]  # stored with the weights
    with pytest.raises(ValueError, match="positive"):
        tiny_cnn.set_temperatures([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(logits, labels[:3])


def test_checkpoint_round_trip_keeps_temperatures(tiny_cnn, tmp_path):
    from exitflow.encoders.checkpoint import CheckpointLoadError, load_encoder, save_encoder

    tiny_cnn.set_temperatures([1.5, 1.2, 0.9])
    save_encoder(tiny_cnn, tmp_path / "cnn", {"command": "exitflow train encoder --modality audio"})
    loaded = load_encoder(tmp_path / "cnn")
    assert isinstance(loaded, CNNEarlyExitEncoder) and loaded.config == TINY
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loaded(x)[1].logits, tiny_cnn(x)[1].logits)
    assert loaded.temperatures.tolist() == pytest.approx([1.5, 1.2, 0.9])
    doc = (tmp_path / "cnn" / "config.json").read_text().replace('"stem_channels": 4', '"stem_channels": 6')
    (tmp_path / "cnn" / "config.json").write_text(doc)
    with pytest.raises(CheckpointLoadError, match="shape"):
        load_encoder(tmp_path / "cnn")


def test_folding_batchnorm_keeps_every_exit_and_refuses_training_mode(tiny_cnn):
    x = torch.randn(3, 1, 16, 16)
    before = [o.logits for o in tiny_cnn(x)]
    macs = tiny_cnn.exit_macs()
    tiny_cnn.fold_batchnorm()
    after = [o.logits for o in tiny_cnn(x)]
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_cnn.modules())
    assert tiny_cnn.exit_macs() == macs
    with pytest.raises(ValueError, match="eval"):
        tiny_cnn.train().fold_batchnorm()
