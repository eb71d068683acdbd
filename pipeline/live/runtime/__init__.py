"""Live pipeline, runtime: sources -> sync -> engine, driven in one process or (``.ray``) on Ray.

The driver loop both runtimes share (:mod:`.driver`, the sources as it sees them in
:mod:`.source_book`, the interface to a runtime in :mod:`.transport`), the plain workers
(:mod:`.workers`), preprocessing (:mod:`.preprocess`), the local runtime (:mod:`.local`) and its
budget control channel (:mod:`.control`), event-time replay (:mod:`.playback`) and a tiny demo
engine (:mod:`.rule_engine`). Imports core, recording and sources; never Ray: the Ray runtime is
:mod:`exitflow.pipeline.live.runtime.ray`, which nothing here imports.
"""

from exitflow.pipeline.live.runtime.driver import PipelineDriver
from exitflow.pipeline.live.runtime.local import LocalEngine, LocalPipeline, LocalTransport, choose_runtime
from exitflow.pipeline.live.runtime.playback import ReplaySummary, replay_recording, replay_stream
from exitflow.pipeline.live.runtime.preprocess import model_preprocessing, preprocess_sample
from exitflow.pipeline.live.runtime.transport import EngineDown, SourceDown, Transport
from exitflow.pipeline.live.runtime.workers import EngineWorker, SourceWorker, resolve_engine_factory

__all__ = [
    "EngineDown",
    "EngineWorker",
    "LocalEngine",
    "LocalPipeline",
    "LocalTransport",
    "PipelineDriver",
    "ReplaySummary",
    "SourceDown",
    "SourceWorker",
    "Transport",
    "choose_runtime",
    "model_preprocessing",
    "preprocess_sample",
    "replay_recording",
    "replay_stream",
    "resolve_engine_factory",
]
