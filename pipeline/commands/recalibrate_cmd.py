"""``exitflow recalibrate``: online self-recalibration over a split as a stream; ``--save`` keeps the result.

Runs ``exitflow`` with the shadow full path on (``recalibration`` section, docs/adaptive.md) over the
split in order, prints the target, the measured disagreement, the shadow share and the thresholds it
ends with, and with ``--save`` writes those thresholds into the exit profile it loaded (a bundle's
``profile.json`` with ``--bundle``, its manifest updated).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from exitflow.pipeline.artifacts import DATASETS, SPLITS
from exitflow.pipeline.commands import dataset_arg, positive_int
from exitflow.pipeline.commands.bundle_cmd import add_bundle_option, with_bundle
from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("recalibrate", help="adapt the exit thresholds online (no labels) over a split "
                            "streamed in order; --save writes them into the profile or bundle")
    parser.add_argument("--dataset", type=dataset_arg, default=None, metavar="NAME|DIR",
                        help=f"{', '.join(DATASETS)} or an imported data set folder (default: data.dataset)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="the stream (default: %(default)s)")
    parser.add_argument("--limit", type=positive_int, default=None, help="first N samples (default: all)")
    parser.add_argument("--save", action="store_true",
                        help="write the adapted thresholds into the exit profile (the bundle's with --bundle)")
    parser.add_argument("--json", dest="json_out", default=None, help="write the summary JSON here")
    add_bundle_option(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.avmnist import load_split
    from exitflow.pipeline.evaluation.replay import split_samples, write_atomic
    from exitflow.pipeline.inference.adaptive_systems import AdaptiveParts
    from exitflow.pipeline.inference.shadow import recalibrate_stream, with_recalibration
    from exitflow.pipeline.meters import metered
    from exitflow.pipeline.training.calibrate import save_thresholds

    cfg = with_bundle(args, cfg)
    dataset = args.dataset or cfg.data.dataset
    cfg = dataclasses.replace(cfg, recalibration=dataclasses.replace(cfg.recalibration, enabled=True))
    parts = AdaptiveParts(cfg, dataset)
    samples = split_samples(load_split(cfg, args.split, dataset, progress=False), args.limit)
    with metered(cfg) as meter:
        system = with_recalibration(cfg, parts, meter)
        summary = recalibrate_stream(system, samples)
    status = summary["status"]
    acc = "-" if summary["accuracy"] is None else f"{summary['accuracy']:.4f}"
    print(f"{dataset}/{args.split}: n={summary['n']} accuracy={acc} MACs/sample={summary['macs_per_sample']:,.0f} "
          f"(shadow {summary['shadow_macs_per_sample']:,.0f}) ms/sample={summary['ms_per_sample']:.3f}")
    measured = status["measured_disagreement"]
    print(f"shadowed {summary['shadow_share']:.3f} of samples; disagreement with the full path "
          f"{'-' if measured is None else f'{measured:.4f}'} (target {status['target_disagreement']}); "
          f"shift {status['shift']:+.3f}")
    print(f"thresholds: calibrated {status['calibrated_thresholds']} -> now "
          f"{ {k: round(v, 4) for k, v in status['thresholds'].items()} }")
    if args.json_out:
        write_atomic(Path(args.json_out), json.dumps(summary, indent=1) + "\n")
    if args.save:
        print(f"saved {save_thresholds(cfg, dataset, status['thresholds'])}")
    return 0
