"""Evaluation: bench (systems side by side), data-set replay, operating-point sweeps and plots."""
