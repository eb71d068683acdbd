"""The backend protocol and its error; each backend lives in a file of its own (the factory: ``__init__``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from torch import nn

from exitflow.pipeline.errors import ExitflowError

BACKENDS = ("onnxruntime", "torch")


class BackendError(ExitflowError):
    """A backend is missing, or a graph could not be compiled or run on it."""


class CompiledCall(Protocol):
    """One compiled graph: ``call(inputs) -> outputs`` in the graph's input/output name order."""

    input_names: list[str]
    output_names: list[str]

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


class Backend(Protocol):
    name: str

    def compile(self, module: nn.Module, example_inputs: Sequence[np.ndarray], input_names: Sequence[str],
                output_names: Sequence[str], batch_inputs: Sequence[str]) -> CompiledCall: ...
