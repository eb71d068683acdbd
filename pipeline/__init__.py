"""Stage 4 of the data flow: config, data, sources, sync, the engine, the Ray runtime, CLI, reports.

``pipeline`` is the only exitflow package that imports Ray; it may import ``devices``,
``encoders`` and ``scheduler``.
"""
