"""How the live driver reaches its sources and its engine: the one interface both runtimes fill.

:class:`~exitflow.pipeline.live.runtime.driver.PipelineDriver` holds everything a live run decides
(clock correction, sync, queues, drop policies, in-flight limit, recording, outage events,
statistics); a :class:`Transport` only moves messages and samples. Two implement it:

- ``runtime: ray`` — :class:`~exitflow.pipeline.live.runtime.ray.pipeline.RayTransport`: source actors
  drained with ``ray.wait``, an engine actor (or a shared service) called per sample;
- ``runtime: local`` — :class:`~exitflow.pipeline.live.runtime.local.LocalTransport`: the same
  :class:`~exitflow.pipeline.live.runtime.workers.SourceWorker` objects on threads, the engine in-process.

A transport reports a source or engine that is unreachable (a dead actor) as
:class:`SourceDown` / :class:`EngineDown` with the underlying error as ``__cause__``; anything
else it raises for one call is that call's failure only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import Any

from exitflow.pipeline.live.core.clocks import ClockProbe
from exitflow.pipeline.messages import Decision, Sample, SensorMessage

EngineResult = tuple[Decision, dict[str, float], "str | None"]  # (decision, stage -> ms, error or None)


class SourceDown(Exception):  # noqa: N818 - a state, raised across the interface
    """The source's process is unreachable (dead or restarting actor)."""


class EngineDown(Exception):  # noqa: N818
    """The engine's process is unreachable (dead or restarting actor)."""


class Transport(ABC):
    """Moves messages from sources to the driver and samples to the engine; see the module docstring."""

    kind = "?"

    @abstractmethod
    def start(
        self,
        specs: dict[str, Any],
        source_options: dict[str, dict[str, Any]] | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        """Create the engine and one source per ``specs`` entry (name -> SourceConfig or factory)."""

    @abstractmethod
    def wait_ready(self, timeout_s: float) -> dict[str, str]:
        """Block until sources and engine are up; name (and ``"engine"``) -> where it runs."""

    @abstractmethod
    def poll_sources(self, wait_s: float) -> list[tuple[str, list[SensorMessage] | BaseException]]:
        """Messages each source had queued (or why draining it failed), waiting up to ``wait_s``
        for the first; a source with nothing new may be left out."""

    @abstractmethod
    def clock_probe(self, name: str, timeout_s: float) -> ClockProbe | None:
        """One round trip to source ``name``'s clock (driver monotonic ns around it), None on timeout."""

    @abstractmethod
    def poll_health(self) -> list[tuple[str, dict[str, Any] | BaseException]]:
        """Health dicts (with ``events``) that came back since the last call; asks for the next ones."""

    @abstractmethod
    def submit(self, sample: Sample) -> Hashable:
        """Hand one sample to the engine; a token :meth:`collect` returns with its result."""

    @abstractmethod
    def collect(self, timeout_s: float) -> list[tuple[Hashable, EngineResult | BaseException]]:
        """Finished submissions (waiting up to ``timeout_s`` for the first)."""

    @abstractmethod
    def engine_status(self) -> dict[str, Any] | None:
        """The engine's latest status (budget, preprocess drops), or None when none is at hand."""

    @abstractmethod
    def set_budget(self, mj_per_sample: float | None, power_w: float | None) -> dict[str, Any]:
        """Change the running engine's energy budget."""

    @abstractmethod
    def stop_sources(self, timeout_s: float) -> None:
        """Ask every source to stop reading (in-flight samples may still finish)."""

    @abstractmethod
    def close(self) -> None:
        """Release sources and engine (kill actors, join threads)."""
