"""Fast-path backends: run a compiled call graph (``encoders/call_graph.py``) on numpy arrays.

``open_backend("onnxruntime" | "torch", num_threads)`` gives an object whose ``compile(module,
example_inputs)`` returns a :class:`~pipeline.inference.backends.base.CompiledCall`: ``call(inputs)
-> outputs``, numpy in and out, the batch axis free. ONNX Runtime is the default (docs/fast_path.md
has the measurements); ``torch`` runs the same graph eagerly (a check of the export, and the path
for a device ONNX Runtime's CPU build cannot use).
"""

from __future__ import annotations

from exitflow.pipeline.inference.backends.base import BACKENDS, Backend, BackendError, CompiledCall
from exitflow.pipeline.inference.backends.eager import TorchBackend
from exitflow.pipeline.inference.backends.ort import OrtBackend

__all__ = ["BACKENDS", "Backend", "BackendError", "CompiledCall", "OrtBackend", "TorchBackend", "open_backend"]


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
        return OrtBackend(num_threads)
    if name == "torch":
        return TorchBackend(device)
    raise BackendError(f"unknown engine.backend {name!r}; choose one of {', '.join(BACKENDS)}")

