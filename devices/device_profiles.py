"""Device profiles: power and energy-per-MAC figures of target devices, each with its source.

A profile is a YAML file under ``devices/profiles/`` (or any path). Every figure is a mapping
``{value, source, estimate, note}``: ``source`` names one or more entries of the file's
``sources:`` list (``{id, title, url}``), ``estimate: true`` says the number is derived or
guessed rather than published, and ``note`` says how. Unknown keys anywhere are an error.

Figures (all optional except where a consumer needs them):

* ``cores`` - CPU cores (the psutil estimator caps busy CPU time at ``cores`` x duration).
* ``tdp_w`` - rated thermal design power / top power mode, W.
* ``idle_power_w`` - device power when idle, W.
* ``active_power_per_core_w`` - extra power of one fully busy core above idle, W.
* ``static_power_w`` - power drawn regardless of work while a model runs, W (MAC model).
* ``pj_per_mac`` - mapping precision (``fp32``, ``fp16``, ``int8``, ...) -> pJ per MAC.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from exitflow.devices.errors import DeviceError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
_TOP_KEYS = {
    "name", "description", "kind", "cores", "tdp_w", "idle_power_w", "active_power_per_core_w",
    "static_power_w", "pj_per_mac", "sources",
}  # fmt: skip
_FIGURE_KEYS = {"value", "source", "estimate", "note"}
_SOURCE_KEYS = {"id", "title", "url"}
_KINDS = {"cpu", "soc", "gpu"}


class ProfileError(DeviceError, ValueError):
    """A device profile file is malformed; the message lists every problem."""


@dataclass(frozen=True)
class Figure:
    """One number of a profile with its provenance."""

    value: float
    sources: tuple[str, ...]
    estimate: bool = False
    note: str = ""


@dataclass(frozen=True)
class DeviceProfile:
    """A validated device profile (see the module docstring for the fields)."""

    name: str
    description: str
    kind: str
    figures: dict[str, Figure]
    pj_per_mac: dict[str, Figure]
    sources: dict[str, dict[str, str]]
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, key: str) -> float | None:
        """The value of figure ``key`` or ``None`` when the profile does not give it."""
        fig = self.figures.get(key)
        return None if fig is None else fig.value

    def require(self, key: str, purpose: str) -> float:
        """The value of ``key``; raise a :class:`ProfileError` naming ``purpose`` when absent."""
        fig = self.figures.get(key)
        if fig is None:
            raise ProfileError(
                f"profile {self.name!r} has no {key!r}, which {purpose} needs; pick a profile that has it "
                f"(see devices/profiles/) or add it to {self.path or 'the profile'} with its source"
            )
        return fig.value

    def cite(self, key: str) -> str:
        """One line: the figure, whether it is an estimate, and the titles of its sources."""
        fig = self.figures.get(key) or self.pj_per_mac.get(key.removeprefix("pj_per_mac."))
        if fig is None:
            return f"{key}: not given"
        titles = "; ".join(self.sources[s].get("title", s) for s in fig.sources)
        flag = " (estimate)" if fig.estimate else ""
        return f"{key} = {fig.value:g}{flag} [{titles}]" + (f" - {fig.note}" if fig.note else "")


def _figure(where: str, raw: Any, source_ids: set[str], errors: list[str]) -> Figure | None:
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a mapping {{value, source, estimate, note}}, found {raw!r}")
        return None
    unknown = set(raw) - _FIGURE_KEYS
    if unknown:
        errors.append(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_FIGURE_KEYS)}")
    value = raw.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        errors.append(f"{where}.value: expected a number >= 0, found {value!r}")
        return None
    src = raw.get("source")
    sources = (src,) if isinstance(src, str) else tuple(src) if isinstance(src, list) else ()
    if not sources:
        errors.append(f"{where}.source: every figure needs a source id from the sources: list")
    for s in sources:
        if s not in source_ids:
            errors.append(f"{where}.source: {s!r} is not an id in sources: ({sorted(source_ids)})")
    estimate = raw.get("estimate", False)
    if not isinstance(estimate, bool):
        errors.append(f"{where}.estimate: expected true/false, found {estimate!r}")
    return Figure(float(value), sources, bool(estimate), str(raw.get("note", "")))


def parse_profile(data: Any, origin: str = "profile") -> DeviceProfile:
    """Validate a profile mapping (as loaded from YAML).

    Raises:
        ProfileError: Listing every unknown key, missing source and bad value.
    """
    if not isinstance(data, dict):
        raise ProfileError(f"{origin}: expected a mapping at the top level, found {type(data).__name__}")
    errors: list[str] = []
    unknown = set(data) - _TOP_KEYS
    if unknown:
        errors.append(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "description", "kind", "sources"):
        if key not in data:
            errors.append(f"missing required key {key!r}")
    if data.get("kind") is not None and data.get("kind") not in _KINDS:
        errors.append(f"kind: expected one of {sorted(_KINDS)}, found {data.get('kind')!r}")
    sources: dict[str, dict[str, str]] = {}
    for i, src in enumerate(data.get("sources") or []):
        if not isinstance(src, dict) or "id" not in src or "title" not in src:
            errors.append(f"sources[{i}]: expected a mapping with id, title and optionally url")
            continue
        bad = set(src) - _SOURCE_KEYS
        if bad:
            errors.append(f"sources[{i}]: unknown key(s) {sorted(bad)}; allowed: {sorted(_SOURCE_KEYS)}")
        sources[str(src["id"])] = {k: str(v) for k, v in src.items()}
    figures: dict[str, Figure] = {}
    for key in sorted(_TOP_KEYS - {"name", "description", "kind", "sources", "pj_per_mac"}):
        if key in data:
            fig = _figure(key, data[key], set(sources), errors)
            if fig is not None:
                figures[key] = fig
    pj: dict[str, Figure] = {}
    raw_pj = data.get("pj_per_mac") or {}
    if not isinstance(raw_pj, dict):
        errors.append(f"pj_per_mac: expected a mapping precision -> figure, found {raw_pj!r}")
        raw_pj = {}
    for precision, raw in raw_pj.items():
        fig = _figure(f"pj_per_mac.{precision}", raw, set(sources), errors)
        if fig is not None:
            pj[str(precision)] = fig
    if errors:
        raise ProfileError(f"{origin}: {len(errors)} problem(s):\n" + "\n".join(f"  {e}" for e in errors))
    return DeviceProfile(
        name=str(data["name"]),
        description=str(data["description"]),
        kind=str(data["kind"]),
        figures=figures,
        pj_per_mac=pj,
        sources=sources,
        path=origin,
    )


def available_profiles() -> list[str]:
    """Names of the profiles shipped in ``devices/profiles/``."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def load_power_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a device power profile: a shipped one by name (``"x86-server"``) or any profile YAML by path
    (not the exit profile of :func:`exitflow.scheduler.profile.load_profile`).

    Raises:
        ProfileError: Unknown name, unreadable file or invalid content.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise ProfileError(
            f"no device profile {str(name_or_path)!r}; shipped profiles: {', '.join(available_profiles())} "
            "(or pass a path to a YAML profile)"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ProfileError(f"cannot read device profile {path}: {e}") from e
    return parse_profile(data, origin=str(path))
