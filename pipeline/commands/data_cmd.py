"""``exitflow data build`` (build and cache a data set) and ``exitflow data embed`` (write the slice)."""

from __future__ import annotations

import argparse
from pathlib import Path

from exitflow.pipeline.artifacts import DATASETS
from exitflow.pipeline.commands import positive_int
from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    parser = sub.add_parser("data", help="build data sets or the embedded slice")
    what = parser.add_subparsers(dest="data_what", metavar="WHAT")
    build = what.add_parser("build", help="build (or find cached) avmnist / avmnist-t splits and print their digests")
    build.add_argument("--dataset", choices=DATASETS, default=None)
    build.set_defaults(func=_build)
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


def _embed(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.embedded import make_embedded_slice
    from exitflow.pipeline.data.roots import EMBEDDED_DATA, data_root

    out = Path(args.out) if args.out else EMBEDDED_DATA
    sizes = make_embedded_slice(data_root(cfg), out, args.images)
    for name, size in sizes.items():
        print(f"{out / name}: {size / 1e6:.2f} MB")
    return 0
