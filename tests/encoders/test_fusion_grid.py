"""Exit-grid fusion: a head per exit combination, placeholders, temperatures, MACs; CNN steps that skip heads."""

from __future__ import annotations

import pytest
import torch

from exitflow.encoders.cnn import CNNEarlyExitEncoder, CNNEncoderConfig
from exitflow.encoders.fusion_grid import ExitGridFusion, grid_key, subset_key

TINY = CNNEncoderConfig(modality="audio", input_size=16, stem_channels=4, stem_stride=2,
                        block_channels=(8, 8, 16), block_strides=(2, 1, 2), num_classes=5, head_pool=2)


@pytest.fixture
def grid() -> ExitGridFusion:
    torch.manual_seed(0)
    return ExitGridFusion({"image": [4, 6], "audio": [3, 5, 7]}, num_classes=5, hidden_dim=8).eval()


def test_one_head_per_exit_combination_with_its_own_macs(grid):
    assert sorted(grid.keys()) == sorted(f"image{i}_audio{j}" for i in range(2) for j in range(3))
    assert grid_key({"audio": 2, "image": 1}, grid.modalities) == "image1_audio2"
    assert grid.head_macs["image0_audio0"] < grid.head_macs["image1_audio2"] == grid.macs
    out = grid.fuse({"image": torch.randn(3, 6), "audio": torch.randn(3, 3)}, {"image": 1, "audio": 0})
    assert out.shape == (3, 5) and torch.isfinite(out).all()


def test_absent_modality_uses_the_placeholder_at_its_last_exit(grid):
    audio = torch.randn(2, 5)
    alone = grid.fuse({"audio": audio}, {"audio": 1})
    explicit = grid.heads["image1_audio1"](torch.cat([grid.placeholders["image"].expand(2, -1), audio], dim=-1))
    torch.testing.assert_close(alone, explicit)


def test_temperatures_scale_logits_without_changing_the_argmax(grid):
    x = {"image": torch.randn(4, 4), "audio": torch.randn(4, 7)}
    before = grid.fuse(x, {"image": 0, "audio": 2})
    grid.set_temperatures(dict.fromkeys(grid.keys(), 2.0))
    after = grid.fuse(x, {"image": 0, "audio": 2})
    torch.testing.assert_close(after * 2.0, before)
    assert torch.equal(after.argmax(1), before.argmax(1))
    with pytest.raises(ValueError, match="positive temperature"):
        grid.set_temperatures({"image0_audio0": 1.0})


def test_wrong_widths_exits_and_modalities_raise(grid):
    with pytest.raises(ValueError, match="expects 4"):
        grid.fuse({"image": torch.randn(1, 5)}, {"image": 0})
    with pytest.raises(ValueError, match="exits 0..1"):
        grid.fuse({"image": torch.randn(1, 4)}, {"image": 3})
    with pytest.raises(ValueError, match="knows"):
        grid.fuse({"text": torch.randn(1, 4)}, {"text": 0})
    with pytest.raises(ValueError, match=">= 1 modality"):
        ExitGridFusion({"image": []}, 5)
    with pytest.raises(ValueError, match=">= 1 modality"):
        ExitGridFusion({}, 5)


def test_one_modality_is_a_pass_through_of_the_exits_own_logits():
    torch.manual_seed(0)
    grid = ExitGridFusion({"audio": [8, 8, 16]}, num_classes=5, hidden_dim=8).eval()
    assert grid.passthrough and grid.keys() == [] and grid.macs == 0 and not list(grid.parameters())
    encoder = CNNEarlyExitEncoder(TINY).eval()
    encoder.set_temperatures([1.0, 1.0, 2.0])
    outs = encoder(torch.randn(3, 1, 16, 16))
    fused = grid.fuse_exits({"audio": outs[2]})
    torch.testing.assert_close(fused.logits, outs[2].logits)  # already divided by the exit's temperature
    assert fused.macs.tolist() == [0, 0, 0] and fused.exits == {"audio": 2}
    grid.set_temperatures({})
    with pytest.raises(ValueError, match="no heads"):
        grid.fuse({"audio": outs[2].embedding}, {"audio": 2})
    with pytest.raises(ValueError, match="knows"):
        grid.fuse_exits({"image": outs[2]})


def test_three_modalities_have_a_head_per_triple_and_placeholders_for_absent_ones():
    torch.manual_seed(0)
    grid = ExitGridFusion({"image": [4, 6, 8], "audio": [3, 5, 7], "text": [2, 2, 3]}, 5, 8).eval()
    assert len(grid.keys()) == 27 and "image0_audio2_text1" in grid.keys()
    assert subset_key({"image": 2, "audio": 1}, grid.modalities) == "image2_audio1"
    image, audio = torch.randn(2, 8), torch.randn(2, 5)
    pair = grid.fuse({"image": image, "audio": audio}, {"image": 2, "audio": 1})  # text absent: its last exit's head
    inputs = torch.cat([image, audio, grid.placeholders["text"].expand(2, -1)], dim=-1)
    torch.testing.assert_close(pair, grid.heads["image2_audio1_text2"](inputs))


def test_fuse_exits_picks_the_head_of_each_outputs_exit(grid):
    torch.manual_seed(1)
    image = CNNEarlyExitEncoder(CNNEncoderConfig(modality="image", input_size=16, stem_channels=4, stem_stride=2,
                                                 block_channels=(4, 6), block_strides=(2, 2), num_classes=5,
                                                 head_pool=1)).eval()
    outs = image(torch.randn(1, 1, 16, 16))
    audio_emb = torch.randn(1, 3)
    from exitflow.encoders.base import ExitOutput

    audio_out = ExitOutput(logits=torch.zeros(1, 5), embedding=audio_emb, hidden=torch.zeros(1, 1, 3),
                           confidence=torch.ones(1), layer=1, exit_index=0, macs=0)
    fused = grid.fuse_exits({"image": outs[1], "audio": audio_out})
    torch.testing.assert_close(fused.logits, grid.fuse({"image": outs[1].embedding, "audio": audio_emb},
                                                       {"image": 1, "audio": 0}))
    assert int(fused.macs[0]) == grid.head_macs["image1_audio0"]


def test_cnn_step_to_a_later_exit_runs_the_skipped_blocks_but_not_their_heads():
    torch.manual_seed(0)
    enc = CNNEarlyExitEncoder(TINY).eval()
    x = torch.randn(2, 1, 16, 16)
    every = enc(x)
    state = enc.start(x)
    state.next_exit = 2  # exits 0 and 1 left out
    jumped = enc.step(state)
    torch.testing.assert_close(jumped.logits, every[2].logits)
    assert enc.done(state)
    state = enc.start(x)
    enc.step(state)
    state.next_exit = 0
    with pytest.raises(ValueError, match="behind"):
        enc.step(state)
