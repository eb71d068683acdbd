"""Live pipeline, Ray runtime: the only package of exitflow that imports Ray.

Connecting to (or starting) Ray (:mod:`.connect`), the plain workers as actor classes
(:mod:`.workers`), sources and engine as actors under the shared driver (:mod:`.pipeline`:
:class:`RayPipeline`), the batched inference service several pipelines share (:mod:`.service`),
placement and project shipping (:mod:`.placement`), and ``exitflow budget set`` through the
engine actor (:mod:`.control`). Imports the rooms below (core, recording, sources, runtime).
"""

from exitflow.pipeline.live.runtime.ray.connect import probe_ray_address, start_ray
from exitflow.pipeline.live.runtime.ray.pipeline import (
    ENGINE_ACTOR_NAME,
    RayPipeline,
    RayTransport,
    engine_actor,
    source_actor,
)
from exitflow.pipeline.live.runtime.ray.replica import ServiceReplica
from exitflow.pipeline.live.runtime.ray.service import InferenceService

__all__ = [
    "ENGINE_ACTOR_NAME",
    "InferenceService",
    "RayPipeline",
    "RayTransport",
    "ServiceReplica",
    "engine_actor",
    "probe_ray_address",
    "source_actor",
    "start_ray",
]
