"""exitflow: energy-aware multimodal early-exit inference."""

from __future__ import annotations

__version__ = "0.1.0"
