"""Live sensors: sources, synchronizer, queues, recording, the Ray runtime and the live view.

The only exitflow package that imports Ray; it may use ``inference`` (the engine it drives).
"""
