"""``exitflow replay``: a data set split (``--dataset``) or a recording (``FILE.mcap``) through a system."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from exitflow.pipeline.artifacts import DATASETS, SPLITS
from exitflow.pipeline.commands import dataset_arg
from exitflow.pipeline.commands.bundle_cmd import add_bundle_option, with_bundle
from exitflow.pipeline.config import Config, output_path, resolve_path

if TYPE_CHECKING:
    from collections.abc import Callable

    from exitflow.pipeline.live.runtime.playback import ReplaySummary
    from exitflow.pipeline.messages import Sample


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser(
        "replay", help="replay a data set split (or a FILE.mcap recording) through a system and summarise"
    )
    parser.add_argument("recording", nargs="?", default=None, help="an MCAP recording from `exitflow run --record`")
    parser.add_argument("--realtime", action="store_true", help="recording: keep event-time spacing (default --fast)")
    parser.add_argument("--fast", action="store_true", help="recording: as fast as possible (default)")
    parser.add_argument("--rate", type=float, default=1.0, help="recording: speed factor with --realtime")
    parser.add_argument("--start", type=float, default=0.0, help="recording: skip the first S seconds")
    parser.add_argument("--end", type=float, default=None, help="recording: stop S seconds after its start")
    parser.add_argument("--topics", default=None, metavar="T1,T2",
                        help="recording: only these sensor topics, e.g. /sensor/camera0,/sensor/mic0")
    parser.add_argument("--dataset", type=dataset_arg, default=None, metavar="NAME|DIR",
                        help=f"{', '.join(DATASETS)} or an imported data set folder (default: data.dataset)")
    parser.add_argument("--split", choices=SPLITS, default=None, help="default: replay.split")
    parser.add_argument("--system", default=None, help="default: replay.system (lf, image, audio, ...); "
                        "an imported set: exitflow")
    parser.add_argument("--limit", type=int, default=None, help="first N samples (default: replay.limit)")
    parser.add_argument("--all", action="store_true", help="replay the whole split (ignore replay.limit)")
    parser.add_argument("--decisions", default=None, help="JSONL of per-sample decisions (default: runs/...)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the summary JSON here")
    add_bundle_option(parser)
    parser.set_defaults(func=_run)


def print_summary(summary: dict) -> None:
    acc = summary["accuracy"]
    print(
        f"{summary['system']}: n={summary['n']}  accuracy={acc:.4f}  "
        f"MACs/sample={summary['macs_per_sample']:,.0f}  ms/sample={summary['ms_per_sample']:.3f}"
        if acc is not None
        else f"{summary['system']}: n={summary['n']} (no labels)"
    )


def check_output_path(path: Path, flag: str) -> None:
    """Refuse an output path that is a folder or lies under a file, before any work is done.

    Raises:
        ExitflowError: naming the option and the offending path.
    """
    from exitflow.pipeline.errors import ExitflowError

    if path.is_dir():
        raise ExitflowError(f"{flag} {path} is a folder; give a file path")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ExitflowError(f"{flag} {path}: {parent} is a file, not a folder")


def check_options(args: argparse.Namespace) -> None:
    """Every replay option checked before the first sample.

    Raises:
        ExitflowError: one line naming the option, the value and what is expected.
    """
    from exitflow.pipeline.errors import ExitflowError

    if not (math.isfinite(args.rate) and args.rate > 0):
        raise ExitflowError(f"--rate must be a finite number > 0 (1 = real time), got {args.rate}")
    if not (math.isfinite(args.start) and args.start >= 0):
        raise ExitflowError(f"--start must be a finite number of seconds >= 0, got {args.start}")
    if args.end is not None and not (math.isfinite(args.end) and args.end > args.start):
        raise ExitflowError(f"--end must be a number of seconds > --start ({args.start}), got {args.end}")
    if args.realtime and args.fast:
        raise ExitflowError("choose one of --realtime and --fast")
    if args.recording is None and (args.end is not None or args.topics):
        raise ExitflowError("--end and --topics apply to a recording (exitflow replay FILE.mcap ...)")
    if args.recording is not None:
        rec = Path(args.recording)
        if not rec.is_file():
            raise ExitflowError(f"recording {rec} {'is a folder' if rec.is_dir() else 'does not exist'}; "
                                "give an .mcap file from `exitflow run --record`")
    for flag, value in (("--decisions", args.decisions), ("--json", args.json_out)):
        if value:
            check_output_path(Path(value), flag)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.errors import ExitflowError
    from exitflow.pipeline.evaluation.replay import replay, write_atomic

    check_options(args)
    cfg = with_bundle(args, cfg)
    if args.recording is not None:
        return _replay_recording(args, cfg)
    from exitflow.pipeline.data.imported import is_imported

    dataset = args.dataset or cfg.data.dataset
    imported = is_imported(dataset)
    system = args.system or ("exitflow" if imported else cfg.replay.system)
    split = args.split or cfg.replay.split
    limit = None if args.all else (args.limit if args.limit is not None else cfg.replay.limit)
    if limit is not None and limit < 1:
        raise ExitflowError(f"--limit must be at least 1, got {limit}")
    if args.decisions:
        decisions = Path(args.decisions)
    elif cfg.replay.decisions_path:
        decisions = resolve_path(cfg, cfg.replay.decisions_path)
    else:
        decisions = output_path(cfg, f"runs/replay-{system}-{Path(dataset).name if imported else dataset}-{split}.jsonl")
    summary = replay(cfg, system, dataset, split, limit, decisions)
    print_summary(summary)
    print(f"decisions: {decisions}")
    if args.json_out:
        write_atomic(Path(args.json_out), json.dumps(summary, indent=2) + "\n")
        print(f"summary: {args.json_out}")
    return 0


def _replay_recording(args: argparse.Namespace, cfg: Config) -> int:
    """Replay an MCAP recording in event time through ``--system`` (default: the stream's engine).

    Exit code 0, or 3 when the recording was damaged (the summary says what was lost).
    """
    from exitflow.pipeline.live.core.sync import make_synchronizer
    from exitflow.pipeline.live.recording.reader import recorded_modalities
    from exitflow.pipeline.live.runtime.playback import replay_stream
    from exitflow.pipeline.live.runtime.workers import resolve_engine_factory

    path = Path(args.recording)
    if not args.decisions:
        check_output_path(path.with_suffix(".replay.jsonl"), "--decisions")
    topics = [t.strip() for t in args.topics.split(",") if t.strip()] if args.topics else None
    spec = f"system:{args.system}" if args.system else cfg.stream.engine
    modalities = recorded_modalities(path, topics)
    engine = resolve_engine_factory(spec)(cfg)
    sync = make_synchronizer(cfg.stream, modalities)
    decisions_path = Path(args.decisions) if args.decisions else path.with_suffix(".replay.jsonl")
    summary = replay_stream(
        path, engine, sync, mode="realtime" if args.realtime else "fast", rate=args.rate, start_s=args.start,
        end_s=args.end, topics=topics, decisions_path=decisions_path, preprocess=_preprocess(cfg),
    )
    acc = summary.accuracy
    print(f"replayed {path}: {summary.messages} messages -> {summary.decisions} decisions "
          f"({summary.missing} with a modality missing, {summary.failed} failed)"
          + (f", accuracy {acc:.4f}" if acc is not None else "") + f" in {summary.wall_s:.1f} s")
    print(f"decisions: {decisions_path}")
    if args.json_out:
        from exitflow.pipeline.evaluation.replay import write_atomic

        body = {"messages": summary.messages, "decisions": summary.decisions, "failed": summary.failed,
                "missing": summary.missing, "accuracy": acc, "skipped_records": summary.skipped_records,
                "read": summary.read.to_dict()}
        write_atomic(Path(args.json_out), json.dumps(body, indent=2) + "\n")
    if not summary.lost_data:
        return 0
    print(damage_line(summary), file=sys.stderr)
    return 3


def _preprocess(cfg: Config) -> Callable[[Sample], Sample]:
    """Raw recorded payloads -> model inputs, with the bundle's preprocessing when ``--bundle`` is given."""
    import functools

    from exitflow.pipeline.bundles.load import preprocessing_of
    from exitflow.pipeline.live.runtime.preprocess import preprocess_sample

    return functools.partial(preprocess_sample, preprocessing=preprocessing_of(cfg))


def damage_line(summary: ReplaySummary) -> str:
    """One line on what a damaged or incomplete recording lost, and what was kept."""
    read = summary.read
    lost = read.messages_lost
    ranges = [(a, b) for a, b in read.lost_time_ranges_ns() if a is not None and b is not None]
    span_s = sum(max(0, b - a) for a, b in ranges) / 1e9
    parts = []
    if read.incomplete:
        parts.append("the file is incomplete (no footer or summary: cut short or still being written); "
                     "what follows its last whole chunk is lost")
    if read.chunks_damaged or not read.incomplete:
        parts.append(f"{len(read.chunks_damaged)} damaged chunk(s) skipped")
        parts.append("messages lost: unknown" if lost is None else f"{lost} message(s) lost")
    if ranges:
        parts.append(f"{span_s:.2f} s of recording lost")
    if read.truncated:
        parts.append("the file is cut short inside a record")
    if summary.skipped_records:
        parts.append("undecodable records: " + ", ".join(f"{k}={v}" for k, v in sorted(summary.skipped_records.items())))
    parts.append(read.kept_text())
    return "exitflow: warning: the recording is damaged: " + "; ".join(parts) + " (every intact chunk was replayed)"
