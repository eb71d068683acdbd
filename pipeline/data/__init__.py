"""Data sets exitflow trains, tests and replays on: AV-MNIST (+ text), GRID, FSDD, LJ Speech.

Every builder reads a *data root* with the layout of ``../shared/data`` (see
``pipeline.data.roots``), so any folder with the same layout works.
"""
