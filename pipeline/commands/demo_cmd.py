"""``exitflow demo``: run the embedded default (``config.yaml``) and print the side-by-side table.

The demo benches every system (``full``, ``lf``, ``image``, ``audio``, ``static``, ``rexit``,
``exitflow``) on the first ``bench.limit`` test samples of ``data.dataset``; with no
``../shared/data`` it uses the real slice embedded in the repo.
"""

from __future__ import annotations

import argparse
import json

from exitflow.pipeline.config import Config, output_path


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("demo", help="run the embedded default configuration (make demo)")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.roots import data_root, is_embedded
    from exitflow.pipeline.evaluation.bench import (
        bench,
        bench_inputs,
        default_systems,
        format_summary,
        format_table,
        json_rows,
    )
    from exitflow.pipeline.evaluation.replay import write_atomic
    from exitflow.pipeline.meters import metered

    root = data_root(cfg)
    where = "the real slice embedded in the repo" if is_embedded(root) else str(root)
    dataset, limit = cfg.data.dataset, cfg.bench.limit
    print(f"exitflow demo: {dataset} test split (first {limit or 'all'} samples) from {where}")
    parts, samples = bench_inputs(cfg, dataset, "test", limit)
    with metered(cfg) as meter:
        print(f"power meter: {meter.describe().splitlines()[0]}")
        rows = bench(parts, samples, meter, default_systems(cfg))
    print(format_table(rows))
    print(format_summary(rows))
    out = output_path(cfg, "runs/demo-bench.json")
    write_atomic(out, json.dumps(json_rows(rows), indent=2) + "\n")
    print(f"rows: {out}")
    return 0
