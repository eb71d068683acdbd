"""Offline training and calibration: encoders, baselines, joint training, fusion exits, exit records
and the exit profile. May use ``inference`` (its loaders) and ``data``.
"""
