"""Where exitflow finds its default config and committed checkpoints, and where it writes.

Search order for the config: ``--config PATH``, then ``$EXITFLOW_HOME/config.yaml``, then the
package's own default. The package's own resources (``config.yaml`` and ``checkpoints/``) are
the repo root in a checkout or an editable install, and ``exitflow/resources/`` inside an
installed wheel. Outputs that a config names by relative path (data cache, ``runs/``) resolve
against the config's folder, except for the packaged config, whose folder is inside
site-packages: those go to ``$EXITFLOW_HOME`` (default ``~/.exitflow``) instead.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the checkout, or site-packages/exitflow
INSTALLED_RESOURCES = PACKAGE_ROOT / "resources"
CONFIG_NAME = "config.yaml"


def is_checkout() -> bool:
    """Whether exitflow runs from a source checkout (or an editable install of one)."""
    return (PACKAGE_ROOT / "pyproject.toml").is_file() and (PACKAGE_ROOT / CONFIG_NAME).is_file()


def resource_root() -> Path:
    """The folder holding the default ``config.yaml`` and the committed ``checkpoints/``."""
    if (INSTALLED_RESOURCES / CONFIG_NAME).is_file():
        return INSTALLED_RESOURCES
    return PACKAGE_ROOT


def user_home() -> Path:
    """``$EXITFLOW_HOME`` if set, else ``~/.exitflow``: the user's config and outputs."""
    env = os.environ.get("EXITFLOW_HOME")
    return Path(env).expanduser() if env else Path.home() / ".exitflow"


def default_config_path() -> Path:
    """``$EXITFLOW_HOME/config.yaml`` when it exists, else the package's own default config."""
    env = os.environ.get("EXITFLOW_HOME")
    if env and (Path(env).expanduser() / CONFIG_NAME).is_file():
        return Path(env).expanduser() / CONFIG_NAME
    return resource_root() / CONFIG_NAME


def output_base(config_source: str | None) -> Path:
    """The folder relative output paths of a config resolve against (see the module docstring)."""
    if config_source and Path(config_source).exists():
        folder = Path(config_source).resolve().parent
        if folder == INSTALLED_RESOURCES.resolve():
            return user_home()
        return folder
    return PACKAGE_ROOT if is_checkout() else user_home()
