"""The backend protocol and the factory; each backend lives in a file of its own."""

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


def open_backend(name: str, num_threads: int = 1, device: str = "cpu") -> Backend:
    """The backend called ``name`` (:data:`BACKENDS`), with ``num_threads`` intra-op threads (0: its default).

    Raises:
        BackendError: an unknown name, or the backend's package is not installed.
    """
    if name == "onnxruntime":
        if device != "cpu":
            raise BackendError(
                f"engine.backend onnxruntime runs on the CPU here; engine.device is {device!r}: "
                "set engine.backend: torch for a CUDA device")
        from exitflow.pipeline.inference.backends.ort import OrtBackend

        return OrtBackend(num_threads)
    if name == "torch":
        from exitflow.pipeline.inference.backends.eager import TorchBackend

        return TorchBackend(device)
    raise BackendError(f"unknown engine.backend {name!r}; choose one of {', '.join(BACKENDS)}")
