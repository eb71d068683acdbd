"""Model bundles: one self-contained, versioned folder per trained model (pipeline base layer).

- ``manifest``: the ``bundle.json`` format, reading it and verifying every file's sha256
  (no torch; the loaders in ``pipeline.inference.loading`` read bundles through it);
- ``export``: ``exitflow export OUT_DIR`` writes a bundle from the checkpoints a config uses;
- ``load``: ``exitflow.load_bundle(DIR)`` and ``--bundle DIR``: a config whose systems load
  from the bundle.

See docs/bundles.md.
"""
