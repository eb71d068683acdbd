"""MMExit double-stage adaptive re-weighting (eqs. 15-18)."""

from __future__ import annotations

import math

import pytest
import torch

from exitflow.encoders.joint_loss import DoubleStageReweighter


def _losses(image: list[float], audio: list[float], fusion: float, grad: bool = False) -> dict:
    out = {
        "image": [torch.tensor(v, requires_grad=grad) for v in image],
        "audio": [torch.tensor(v, requires_grad=grad) for v in audio],
        "fusion": torch.tensor(fusion, requires_grad=grad),
    }
    return out


def test_running_mean_eq15():
    rw = DoubleStageReweighter({"image": 2, "audio": 1}, total_epochs=4, alpha=0.5)
    rw.update({"image": [1.0, 2.0], "audio": [4.0]})
    rw.update({"image": [3.0, 2.0], "audio": [0.0]})
    assert rw.running["image"].tolist() == pytest.approx([2.0, 2.0])
    assert rw.running["audio"].tolist() == pytest.approx([2.0])


def test_final_stage_weights_hand_computed():
    rw = DoubleStageReweighter({"image": 3, "audio": 2}, total_epochs=1, tau_end=1.0)
    rw.update({"image": [3.0, 2.0, 1.0], "audio": [5.0, 2.0]})
    w = rw.weights(epoch=0)
    assert rw.stage(0) == "final"
    denom = math.exp(1.0) + math.exp(2.0)
    assert w["image"].tolist() == pytest.approx([0, 0, math.exp(1.0) / denom])
    assert w["audio"].tolist() == pytest.approx([0, math.exp(2.0) / denom])


def test_rest_stage_weights_divide_by_remaining_exits():
    rw = DoubleStageReweighter({"image": 3, "audio": 2}, total_epochs=1, tau_end=1.0)
    rw.update({"image": [3.0, 2.0, 1.0], "audio": [5.0, 2.0]})
    w = rw.weights(epoch=1)
    assert rw.stage(1) == "rest"
    denom = math.exp(3.0) + math.exp(2.0) + math.exp(5.0)
    # image exit 1 of 3: divisor 3; image exit 2 of 3: divisor 2; audio exit 1 of 2: divisor 2
    assert w["image"].tolist() == pytest.approx(
        [math.exp(3.0) / (3 * denom), math.exp(2.0) / (2 * denom), 0.0]
    )
    assert w["audio"].tolist() == pytest.approx([math.exp(5.0) / (2 * denom), 0.0])


def test_temperature_decreases_and_sharpens():
    rw = DoubleStageReweighter({"image": 1, "audio": 1}, total_epochs=5, tau_start=2.0, tau_end=0.1)
    taus = [rw.temperature(e) for e in range(5)]
    assert taus[0] == pytest.approx(2.0) and taus[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    rw.update({"image": [1.0], "audio": [2.0]})
    assert rw.weights(0)["audio"].item() < rw.weights(4)["audio"].item()  # colder: more on the harder exit
    assert rw.stage(1) == "final"  # single-exit modalities: the rest stage is empty


def test_loss_alternates_and_backpropagates():
    rw = DoubleStageReweighter({"image": 2, "audio": 2}, total_epochs=2, tau_end=1.0)
    losses = _losses([1.0, 2.0], [3.0, 4.0], 0.5, grad=True)
    final = rw(losses, epoch=0)
    w = rw.weights(0)
    expected = w["image"][1] * 2.0 + w["audio"][1] * 4.0 + 0.5
    assert final.item() == pytest.approx(expected.item())
    final.backward()
    assert losses["fusion"].grad.item() == pytest.approx(1.0)
    assert losses["image"][0].grad is None or losses["image"][0].grad.item() == 0.0
    rest = rw(_losses([1.0, 2.0], [3.0, 4.0], 0.5), epoch=1)
    w = rw.weights(1)
    assert rest.item() == pytest.approx((w["image"][0] * 1.0 + w["audio"][0] * 3.0).item())
    assert torch.isfinite(rest)


def test_focus_easy_and_errors():
    rw = DoubleStageReweighter({"image": 1, "audio": 1}, total_epochs=1, tau_end=1.0, focus="easy")
    rw.update({"image": [1.0], "audio": [2.0]})
    w = rw.weights(0)
    assert w["image"].item() > w["audio"].item()
    with pytest.raises(ValueError, match="expected 1 exit"):
        rw({"image": [torch.tensor(1.0), torch.tensor(2.0)], "audio": [torch.tensor(1.0)]}, 0)
    with pytest.raises(ValueError, match="unknown modalities"):
        rw({"lidar": [torch.tensor(1.0)]}, 0)
    with pytest.raises(ValueError, match="finite"):
        rw.update({"image": [float("nan")]})
    with pytest.raises(ValueError, match="alpha"):
        DoubleStageReweighter({"image": 1}, total_epochs=1, alpha=1.0)
