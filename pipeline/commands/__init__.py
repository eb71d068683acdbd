"""CLI subcommands, one module each; every module has ``register(sub, groups)``.

``sub`` is the top-level subparsers object; ``groups`` maps a group name (``"train"``,
``"eval"``) to that group's subparsers. A registered parser sets ``func(args, cfg) -> int``.
"""


def command_line() -> str:
    """The exact command being run, for model cards (``exitflow`` + its arguments)."""
    import shlex
    import sys

    return "exitflow " + shlex.join(sys.argv[1:])
