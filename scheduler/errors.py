"""Exceptions and warnings of ``scheduler``; the CLI maps them onto its own messages."""

from __future__ import annotations


class SchedulerError(RuntimeError):
    """A scheduling step cannot go on; the message says what was wrong and how to fix it."""


class ProfileFormatError(SchedulerError):
    """A profile file is unreadable, of another schema version, or misses fields."""


class ProfileMismatchError(SchedulerError):
    """A profile was made for other checkpoints than the ones loaded (fingerprints differ)."""


class BudgetWarning(UserWarning):
    """The energy budget cannot be met; the controller falls back to cheapest-exit mode."""
