"""``exitflow data build`` (build and cache a data set), ``exitflow data import DIR`` (a user data set)
and ``exitflow data embed`` (write the slice)."""

from __future__ import annotations

import argparse
from pathlib import Path

from exitflow.pipeline.artifacts import DATASETS
from exitflow.pipeline.commands import fraction, positive_int
from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("data", help="build data sets or the embedded slice")
    what = parser.add_subparsers(dest="data_what", metavar="WHAT")
    build = what.add_parser("build", help="build (or find cached) avmnist / avmnist-t splits and print their digests")
    build.add_argument("--dataset", choices=DATASETS, default=None)
    build.set_defaults(func=_build)
    imp = what.add_parser("import", help="check a data set folder's manifest and build its cache (docs/own_data.md)")
    imp.add_argument("folder", metavar="DIR", help="folder with manifest.csv / .jsonl / .parquet and its files")
    imp.add_argument("--seed", type=int, default=0, help="seed of the group-disjoint splits (no split column)")
    imp.add_argument("--val-fraction", type=fraction, default=0.15, help="share of rows for val (default: %(default)s)")
    imp.add_argument("--test-fraction", type=fraction, default=0.15, help="share of rows for test (default: %(default)s)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=_import)
    mcap = what.add_parser("from-mcap", help="add a labelled recording's ranges to a data set folder (then import)")
    mcap.add_argument("recording", metavar="REC.mcap", help="a recording from `exitflow run --record`")
    mcap.add_argument("folder", metavar="DIR", help="data set folder: files and manifest.csv rows are added there")
    mcap.add_argument("--labels", default=None, help="CSV start_s,end_s,label[,split][,group] (default: REC.labels.csv)")
    mcap.set_defaults(func=_from_mcap)
    embed = what.add_parser("embed", help="write the small real slice shipped in the repo (developers)")
    embed.add_argument("--out", default=None, help="output folder (default: pipeline/embedded_data)")
    embed.add_argument("--images", type=positive_int, default=1000)
    embed.set_defaults(func=_embed)
    parser.set_defaults(func=None, group_parser=parser)


def _build(args: argparse.Namespace, cfg: Config) -> int:
    import json

    from exitflow.pipeline.data.avmnist import SPLITS, dataset_dir, load_split

    dataset = args.dataset or cfg.data.dataset
    folder = dataset_dir(cfg, dataset)
    available = json.loads((folder / "manifest.json").read_text())["splits"]
    for split in SPLITS:
        if split in available:
            s = load_split(cfg, split, dataset, progress=False)
            print(f"{dataset} {split}: {len(s)} samples, sha256 {s.digest()[:16]}")
    return 0


def _import(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.importer import ImportSettings, import_dataset
    from exitflow.pipeline.errors import ExitflowError

    if args.val_fraction + args.test_fraction >= 1:
        raise ExitflowError(f"--val-fraction + --test-fraction must be below 1, got "
                            f"{args.val_fraction} + {args.test_fraction}")
    settings = ImportSettings(seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction)
    info = import_dataset(Path(args.folder), settings, progress=not args.quiet)
    print(f"{info['name']}: {len(info['classes'])} classes, modalities {'+'.join(info['modalities'])}, "
          f"splits {info['splits_from']}")
    for split, n in info["counts"].items():
        present = ", ".join(f"{m} {k}" for m, k in info["present"][split].items())
        print(f"{split}: {n} samples ({present}), sha256 {info['digests'][split][:16]}")
    print(f"cache: {Path(args.folder) / 'cache'}; next: exitflow train cnn --dataset {args.folder}")
    return 0


def _from_mcap(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.mcap_import import extract_recording

    recording = Path(args.recording)
    labels = Path(args.labels) if args.labels else recording.with_suffix(".labels.csv")
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    result = extract_recording(recording, labels, folder)
    has = ", ".join(f"{m} {n}" for m, n in result["with"].items())
    print(f"{recording}: {result['rows']} labelled ranges -> {folder / 'manifest.csv'} (with {has})")
    if result["skipped"]:
        print("skipped while reading: " + ", ".join(f"{k}={v}" for k, v in sorted(result["skipped"].items())))
    print(f"next: exitflow data import {folder}")
    return 0


def _embed(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.embedded import make_embedded_slice
    from exitflow.pipeline.data.roots import EMBEDDED_DATA, data_root

    out = Path(args.out) if args.out else EMBEDDED_DATA
    sizes = make_embedded_slice(data_root(cfg), out, args.images)
    for name, size in sizes.items():
        print(f"{out / name}: {size / 1e6:.2f} MB")
    return 0
