"""``exitflow demo``: run the embedded default (``config.yaml``) and print its summary.

Today the demo replays the first ``replay.limit`` AV-MNIST test samples through
``replay.system``; with no ``../shared/data`` it uses the real slice embedded in the repo.
"""

from __future__ import annotations

import argparse
import json

from pipeline.config import Config, resolve_path


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("demo", help="run the embedded default configuration (make demo)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.commands.replay_cmd import print_summary
    from pipeline.data.roots import data_root, is_embedded
    from pipeline.replay import replay, write_atomic

    root = data_root(cfg)
    where = "the real slice embedded in the repo" if is_embedded(root) else str(root)
    r = cfg.replay
    print(f"exitflow demo: {cfg.data.dataset} {r.split} split (first {r.limit or 'all'} samples) "
          f"from {where}, system {r.system!r}")
    decisions = resolve_path(cfg, f"runs/demo-{r.system}.jsonl")
    summary = replay(cfg, r.system, cfg.data.dataset, r.split, r.limit, decisions)
    print_summary(summary)
    out = resolve_path(cfg, "runs/demo-summary.json")
    write_atomic(out, json.dumps(summary, indent=2) + "\n")
    print(f"per-sample decisions: {decisions}\nsummary: {out}")
    return 0
