"""``exitflow demo``: run the embedded default (``config.yaml``) and print the side-by-side table.

The demo benches every system (``full``, ``lf``, ``image``, ``audio``, ``static``, ``rexit``,
``exitflow``) on the first ``bench.limit`` test samples of ``data.dataset``; with no
``../shared/data`` it uses the real slice embedded in the repo.
"""

from __future__ import annotations

import argparse
import json

from pipeline.config import Config, resolve_path


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("demo", help="run the embedded default configuration (make demo)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from pipeline.adaptive_systems import AdaptiveParts
    from pipeline.bench import BENCH_SYSTEMS, bench, format_table
    from pipeline.data.avmnist import load_split
    from pipeline.data.roots import data_root, is_embedded
    from pipeline.meters import open_meter
    from pipeline.replay import split_samples, write_atomic

    root = data_root(cfg)
    where = "the real slice embedded in the repo" if is_embedded(root) else str(root)
    dataset, limit = cfg.data.dataset, cfg.bench.limit
    print(f"exitflow demo: {dataset} test split (first {limit or 'all'} samples) from {where}")
    parts = AdaptiveParts(cfg, dataset)
    samples = list(split_samples(load_split(cfg, "test", dataset), limit))
    with open_meter(cfg) as meter:
        print(f"power meter: {meter.describe().splitlines()[0]}")
        rows = bench(parts, samples, meter, BENCH_SYSTEMS)
    print(format_table(rows))
    out = resolve_path(cfg, "runs/demo-bench.json")
    write_atomic(out, json.dumps([{k: v for k, v in r.items() if k != "decisions"} for r in rows], indent=2) + "\n")
    print(f"rows: {out}")
    return 0
