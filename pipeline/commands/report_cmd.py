"""``exitflow report RUN.mcap [bench.json] --out DIR``: PNG plots of a run (see pipeline/evaluation/report.py)."""

from __future__ import annotations

import argparse
import math

from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser(
        "report", help="plot a recording and/or bench results: exits, budget tracking, latency, Pareto (PNG)"
    )
    parser.add_argument("inputs", nargs="+", metavar="RUN.mcap|bench.json",
                        help="a recording (all four plots) and/or an `exitflow eval bench` JSON (accuracy Pareto)")
    parser.add_argument("--out", default="runs/report", metavar="DIR", help="folder for the PNGs (default %(default)s)")
    parser.add_argument("--window-s", type=float, default=5.0, help="running-average window of the budget plot")
    parser.set_defaults(func=_run, needs_config=False)


def _run(args: argparse.Namespace, cfg: Config | None) -> int:
    from pathlib import Path

    from exitflow.pipeline.errors import ExitflowError
    from exitflow.pipeline.evaluation.report import write_report

    if not (math.isfinite(args.window_s) and args.window_s > 0):
        raise ExitflowError(f"--window-s must be a number of seconds > 0, got {args.window_s}")
    for item in args.inputs:
        if not Path(item).is_file():
            raise ExitflowError(f"{item} does not exist; give a recording (.mcap) or bench results (.json)")
    written = write_report(args.inputs, args.out, args.window_s)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0
