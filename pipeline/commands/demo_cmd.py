"""``exitflow demo``: run the embedded default (``config.yaml``) and print the side-by-side table.

The demo benches every system (``full``, ``lf``, ``image``, ``audio``, ``static``, ``rexit``,
``exitflow``) on the first ``bench.limit`` test samples of ``data.dataset``; with no
``../shared/data`` it uses the real slice embedded in the repo. The model comes from the bundle
``demo.bundle`` names (the packaged config: ``bundles/avmnist``, shipped in the repo and the
wheel) or ``--bundle DIR``; with neither, from the checkpoints under ``train.checkpoint_dir``.
"""

from __future__ import annotations

import argparse
import json

from exitflow.pipeline.commands.bundle_cmd import add_bundle_option
from exitflow.pipeline.config import Config, output_path, resolve_path


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("demo", help="run the embedded default configuration (make demo)")
    add_bundle_option(parser)
    parser.set_defaults(func=_run)


def demo_config(args: argparse.Namespace, cfg: Config) -> Config:
    """``cfg`` with the demo's bundle (``--bundle``, else ``demo.bundle``) applied, if any."""
    from exitflow.pipeline.bundles.load import bundle_config

    folder = args.bundle or (resolve_path(cfg, cfg.demo.bundle) if cfg.demo.bundle else None)
    return bundle_config(cfg, folder, getattr(args, "overrides", ())) if folder else cfg


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

    cfg = demo_config(args, cfg)
    root = data_root(cfg)
    where = "the real slice embedded in the repo" if is_embedded(root) else str(root)
    dataset, limit = cfg.data.dataset, cfg.bench.limit
    print(f"exitflow demo: {dataset} test split (first {limit or 'all'} samples) from {where}")
    print(f"model: {'bundle ' + cfg.engine.bundle if cfg.engine.bundle else 'checkpoints in ' + cfg.train.checkpoint_dir}")
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
