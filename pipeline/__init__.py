"""Stage 4 of the data flow: everything that runs the models, by when it runs.

Base files (config, config_schema, errors, messages, checkpoints, artifacts, meters, home), then
``data/`` (data sets and splits) -> ``inference/`` (engine, systems, loading) -> ``training/``
(profiles, encoders, baselines, joint, fusion exits) -> ``evaluation/`` (bench, replay, sweeps)
-> ``live/`` (sources, sync, queues, recording, runtime: the only package that imports Ray)
-> ``commands/`` + ``cli`` (parse, call one function). Imports point only that way.
"""
