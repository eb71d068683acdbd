"""The one exception type of ``devices``: every vendor or sysfs failure is translated into it."""

from __future__ import annotations


class DeviceError(RuntimeError):
    """A power meter cannot start or cannot read; the message says what failed and how to fix it.

    Vendor exceptions (``pynvml.NVMLError``, ``OSError`` from sysfs) are re-raised as
    ``raise DeviceError(...) from e`` so callers catch one type. ``pipeline`` maps it onto its own
    error hierarchy at the command line.
    """
