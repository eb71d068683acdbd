"""Live pipeline, Ray runtime: the only package of exitflow that imports Ray.

Connecting to (or starting) Ray (:mod:`.connect`), the plain workers as actor classes
(:mod:`.workers`), sources and engine as actors under the shared driver (:mod:`.pipeline`:
:class:`RayPipeline`), the batched inference service several pipelines share (its Serve
deployment :mod:`.deployment`, a replica's work :mod:`.replica`, the client :mod:`.service`),
placement and project shipping (:mod:`.placement`), and ``exitflow budget set`` through the
engine actor (:mod:`.control`). Imports the rooms below (core, recording, sources, runtime).

Serve's throughput-optimized data plane is chosen here, before any module of this package imports
``ray.serve`` (Serve reads the variables once, at import; the Ray processes this process starts
inherit them): ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` unless the environment says otherwise, and
``RAY_SERVE_ENABLE_DIRECT_INGRESS=0`` (that part of the mode serves HTTP, which the service does
not: with it every replica ran an HTTP server and every stop waited out a 30-s drain).
"""

import os

THROUGHPUT_ENV = "RAY_SERVE_THROUGHPUT_OPTIMIZED"
os.environ.setdefault(THROUGHPUT_ENV, "1")
os.environ.setdefault("RAY_SERVE_ENABLE_DIRECT_INGRESS", "0")

from exitflow.pipeline.live.runtime.ray.connect import probe_ray_address, start_ray  # noqa: E402
from exitflow.pipeline.live.runtime.ray.pipeline import (  # noqa: E402
    ENGINE_ACTOR_NAME,
    RayPipeline,
    RayTransport,
    engine_actor,
    source_actor,
)
from exitflow.pipeline.live.runtime.ray.replica import ServiceReplica  # noqa: E402
from exitflow.pipeline.live.runtime.ray.service import InferenceService  # noqa: E402

__all__ = [
    "ENGINE_ACTOR_NAME",
    "THROUGHPUT_ENV",
    "InferenceService",
    "RayPipeline",
    "RayTransport",
    "ServiceReplica",
    "engine_actor",
    "probe_ray_address",
    "source_actor",
    "start_ray",
]
