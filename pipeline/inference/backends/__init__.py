"""Fast-path backends: run a compiled call graph (``encoders/call_graph.py``) on numpy arrays.

``open_backend("onnxruntime" | "torch", num_threads)`` gives an object whose ``compile(module,
example_inputs)`` returns a :class:`~pipeline.inference.backends.base.CompiledCall`: ``call(inputs)
-> outputs``, numpy in and out, the batch axis free. ONNX Runtime is the default (docs/fast_path.md
has the measurements); ``torch`` runs the same graph eagerly (a check of the export, and the path
for a device ONNX Runtime's CPU build cannot use).
"""

from __future__ import annotations

from exitflow.pipeline.inference.backends.base import (
    BACKENDS,
    Backend,
    BackendError,
    CompiledCall,
    open_backend,
)

__all__ = ["BACKENDS", "Backend", "BackendError", "CompiledCall", "open_backend"]
