"""The exitflow error hierarchy: every error a user can act on derives from ExitflowError."""

from __future__ import annotations


class ExitflowError(Exception):
    """Base of every error exitflow raises on purpose; the CLI prints it as one line."""


class ConfigError(ExitflowError):
    """The configuration is malformed; ``issues`` lists every problem found, not just the first."""

    def __init__(self, issues: list[str], source: str = "config"):
        self.issues = list(issues)
        self.source = source
        lines = "\n".join(f"  {i}" for i in self.issues)
        super().__init__(f"{source}: {len(self.issues)} problem(s):\n{lines}")


class DataError(ExitflowError):
    """Data is missing, corrupt or of the wrong layout; the message says how to fix it."""


class CheckpointError(ExitflowError):
    """A checkpoint is missing or does not match the model it is loaded into."""
