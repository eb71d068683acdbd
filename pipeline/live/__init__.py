"""Live sensors to decisions, in rooms that import only downward.

- :mod:`.core`: what every stage shares: clocks, the synchronizer, bounded queues, statistics,
  failures and errors, backoff, and the endpoints (source factories, sinks) the driver talks to.
- :mod:`.recording`: MCAP recording and reading (Foxglove schemas, damage-tolerant reads).
- :mod:`.sources`: camera, microphone, text and recorded sources (plain classes).
- :mod:`.runtime`: the driver loop, the local runtime (no Ray), preprocessing, replay, the budget
  control channel; :mod:`.runtime.ray`: the Ray runtime, the shared service and placement, the
  only Ray in exitflow.
- :mod:`.views`: the terminal view, the Foxglove live server, the Prometheus metrics.
- :mod:`.run`: a whole run (``exitflow run`` / ``record`` / ``budget set``) on top.

Order: core <- recording <- sources <- runtime <- runtime.ray; views take core and recording;
run takes all (``tests/test_layout.py`` holds it). ``live`` may use ``inference`` (the engine it
drives).
"""

__all__ = ["core", "recording", "run", "runtime", "sources", "views"]
