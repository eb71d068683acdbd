"""Inference: the per-sample engine (scheduler + encoders + fusion exit), named systems, and
every loader of trained artifacts. Imports only the base files and ``data``.
"""
