"""The last rung's mix: log-linear pooling of two models' class probabilities, its weight fitted on labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exitflow.encoders.last_rung import MixHead, RungError, fit_mix_weight, mix_logits


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_weight_one_is_the_cnn_and_zero_the_rung() -> None:
    rng = np.random.default_rng(0)
    cnn, lf = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    np.testing.assert_allclose(mix_logits(cnn, lf, 1.0), _log_softmax(cnn), atol=1e-12)
    np.testing.assert_allclose(mix_logits(cnn, lf, 0.0), _log_softmax(lf), atol=1e-12)
    mixed = mix_logits(cnn, lf, 0.3)
    np.testing.assert_allclose(np.exp(mixed).sum(axis=1), 1.0, atol=1e-12)  # a distribution
    np.testing.assert_allclose(mixed, _log_softmax(0.3 * _log_softmax(cnn) + 0.7 * _log_softmax(lf)), atol=1e-12)


def test_fit_prefers_the_model_that_knows_the_labels() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, size=400)
    right = np.eye(10)[labels] * 6.0 + rng.normal(size=(400, 10))  # confident and right
    noise = rng.normal(size=(400, 10)) * 3.0  # confident and random
    assert fit_mix_weight(right, noise, labels) >= 0.8
    assert fit_mix_weight(noise, right, labels) <= 0.2
    # two equally good models: both kept (a weight strictly inside)
    other = np.eye(10)[labels] * 6.0 + rng.normal(size=(400, 10))
    assert 0.2 < fit_mix_weight(right, other, labels) < 0.8


def test_torch_head_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    cnn, lf = rng.normal(size=(3, 10)).astype(np.float32), rng.normal(size=(3, 10)).astype(np.float32)
    out = MixHead(0.6)(torch.from_numpy(cnn), torch.from_numpy(lf)).numpy()
    np.testing.assert_allclose(out, mix_logits(cnn, lf, 0.6), atol=1e-5)


@pytest.mark.parametrize("cnn, lf, weight, match", [
    (np.zeros((2, 3)), np.zeros((2, 4)), 0.5, "shape"),
    (np.full((2, 3), np.nan), np.zeros((2, 3)), 0.5, "non-finite"),
    (np.zeros((2, 3)), np.zeros((2, 3)), 1.5, r"\[0, 1\]"),
])
def test_bad_input_is_a_clear_error(cnn, lf, weight, match) -> None:
    with pytest.raises(RungError, match=match):
        mix_logits(cnn, lf, weight)


def test_fit_needs_labels_and_a_grid() -> None:
    with pytest.raises(RungError, match="one label per row"):
        fit_mix_weight(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3, dtype=int))
    with pytest.raises(RungError, match="candidate"):
        fit_mix_weight(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(2, dtype=int), grid=())
    with pytest.raises(RungError):
        MixHead(-0.1)
