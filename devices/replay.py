"""Replay a recorded power trace on a virtual clock, for tests and what-if runs on absent devices.

Trace files:

* CSV with header ``t_s,power_mw[,<rail>...]`` - time in seconds, total power in mW, optional
  per-rail power columns in mW. Lines starting with ``#`` before the header are metadata, one
  ``# key=value`` per line; known keys: ``interpolation`` (``linear`` or ``step``) and
  ``idle_floor_mw`` (the recording meter's idle floor); the rest is kept in ``PowerTrace.meta``.
  :class:`devices.trace.TraceRecorder` writes this format.
* JSON: a list of ``{"t_s": ..., "power_mw": ..., "rails": {<rail>: mW}}`` objects (other numeric
  keys are taken as rails too); always linear.

Model: with ``interpolation=linear`` (the default) power is piecewise linear between samples, so
the energy between two trace times is the trapezoidal area (mW x s = mJ). With ``step`` each
row's power is the *average over the interval that ends at its time* (what a recorder that reads
energy counters produces): power is constant on ``(t[i-1], t[i]]`` and equal to row ``i``, so
the energy of any interval between two sample times is reproduced exactly. The trace starts at
virtual time 0 (its first ``t_s`` is subtracted). After the last sample the trace either repeats
(``on_end="loop"``, period = last - first ``t_s``; the default), holds its last value
(``"hold"``), or raises (``"error"``).

The virtual clock moves only when the caller says so: :meth:`ReplayMeter.advance` (seconds) or
:meth:`ReplayMeter.run_window` (a window of a given duration). A window's energy is the integral
of the trace from its begin to its end on that clock, so two replays with the same calls give
identical numbers, bit for bit, whatever the machine load.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, cast

from exitflow.devices.base import PowerMeter
from exitflow.devices.errors import DeviceError
from exitflow.devices.measurement import Measurement, make_measurement

OnEnd = Literal["loop", "hold", "error"]
Interpolation = Literal["linear", "step"]


class PowerTrace:
    """A validated power trace with cumulative energy precomputed per column.

    Args:
        t_s: Strictly increasing sample times in seconds.
        power_mw: Total power per sample in mW (>= 0).
        rails: Optional per-rail power series (same length) in mW.
        name: Label used in ``Measurement.source``.
        interpolation: ``"linear"`` or ``"step"`` (see the module docstring).
        idle_floor_mw: Idle floor of the meter that recorded the trace, if known.
        meta: Other metadata of the trace file.

    Raises:
        DeviceError: Lengths differ, times not increasing, values negative / not finite, or an
            unknown interpolation.
    """

    def __init__(
        self,
        t_s: Sequence[float],
        power_mw: Sequence[float],
        rails: Mapping[str, Sequence[float]] | None = None,
        name: str = "trace",
        interpolation: Interpolation = "linear",
        idle_floor_mw: float | None = None,
        meta: Mapping[str, str] | None = None,
    ):
        self.name = name
        if interpolation not in ("linear", "step"):
            raise DeviceError(
                f"power trace {name!r}: interpolation must be 'linear' or 'step', got {interpolation!r}"
            )
        self.interpolation: Interpolation = interpolation
        if idle_floor_mw is not None and not (math.isfinite(idle_floor_mw) and idle_floor_mw >= 0):
            raise DeviceError(
                f"power trace {name!r}: idle_floor_mw must be a finite power >= 0, got {idle_floor_mw!r}"
            )
        self.idle_floor_mw = idle_floor_mw
        self.meta = dict(meta or {})
        if len(t_s) == 0:
            raise DeviceError(f"power trace {name!r} is empty; it needs at least one row t_s,power_mw")
        columns = {"total": list(map(float, power_mw))}
        for rail, values in (rails or {}).items():
            columns[str(rail)] = list(map(float, values))
        times = list(map(float, t_s))
        for col, values in columns.items():
            if len(values) != len(times):
                raise DeviceError(
                    f"power trace {name!r}: column {col!r} has {len(values)} values for {len(times)} times"
                )
            bad = [v for v in values if not math.isfinite(v) or v < 0]
            if bad:
                raise DeviceError(
                    f"power trace {name!r}: column {col!r} has negative or non-finite power {bad[:3]}"
                )
        if not all(math.isfinite(t) for t in times) or any(
            b <= a for a, b in zip(times, times[1:], strict=False)
        ):
            raise DeviceError(f"power trace {name!r}: t_s must be finite and strictly increasing")
        self.t_s = [t - times[0] for t in times]
        self.period_s = self.t_s[-1]
        self.columns = columns
        self.rail_names = [c for c in columns if c != "total"]
        self._cum_mj = {}
        step = interpolation == "step"
        for col, p in columns.items():
            cum = [0.0]
            for i in range(1, len(self.t_s)):
                level = p[i] if step else 0.5 * (p[i - 1] + p[i])
                cum.append(cum[-1] + level * (self.t_s[i] - self.t_s[i - 1]))
            self._cum_mj[col] = cum

    def cumulative_mj(self, column: str, tau_s: float, on_end: OnEnd = "loop") -> float:
        """Energy of ``column`` from trace time 0 to ``tau_s`` (>= 0) seconds."""
        cum, p, t = self._cum_mj[column], self.columns[column], self.t_s
        if tau_s > self.period_s:
            if on_end == "error":
                raise DeviceError(
                    f"virtual time {tau_s:.6f} s is past the end of power trace {self.name!r} "
                    f"({self.period_s:.6f} s); use on_end='loop' or 'hold', or record a longer trace"
                )
            if on_end == "hold" or self.period_s == 0:
                return cum[-1] + p[-1] * (tau_s - self.period_s)
            loops = math.floor(tau_s / self.period_s)
            rest_s = min(self.period_s, max(0.0, tau_s - loops * self.period_s))
            return loops * cum[-1] + self.cumulative_mj(column, rest_s, on_end)
        i = max(0, bisect.bisect_right(t, tau_s) - 1)
        if i >= len(t) - 1:
            return cum[-1]
        if self.interpolation == "step":
            return cum[i] + p[i + 1] * (tau_s - t[i])
        frac = (tau_s - t[i]) / (t[i + 1] - t[i])
        p_tau = p[i] + (p[i + 1] - p[i]) * frac
        return cum[i] + 0.5 * (p[i] + p_tau) * (tau_s - t[i])


def load_trace(path: str | Path) -> PowerTrace:
    """Read a CSV or JSON power trace (see the module docstring).

    Raises:
        DeviceError: Unreadable file or wrong layout, with the expected layout.
    """
    path = Path(path)
    layout = "CSV with header t_s,power_mw[,rail...] or JSON list of {t_s, power_mw, rails}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DeviceError(f"cannot read power trace {path}: {e}; set power.replay_trace to a {layout}") from e
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(text)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("expected a JSON list of objects")
            rails: dict[str, list[float]] = {}
            for r in rows:
                extra = {k: v for k, v in r.items() if k not in ("t_s", "power_mw", "rails")}
                extra.update(r.get("rails") or {})
                for k, v in extra.items():
                    rails.setdefault(str(k), []).append(float(v))
            return PowerTrace([r["t_s"] for r in rows], [r["power_mw"] for r in rows], rails, path.name)
        lines = text.splitlines()
        meta: dict[str, str] = {}
        while lines and (lines[0].startswith("#") or not lines[0].strip()):
            key, sep, value = lines.pop(0).lstrip("#").partition("=")
            if sep:
                meta[key.strip()] = value.strip()
        reader = csv.reader(lines)
        header = [h.strip() for h in next(reader)]
        if header[:2] != ["t_s", "power_mw"]:
            raise ValueError(f"header starts with {header[:2]}, expected ['t_s', 'power_mw']")
        data = [[float(x) for x in row] for row in reader if row]
        if any(len(row) != len(header) for row in data):
            raise ValueError(f"every row needs {len(header)} values like the header {header}")
        cols = [[row[j] for row in data] for j in range(len(header))]
        rails = {name: cols[j] for j, name in enumerate(header) if j >= 2}
        idle = meta.pop("idle_floor_mw", "")
        interpolation = meta.pop("interpolation", "linear")
        if interpolation not in ("linear", "step"):
            raise ValueError(f"interpolation={interpolation!r} in the metadata; expected linear or step")
        return PowerTrace(
            cols[0],
            cols[1],
            rails,
            path.name,
            interpolation=cast(Interpolation, interpolation),
            idle_floor_mw=float(idle) if idle else None,
            meta=meta,
        )
    except (ValueError, KeyError, TypeError, StopIteration, IndexError) as e:
        raise DeviceError(f"power trace {path} is malformed ({e}); expected a {layout}") from e


class ReplayMeter(PowerMeter):
    """A meter that integrates a recorded trace over a caller-driven virtual clock.

    Args:
        trace: A :class:`PowerTrace` or a path to a trace file.
        on_end: What happens past the end of the trace (``"loop"``, ``"hold"``, ``"error"``).
    """

    kind = "replay"
    estimating = True

    def __init__(self, trace: PowerTrace | str | os.PathLike, on_end: OnEnd = "loop"):
        super().__init__(clock=None)
        if on_end not in ("loop", "hold", "error"):
            raise ValueError(f"on_end must be 'loop', 'hold' or 'error', got {on_end!r}")
        self.trace = trace if isinstance(trace, PowerTrace) else load_trace(os.fspath(trace))
        self.on_end: OnEnd = on_end
        self.now_s = 0.0
        self._clock = lambda: self.now_s
        self.source = f"replay:{self.trace.name}"
        if self.trace.idle_floor_mw is not None:
            basis = self.trace.meta.get("idle_basis", "")
            self.set_idle_floor(
                self.trace.idle_floor_mw, "recorded with the trace" + (f" ({basis})" if basis else "")
            )

    def _idle_wait(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move the virtual clock forward by ``seconds`` (>= 0)."""
        if not seconds >= 0:
            raise ValueError(
                f"advance() needs seconds >= 0, got {seconds!r}; the virtual clock never goes back"
            )
        self.now_s += seconds

    def run_window(self, name: str, duration_s: float) -> Measurement:
        """Begin ``name``, advance the clock by ``duration_s`` and end it."""
        self.begin_window(name)
        self.advance(duration_s)
        return self.end_window(name)

    def _snapshot(self) -> float:
        return self.now_s

    def _measure(self, name: str, start: float, end: float) -> Measurement:
        def energy(col: str) -> float:
            return self.trace.cumulative_mj(col, end, self.on_end) - self.trace.cumulative_mj(
                col, start, self.on_end
            )

        rails = {rail: energy(rail) for rail in self.trace.rail_names}
        return make_measurement(name, energy("total"), end - start, self.source, True, rails)

    def describe(self) -> str:
        t = self.trace
        return "\n".join(
            [
                f"replay: trace {t.name!r}, {len(t.t_s)} samples over {t.period_s:g} s, rails: "
                f"{', '.join(t.rail_names) or 'none'}",
                f"  power {'linear between samples' if t.interpolation == 'linear' else 'constant per interval (step)'}; "
                f"virtual clock advanced by the caller; past the end: {self.on_end}",
                "  replayed numbers are marked estimated=True (they were measured on another run)",
            ]
        )
