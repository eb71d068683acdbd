"""``exitflow export OUT_DIR`` and ``exitflow bundle verify DIR``: model bundles (docs/bundles.md).

``add_bundle_option`` gives run, record, replay, bench and demo their ``--bundle DIR``;
``with_bundle`` applies it to the loaded config.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from exitflow.pipeline.artifacts import DATASETS
from exitflow.pipeline.commands import command_line, dataset_arg
from exitflow.pipeline.config import Config

if TYPE_CHECKING:
    from exitflow.pipeline.bundles.manifest import BundleManifest


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    export = sub.add_parser("export", help="write the configured model as one self-contained bundle folder")
    export.add_argument("out_dir", metavar="OUT_DIR", help="the bundle folder to create")
    export.add_argument("--dataset", type=dataset_arg, default=None, metavar="NAME|DIR",
                        help=f"{', '.join(DATASETS)} or an imported data set folder (default: data.dataset)")
    export.add_argument("--no-baselines", action="store_true", help="leave the lf/image/audio baselines out")
    export.add_argument("--force", action="store_true", help="replace an existing bundle at OUT_DIR")
    export.set_defaults(func=_export)

    bundle = sub.add_parser("bundle", help="inspect model bundles")
    what = bundle.add_subparsers(dest="bundle_what", metavar="WHAT")
    verify = what.add_parser("verify", help="check a bundle's format version and every file's sha256")
    verify.add_argument("path", metavar="DIR", help="the bundle folder")
    verify.set_defaults(func=_verify, needs_config=False)
    bundle.set_defaults(func=None, group_parser=bundle)


def add_bundle_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", default=None, metavar="DIR",
                        help="load the model from this bundle (exitflow export) instead of train.checkpoint_dir")


def with_bundle(args: argparse.Namespace, cfg: Config) -> Config:
    """``cfg`` with ``--bundle DIR`` applied (unchanged without it); ``--set`` overrides stay on top.

    A command with ``--dataset`` gets the bundle's data set when none is given (``data.dataset``
    for a built-in one, the original folder for an imported one) and is refused a data set whose
    modalities differ from the bundle's.
    """
    if not getattr(args, "bundle", None):
        return cfg
    from exitflow.pipeline.bundles.load import bundle_config, check_dataset, default_dataset
    from exitflow.pipeline.bundles.manifest import read_manifest

    cfg = bundle_config(cfg, args.bundle, getattr(args, "overrides", ()))
    if hasattr(args, "dataset") and getattr(args, "recording", None) is None:
        manifest = read_manifest(args.bundle, verify=False)  # verified by bundle_config just now
        args.dataset = args.dataset or default_dataset(manifest)
        check_dataset(manifest, args.dataset)
    return cfg


def _export(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.bundles.export import export_bundle

    manifest = export_bundle(cfg, args.out_dir, args.dataset, baselines=not args.no_baselines, force=args.force,
                             command=command_line())
    print(describe(manifest))
    return 0


def _verify(args: argparse.Namespace, cfg: Config | None) -> int:
    from exitflow.pipeline.bundles.manifest import read_manifest

    print(describe(read_manifest(args.path)))
    return 0


def describe(manifest: BundleManifest) -> str:
    """Three lines: where, what model, how many verified files."""
    baselines = ", ".join(sorted(manifest.baselines)) or "none"
    return (f"bundle {manifest.path}: ok (format {manifest.format_version}, exitflow {manifest.exitflow_version}, "
            f"created {manifest.created})\n"
            f"  {manifest.dataset}: {manifest.family} encoders for {'+'.join(manifest.modalities)}, "
            f"{manifest.fusion['kind']} fusion, {len(manifest.classes)} classes, baselines: {baselines}\n"
            f"  {len(manifest.files)} files, sha256 verified")
