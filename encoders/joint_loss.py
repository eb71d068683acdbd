"""MMExit's joint loss over all exits with double-stage adaptive re-weighting (section 4).

Per exit (i, j) (modality i, exit j of m_i) a running mean of a training signal is kept
(eq. 15): ``g_bar <- alpha * g_bar + (1 - alpha) * g``. The signal is the exit's loss by
default (a proxy for its gradient magnitude) or any per-exit value the trainer passes, e.g.
gradient norms. Weights are a softmax over the exits considered in the current stage Q,
divided by ``m_i - j + 1`` so earlier exits weigh less (eq. 16)::

    w_ij = exp(g_bar_ij / tau) / ((m_i - j + 1) * sum_{x in Q} exp(g_bar_x / tau))

The temperature decays geometrically from ``tau_start`` to ``tau_end`` over ``total_epochs``.
Stages alternate by epoch: the *final* stage trains each modality's last exit plus the fusion
exit (eq. 17, fusion weight 1), the *rest* stage the remaining exits (eq. 18). The paper gives
the parity both ways (Algorithm 1 and eq. 17 put the final stage on even epochs, the summary
equation on odd ones); here the final stage runs when ``epoch % 2 == final_parity`` (default 0,
so a trainer counting epochs from 0 starts with the final exits). When no modality has more
than one exit the rest stage is empty and the final stage is used every epoch.

The paper's softmax gives more weight to exits with a *larger* signal ("focus on hard parts");
``focus="easy"`` flips the sign for the reading in which stronger (lower-loss) exits weigh more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

FUSION_KEY = "fusion"


class DoubleStageReweighter:
    """Adaptive exit weights for MMExit joint training.

    Args:
        exits_per_modality: Modality -> number of exits (m_i).
        total_epochs: Epochs over which the temperature decays.
        alpha: Running-mean factor of eq. 15, in [0, 1).
        tau_start, tau_end: Softmax temperature at the first and the last epoch (> 0).
        final_parity: Epoch parity (0 or 1) of the final-exits-plus-fusion stage.
        focus: ``"hard"`` (eq. 16 as written) or ``"easy"``.

    Example:
        >>> rw = DoubleStageReweighter({"image": 3, "audio": 2}, total_epochs=10)
        >>> loss = rw({"image": [l0, l1, l2], "audio": [a0, a1], "fusion": lf}, epoch)
    """

    def __init__(
        self,
        exits_per_modality: Mapping[str, int],
        total_epochs: int,
        alpha: float = 0.9,
        tau_start: float = 1.0,
        tau_end: float = 0.1,
        final_parity: int = 0,
        focus: Literal["hard", "easy"] = "hard",
    ):
        if not exits_per_modality or any(int(n) < 1 for n in exits_per_modality.values()):
            raise ValueError(f"every modality needs >= 1 exit, got {dict(exits_per_modality)}")
        if FUSION_KEY in exits_per_modality:
            raise ValueError(f"{FUSION_KEY!r} is reserved for the fusion loss; rename that modality")
        if total_epochs < 1:
            raise ValueError(f"total_epochs must be >= 1, got {total_epochs}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must lie in [0, 1), got {alpha}")
        if not (tau_start > 0 and tau_end > 0):
            raise ValueError(f"temperatures must be > 0, got tau_start={tau_start}, tau_end={tau_end}")
        if final_parity not in (0, 1):
            raise ValueError(f"final_parity must be 0 or 1, got {final_parity}")
        if focus not in ("hard", "easy"):
            raise ValueError(f"focus must be 'hard' or 'easy', got {focus!r}")
        self.exits = {m: int(n) for m, n in exits_per_modality.items()}
        self.total_epochs = int(total_epochs)
        self.alpha = float(alpha)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.final_parity = final_parity
        self.sign = 1.0 if focus == "hard" else -1.0
        self.running: dict[str, Tensor | None] = dict.fromkeys(self.exits)  # modality -> (m_i,)

    def temperature(self, epoch: int) -> float:
        """Geometric decay from ``tau_start`` (epoch 0) to ``tau_end`` (epoch total_epochs - 1)."""
        if self.total_epochs == 1:
            return self.tau_end
        frac = min(max(epoch, 0), self.total_epochs - 1) / (self.total_epochs - 1)
        return self.tau_start * (self.tau_end / self.tau_start) ** frac

    def stage(self, epoch: int) -> Literal["final", "rest"]:
        if all(n == 1 for n in self.exits.values()):
            return "final"
        return "final" if epoch % 2 == self.final_parity else "rest"

    def update(self, signals: Mapping[str, Sequence[float] | Tensor]) -> None:
        """Fold one step's per-exit signals into the running means (eq. 15); the first sets them."""
        for m, n in self.exits.items():
            if m not in signals:
                continue
            value = (
                torch.as_tensor(
                    [float(v) for v in signals[m]] if not isinstance(signals[m], Tensor) else signals[m],
                    dtype=torch.float64,
                )
                .detach()
                .flatten()
            )  # (m_i,)
            if value.numel() != n:
                raise ValueError(f"{m}: expected {n} exit signals, got {value.numel()}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{m}: exit signals must be finite, got {value.tolist()}")
            prev = self.running[m]
            self.running[m] = value if prev is None else self.alpha * prev + (1 - self.alpha) * value

    def weights(self, epoch: int) -> dict[str, Tensor]:
        """Modality -> (m_i,) float weights for ``epoch`` (zero outside the stage's exits)."""
        stage = self.stage(epoch)
        tau = self.temperature(epoch)
        members: list[tuple[str, int, float]] = []
        for m, n in self.exits.items():
            idx = [n - 1] if stage == "final" else list(range(n - 1))
            running = self.running[m]
            for j in idx:
                g = 0.0 if running is None else float(running[j])
                members.append((m, j, self.sign * g / tau))
        top = max(v for _, _, v in members)
        denom = sum(math.exp(v - top) for _, _, v in members)
        out = {m: torch.zeros(n) for m, n in self.exits.items()}
        for m, j, v in members:
            out[m][j] = math.exp(v - top) / ((self.exits[m] - j) * denom)  # m_i - j + 1 with 1-based j
        return out

    def __call__(
        self,
        loss_per_exit: Mapping[str, Sequence[Tensor] | Tensor],
        epoch: int,
        signals: Mapping[str, Sequence[float] | Tensor] | None = None,
        update: bool = True,
    ) -> Tensor:
        """Weighted joint loss for this step.

        Args:
            loss_per_exit: Modality -> its exits' scalar losses in depth order, plus an optional
                ``"fusion"`` scalar loss (added with weight 1 in the final stage).
            epoch: The trainer's epoch counter.
            signals: Per-exit signals for the running means; default the detached losses.
            update: Fold this step's signals in before weighting.
        """
        unknown = set(loss_per_exit) - set(self.exits) - {FUSION_KEY}
        if unknown:
            raise ValueError(
                f"unknown modalities {sorted(unknown)}; expected {sorted(self.exits)} and 'fusion'"
            )
        losses = {
            m: torch.stack(list(v)) if not isinstance(v, Tensor) else v.reshape(-1)  # (m_i,)
            for m, v in loss_per_exit.items()
            if m != FUSION_KEY
        }
        for m, v in losses.items():
            if v.numel() != self.exits[m]:
                raise ValueError(f"{m}: expected {self.exits[m]} exit losses, got {v.numel()}")
        if update:
            self.update(signals if signals is not None else {m: v.detach() for m, v in losses.items()})
        weights = self.weights(epoch)
        total = sum((weights[m].to(v) * v).sum() for m, v in losses.items())
        if self.stage(epoch) == "final" and FUSION_KEY in loss_per_exit:
            total = total + torch.as_tensor(loss_per_exit[FUSION_KEY]).reshape(())
        return torch.as_tensor(total) if not isinstance(total, Tensor) else total
