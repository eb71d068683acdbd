"""Cheap repeated reads of sysfs attribute files (RAPL counters, INA3221 channels).

A :class:`SysfsFile` opens its file once and re-reads it with ``os.pread(fd, n, 0)``: sysfs
regenerates an attribute's text on every read from offset 0, so this returns a fresh value for
about a microsecond instead of an ``open``/``read``/``close`` round trip. Files in a fake tree
under ``tmp_path`` behave the same as long as tests rewrite them in place (``write_text``).
"""

from __future__ import annotations

import os
from pathlib import Path


class SysfsFile:
    """One integer-valued sysfs attribute, kept open.

    Args:
        path: The attribute file.

    Raises:
        PermissionError, FileNotFoundError, OSError: From ``os.open``; callers translate them
            into a :class:`~devices.errors.DeviceError` with a fix.
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def read_int(self) -> int:
        """The file's current value as an int.

        Raises:
            OSError: The read failed (device gone, permission revoked).
            ValueError: The file does not hold an integer.
        """
        if self._fd is None:
            raise OSError(f"{self.path} was closed")
        data = os.pread(self._fd, 64, 0)
        if not data.strip():  # a file caught mid-rewrite (fake trees only); sysfs never reads empty
            data = os.pread(self._fd, 64, 0)
        return int(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_text(path: str | Path) -> str:
    """Read a small text attribute (a zone or rail name) once, stripped."""
    with open(path, encoding="utf-8") as f:
        return f.read().strip()
