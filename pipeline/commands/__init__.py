"""CLI subcommands, one module each; every module has ``register(sub, groups)``.

``sub`` is the top-level subparsers object; ``groups`` maps a group name (``"train"``,
``"eval"``) to that group's subparsers. A registered parser sets ``func(args, cfg) -> int``.
"""


import argparse
import math
from pathlib import Path


def dataset_arg(text: str) -> str:
    """argparse type of ``--dataset``: a built-in data set name, or an imported data set folder (its
    resolved path, the name an imported set goes by; see ``pipeline/data/imported.py``)."""
    from exitflow.pipeline.artifacts import DATASETS
    from exitflow.pipeline.data.imported import imported_name
    from exitflow.pipeline.errors import DataError

    if text in DATASETS:
        return text
    try:
        return imported_name(text)
    except DataError as e:
        raise argparse.ArgumentTypeError(f"{e} (built-in: {', '.join(DATASETS)})") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (bad values give one usage line, before any work)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a finite number in (0, 2] (a share of full's energy)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 2], got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 2):
        raise argparse.ArgumentTypeError(f"expected a number in (0, 2], got {text}")
    return value


def output_file(text: str) -> str:
    """argparse type: a file path that can be written (not a folder, not under a regular file)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; name a file inside it")
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            break
    return text


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists."""
    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return text


def command_line() -> str:
    """The exact command being run, for model cards (``exitflow`` + its arguments)."""
    import shlex
    import sys

    return "exitflow " + shlex.join(sys.argv[1:])
