"""Replace a folder by a fully written one in two renames, so readers never see half of it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def swap_in(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an existing ``target``.

    ``tmp`` must be on the same file system (a sibling). An old ``target`` is first renamed to
    ``<target>.old-<pid>`` and removed only after ``tmp`` took its place, so a crash in between
    leaves either the old or the new folder under ``target``'s name (plus a stray ``.old``), never a
    mix of both.
    """
    old = target.with_name(f"{target.name}.old-{os.getpid()}") if target.exists() else None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
