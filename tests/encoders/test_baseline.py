from __future__ import annotations

import pytest
import torch

from exitflow.encoders.base import EncoderInputError
from exitflow.encoders.baseline import BaselineConfig, LateFusion
from exitflow.encoders.macs import count_macs


@pytest.mark.parametrize(("name", "width"), [("lf", 48 + 192), ("image", 48), ("audio", 192)])
def test_baseline_shapes_and_feature_widths(name: str, width: int) -> None:
    model = LateFusion(BaselineConfig(name=name)).eval()
    inputs = {"image": torch.randn(3, 1, 28, 28), "audio": torch.rand(3, 1, 112, 112)}
    assert model.head[0].in_features == width
    logits = model(inputs)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()


def test_baseline_macs_add_up_from_branches() -> None:
    lf, img, aud = (LateFusion(BaselineConfig(name=n)) for n in ("lf", "image", "audio"))
    x = {"image": torch.zeros(1, 1, 28, 28), "audio": torch.zeros(1, 1, 112, 112)}
    m_lf, m_img, m_aud = (count_macs(m, x) for m in (lf, img, aud))
    head_lf = count_macs(lf.head, torch.zeros(1, 240))
    head_img = count_macs(img.head, torch.zeros(1, 48))
    head_aud = count_macs(aud.head, torch.zeros(1, 192))
    assert m_lf - head_lf == (m_img - head_img) + (m_aud - head_aud)
    assert m_aud > 10 * m_img  # the 112x112 spectrogram branch dominates


def test_baseline_rejects_bad_input() -> None:
    model = LateFusion(BaselineConfig(name="lf"))
    good = {"image": torch.zeros(1, 1, 28, 28), "audio": torch.zeros(1, 1, 112, 112)}
    with pytest.raises(EncoderInputError, match="expected shape"):
        model({**good, "image": torch.zeros(1, 3, 28, 28)})
    with pytest.raises(EncoderInputError, match="NaN"):
        model({**good, "audio": torch.full((1, 1, 112, 112), float("nan"))})
    with pytest.raises(EncoderInputError, match="needs modalities"):
        model({"image": good["image"]})
    with pytest.raises(ValueError, match="unknown baseline"):
        LateFusion(BaselineConfig(name="video"))
