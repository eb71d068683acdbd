"""Training-time augmentation made for each modality (the CNN family and the LeNet baselines use it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def augment_audio(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Augmentation for unseen voices on a (B, 1, F, T) spectrogram in [0, 1] (dB scaled, low rows first).

    - frequency warp (vocal-tract-length perturbation): rows scaled by a factor in [0.85, 1.15]
      anchored at 0 Hz, which moves formants and pitch as another speaker's voice would;
    - time scale in [0.9, 1.1] and a shift of up to +-8 frames;
    - SpecAugment: 2 frequency and 2 time masks up to 12 bins;
    - a level change of +-0.05 (a gain in dB is an offset).
    """
    b, _, f, t = x.shape
    warp = 0.85 + 0.3 * torch.rand(b, generator=gen)  # > 1 stretches the spectrum upward
    stretch = 0.9 + 0.2 * torch.rand(b, generator=gen)
    shift = (torch.rand(b, generator=gen) * 2 - 1) * (16.0 / t)  # +-8 frames in [-1, 1] units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = 1.0 / stretch, shift  # x: time
    theta[:, 1, 1], theta[:, 1, 2] = 1.0 / warp, 1.0 / warp - 1.0  # y: frequency, row 0 stays put
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    for axis, size in ((2, f), (3, t)):
        for _ in range(2):
            width = torch.randint(0, 13, (b,), generator=gen)
            start = (torch.rand(b, generator=gen) * (size - width)).long()
            ar = torch.arange(size)
            mask = (ar[None] >= start[:, None]) & (ar[None] < (start + width)[:, None])  # (B, size)
            x = x.masked_fill(mask.view((b, 1, size, 1) if axis == 2 else (b, 1, 1, size)), 0.0)
    level = (torch.rand(b, 1, 1, 1, generator=gen) - 0.5) * 0.1
    return (x + level).clamp_(0.0, 1.0)


def augment_image(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A shift of up to 2 pixels in each direction (the same for the batch)."""
    dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, (dy, dx), dims=(2, 3))


