"""Live pipeline, views: what a person or a monitoring system sees of a running pipeline.

The rich terminal view (:mod:`.terminal`), the Foxglove WebSocket live server (:mod:`.foxglove`)
and the opt-in Prometheus endpoint (:mod:`.metrics`), all fed the driver's ``snapshot()`` (and the
live messages). Imports core and recording (the Foxglove schemas) only.
"""

from exitflow.pipeline.live.views.foxglove import FanOut, FoxgloveLiveServer
from exitflow.pipeline.live.views.metrics import MetricsExporter
from exitflow.pipeline.live.views.terminal import LiveView, render

__all__ = ["FanOut", "FoxgloveLiveServer", "LiveView", "MetricsExporter", "render"]
