"""Eager PyTorch backend: the same call graph run as a module (a check of the compiled graph, and
the path for a CUDA device)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


class TorchCall:
    """A module in inference mode, numpy in and out."""

    def __init__(self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str],
                 device: torch.device):
        self.module, self.device = module.eval(), device
        self.input_names, self.output_names = list(input_names), list(output_names)

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.inference_mode():
            outs = self.module(*(torch.from_numpy(np.asarray(x)).to(self.device) for x in inputs))
        return [o.cpu().numpy() for o in outs]


class TorchBackend:
    name = "torch"

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)

    def compile(self, module: nn.Module, example_inputs: Sequence[np.ndarray], input_names: Sequence[str],
                output_names: Sequence[str], batch_inputs: Sequence[str]) -> TorchCall:
        return TorchCall(module.to(self.device), input_names, output_names, self.device)
