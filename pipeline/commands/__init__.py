"""CLI subcommands, one module each; every module has ``register(sub, groups)``.

``sub`` is the top-level subparsers object; ``groups`` maps a group name (``"train"``,
``"eval"``) to that group's subparsers. A registered parser sets ``func(args, cfg) -> int``.
"""
