"""ONNX Runtime backend: a graph exported once with the TorchScript-based ONNX exporter, run by an
``InferenceSession`` on the CPU execution provider with a fixed thread count.

Why ONNX Runtime (docs/fast_path.md): at batch 1 its per-run overhead is a few microseconds and
its convolutions reach the CPU's arithmetic peak on these small maps, where eager PyTorch spends
tens of microseconds per module call. The exporter traces the module with example inputs and
marks the batch axis of every batched input and output as dynamic, so one session serves batch 1
and batch 32.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from exitflow.pipeline.inference.backends.base import BackendError

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover - a declared dependency; the message says how to fix
    ort = None

OPSET = 17


class OrtCall:
    """An ``InferenceSession`` with the graph's input and output names."""

    def __init__(self, session, input_names: Sequence[str], output_names: Sequence[str]):  # noqa: ANN001
        self.session = session
        self.input_names, self.output_names = list(input_names), list(output_names)
        self._run = session._sess.run  # the bound C++ run: skips the Python wrapper's per-call checks
        self._options = ort.RunOptions() if ort is not None else None

    def __call__(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        try:
            return self._run(self.output_names, dict(zip(self.input_names, inputs, strict=True)), self._options)
        except Exception as e:  # onnxruntime raises its own types: translate at the boundary
            shapes = {n: tuple(np.shape(x)) for n, x in zip(self.input_names, inputs, strict=False)}
            raise BackendError(f"onnxruntime could not run the graph on inputs {shapes}: {e}") from e


class OrtBackend:
    """Compiles modules to ONNX Runtime sessions on the CPU."""

    name = "onnxruntime"

    def __init__(self, num_threads: int = 1):
        if ort is None:
            raise BackendError("engine.backend onnxruntime needs the onnxruntime package: pip install onnxruntime "
                               "(or set engine.backend: torch)")
        self.num_threads = int(num_threads)

    def options(self):  # noqa: ANN201 - ort.SessionOptions
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.num_threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy wait on shared cores
        so.log_severity_level = 3
        return so

    def compile(self, module: nn.Module, example_inputs: Sequence[np.ndarray], input_names: Sequence[str],
                output_names: Sequence[str], batch_inputs: Sequence[str]) -> OrtCall:
        dynamic = {n: {0: "batch"} for n in [*batch_inputs, *output_names]}  # every output has a batch axis
        buffer = io.BytesIO()
        args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in example_inputs)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), args, cast(Any, buffer), input_names=list(input_names),
                                  output_names=list(output_names), dynamic_axes=dynamic, opset_version=OPSET,
                                  dynamo=False)
            session = ort.InferenceSession(buffer.getvalue(), self.options(), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise BackendError(f"could not compile {type(module).__name__} for onnxruntime: {e}") from e
        return OrtCall(session, input_names, output_names)
