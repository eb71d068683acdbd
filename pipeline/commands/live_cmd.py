"""``exitflow run``, ``exitflow record OUT.mcap`` and ``exitflow budget set``: the live pipeline.

Thin wrappers around :func:`exitflow.pipeline.live.run.run_live` and
:func:`exitflow.pipeline.live.run.set_running_budget` (either runtime); see docs/streaming.md.
"""

from __future__ import annotations

import argparse
import json

from exitflow.pipeline.commands.bundle_cmd import add_bundle_option, with_bundle
from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    run = sub.add_parser("run", help="run the live pipeline on the sources in stream.sources")
    run.add_argument(
        "--record", default=None, metavar="OUT.mcap", help="record raw streams and decisions (MCAP)"
    )
    _common(run)
    run.set_defaults(func=_run)

    record = sub.add_parser("record", help="run the live pipeline and record it to an MCAP file")
    record.add_argument("out", metavar="OUT.mcap", help="recording to write")
    _common(record)
    record.set_defaults(func=_record)

    budget = sub.add_parser("budget", help="change the energy budget of a running pipeline")
    what = budget.add_subparsers(dest="budget_what", metavar="WHAT")
    set_ = what.add_parser("set", help="set the budget (per sample or as average power)")
    set_.add_argument("--mj-per-sample", type=float, default=None, help="energy budget per sample in mJ")
    set_.add_argument("--power-w", type=float, default=None, help="average power budget in W")
    set_.add_argument("off", nargs="?", choices=("off",), default=None, help="`off` removes the budget")
    set_.set_defaults(func=_budget_set)
    budget.set_defaults(func=None, group_parser=budget)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    add_bundle_option(parser)
    parser.add_argument(
        "--no-view", action="store_true", help="no live terminal view (print a summary at the end)"
    )
    parser.add_argument(
        "--decisions", default=None, metavar="OUT.jsonl", help="stream every decision and outage event here (JSONL)"
    )
    parser.add_argument(
        "--foxglove", action="store_true", default=None,
        help="serve the live topics to Foxglove on ws://stream.foxglove_host:stream.foxglove_port (default 127.0.0.1:8765)",
    )


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from pathlib import Path

    from exitflow.pipeline.commands.replay_cmd import check_output_path
    from exitflow.pipeline.errors import ExitflowError
    from exitflow.pipeline.live.run import run_live

    cfg = with_bundle(args, cfg)
    if args.duration is not None and not (args.duration > 0 and args.duration < float("inf")):
        raise ExitflowError(f"--duration must be a finite number of seconds > 0, got {args.duration}")
    for flag, value in (("--record", args.record), ("--decisions", args.decisions)):
        if value:
            check_output_path(Path(value), flag)
    snap = run_live(
        cfg, record=args.record, duration_s=args.duration, view=not args.no_view, decision_log=args.decisions,
        foxglove=args.foxglove,
    )
    if args.no_view:
        print(json.dumps(snap, indent=1, default=str))
    return 0


def _record(args: argparse.Namespace, cfg: Config) -> int:
    args.record = args.out
    return _run(args, cfg)


def _budget_set(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.live.run import set_running_budget

    budget = set_running_budget(cfg.ray, args.mj_per_sample, args.power_w, off=args.off == "off")
    print(f"budget set: {budget}")
    return 0
