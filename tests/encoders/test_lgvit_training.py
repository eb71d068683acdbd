from __future__ import annotations

import numpy as np
import pytest
import torch

from exitflow.encoders.lgvit_losses import AlignModule, LGViTDistillation, gram, kd_loss, token_kl
from exitflow.encoders.lgvit_training import LabeledData, TrainSettings, train_text, train_vit


def test_kd_loss_reduces_to_ce_and_matches_teacher():
    s, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    torch.testing.assert_close(kd_loss(s, s, y, 0.0, 2.0), torch.nn.functional.cross_entropy(s, y))
    same = kd_loss(s, s, y, 1.0, 2.0)
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(s, -s, y, 1.0, 2.0)) > 0.1


def test_feature_losses_shapes():
    f = torch.randn(2, 9, 16)
    assert gram(f).shape == (2, 16, 16)
    assert float(token_kl(f, f)) == pytest.approx(0.0, abs=1e-6)
    assert AlignModule(16, (4, 4), (2, 2))(torch.randn(2, 16, 16)).shape == (2, 4, 16)


def test_distillation_loss_backpropagates_to_all_heads(tiny_vit):
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 5, (4,))
    states = tiny_vit.exit_states(x)
    outs = [tiny_vit.head_forward(i, states[i].detach()) for i in range(tiny_vit.num_exits - 1)]
    final = tiny_vit.head_forward(tiny_vit.num_exits - 1, states[-1].detach())
    loss_fn = LGViTDistillation(tiny_vit.head_kinds, [o.feature.shape[1] for o in outs], 16, (4, 4))
    loss, parts = loss_fn([o.logits for o in outs], [o.feature for o in outs], final.logits, final.feature, y)
    loss.backward()
    assert set(parts) == {"pred", "het", "hom"} and parts["het"] > 0 and parts["hom"] > 0
    for head in tiny_vit.heads:
        assert all(p.grad is not None for p in head.parameters())


def _data(n: int, seed: int) -> LabeledData:
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=gen)
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.3
    x[torch.arange(n), 0, y, y] += 3.0  # learnable: a bright pixel on the diagonal marks the class
    return LabeledData(lambda idx: x[torch.from_numpy(np.asarray(idx))], y.numpy())


def test_two_stage_training_is_seeded_resumable_and_freezes_backbone(tiny_vit, tmp_path):
    settings = TrainSettings(stage1_epochs=3, stage2_epochs=1, batch_size=32, lr=3e-3, progress=False)
    train, val = _data(128, 0), _data(64, 1)
    backbone_before = None

    hist = train_vit(tiny_vit, train, val, settings, run_dir=tmp_path, log=lambda s: None)
    assert (tmp_path / "stage1.pt").is_file() and (tmp_path / "stage2.pt").is_file()
    assert len(hist["stage1"]) == 3 and len(hist["stage2"]) == 1
    assert hist["stage1"][-1]["loss"] < hist["stage1"][0]["loss"]  # learned something
    # stage 2 leaves the backbone and the final classifier untouched
    saved1 = torch.load(tmp_path / "stage1.pt", weights_only=False)["model"]
    for k, v in tiny_vit.state_dict().items():
        if not k.startswith("heads."):
            backbone_before = k
            torch.testing.assert_close(v, saved1[k])
    assert backbone_before is not None
    # a rerun with the same run folder resumes (no extra epochs) and lands on the same weights
    from exitflow.encoders.vit import ViTEarlyExitEncoder

    again = ViTEarlyExitEncoder(tiny_vit.config)
    hist2 = train_vit(again, train, val, settings, run_dir=tmp_path, log=lambda s: None)
    assert hist2["stage1"] == hist["stage1"]
    for k, v in again.state_dict().items():
        torch.testing.assert_close(v, tiny_vit.state_dict()[k])


def test_text_head_training(tiny_text):
    texts = [f"place red at b {d} now" for d in range(4)] * 8
    labels = np.array([d for d in range(4)] * 8)
    settings = TrainSettings(stage1_epochs=30, stage2_epochs=30, batch_size=8, stage2_lr=1e-2, progress=False)
    before = [p.clone() for p in tiny_text.backbone.parameters()]
    hist = train_text(tiny_text, texts, labels, texts, labels, settings, log=lambda s: None)
    assert hist["val_after_stage2"][-1] > 0.9
    for b, p in zip(before, tiny_text.backbone.parameters(), strict=True):
        torch.testing.assert_close(b, p)
