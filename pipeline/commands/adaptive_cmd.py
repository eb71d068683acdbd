"""``exitflow train joint``, ``exitflow profile`` and ``exitflow bench``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from exitflow.pipeline.artifacts import DATASETS
from exitflow.pipeline.commands import command_line, dataset_arg, fraction, output_file, positive_int
from exitflow.pipeline.commands.bundle_cmd import add_bundle_option, with_bundle
from exitflow.pipeline.config import Config


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    joint = groups["train"].add_parser("joint", help="train the fusion exit on the trained encoders")
    joint.add_argument("--dataset", choices=DATASETS, default=None)
    joint.set_defaults(func=_joint)
    profile = sub.add_parser("profile", help="measure every exit's accuracy, exit probability and cost (val split)")
    profile.add_argument("--dataset", choices=DATASETS, default=None)
    profile.add_argument("--energy-samples", type=positive_int, default=100, help="samples timed at batch 1 per step")
    profile.set_defaults(func=_profile)
    bench = sub.add_parser("bench", help="every system side by side on the same samples")
    bench.add_argument("--dataset", type=dataset_arg, default=None, metavar="NAME|DIR",
                       help=f"{', '.join(DATASETS)} or an imported data set folder (default: data.dataset)")
    bench.add_argument("--split", choices=("val", "test", "test_id"), default="test")
    bench.add_argument("--limit", type=positive_int, default=None, help="first N samples (default: bench.limit)")
    bench.add_argument("--systems", default=None, help="comma list (default: all seven, plus exitflow_concat "
                       "when fusion.exit is transformer)")
    bench.add_argument("--json", dest="json_out", type=output_file, default=None, help="write the rows as a JSON list")
    bench.add_argument("--sweep", action="store_true", help="add a lambda sweep of exitflow and every static truncation")
    bench.add_argument("--plot", type=output_file, default=None, help="PNG of the accuracy-energy Pareto front (with --sweep)")
    bench.add_argument("--budget-fraction", type=fraction, default=None,
                       help="also run exitflow with budget.mj_per_sample = this fraction of full's engine mJ/sample")
    add_bundle_option(bench)
    bench.set_defaults(func=_bench)


def _joint(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.training.late_fusion import train_late_fusion

    meta = train_late_fusion(cfg, args.dataset or cfg.data.dataset, command=command_line())
    for subset, acc in meta["test_accuracy"].items():
        print(f"fusion over {subset}: val {meta['val_accuracy'][subset]:.4f}  test {acc:.4f}")
    print(f"fusion MACs/sample: {meta['macs_per_sample']:,}")
    if cfg.joint.epochs > 0:
        from exitflow.pipeline.training.joint import joint_finetune

        result = joint_finetune(cfg, args.dataset or cfg.data.dataset, command=command_line())
        for m, accs in result["per_exit_val_after"].items():
            before = result["per_exit_val_before"][m]
            print(f"joint {m}: val per exit " + "  ".join(f"{b:.3f}->{a:.3f}" for b, a in zip(before, accs, strict=True)))
        for k, acc in result["fusion_val_after"].items():
            print(f"joint fusion {k}: val {result['fusion_val_before'][k]:.4f} -> {acc:.4f}")
    return 0


def _profile(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.artifacts import profile_path
    from exitflow.pipeline.meters import metered
    from exitflow.pipeline.training.profile import make_profile, profile_summary

    dataset = args.dataset or cfg.data.dataset
    with metered(cfg) as meter:
        profile = make_profile(cfg, dataset, meter, args.energy_samples)
    print(profile_summary(profile))
    print(f"saved {profile_path(cfg, dataset)}")
    return 0


def _bench(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.data.imported import is_imported
    from exitflow.pipeline.errors import ExitflowError
    from exitflow.pipeline.evaluation.bench import (
        ALL_SYSTEMS,
        bench,
        bench_inputs,
        budget_run,
        default_systems,
        engine_mj,
        format_budget,
        format_summary,
        format_table,
        json_rows,
    )
    from exitflow.pipeline.evaluation.replay import write_atomic
    from exitflow.pipeline.evaluation.sweep import format_sweep, plot_pareto, run_sweep
    from exitflow.pipeline.meters import metered

    cfg = with_bundle(args, cfg)
    dataset = args.dataset or cfg.data.dataset
    systems = tuple(s.strip() for s in args.systems.split(",")) if args.systems else default_systems(cfg, dataset)
    allowed = default_systems(cfg, dataset) if is_imported(dataset) else ALL_SYSTEMS
    unknown = [s for s in systems if s not in allowed]
    if unknown:
        raise ExitflowError(f"unknown system(s) {unknown}; choose from {', '.join(allowed)}")
    if args.budget_fraction is not None and not 0 < args.budget_fraction <= 2:
        raise ExitflowError(f"--budget-fraction must be in (0, 2], got {args.budget_fraction}")
    limit = args.limit if args.limit is not None else cfg.bench.limit
    parts, samples = bench_inputs(cfg, dataset, args.split, limit)
    with metered(cfg) as meter:
        rows = bench(parts, samples, meter, systems)
        budget_row = None
        if args.budget_fraction is not None:
            full_mj = engine_mj(parts, samples, meter)
            budget_row = budget_run(parts, samples, meter, args.budget_fraction * full_mj)
            budget_row["full_engine_mj_per_sample"] = full_mj
            rows.append(budget_row)
        sweep = run_sweep(parts, samples, meter, cfg.bench.lambdas, cfg.bench.thresholds) if args.sweep else []
    print(format_table(rows))
    print(format_summary(rows))
    if budget_row is not None:
        print(format_budget(budget_row, args.budget_fraction))
    out_rows = json_rows(rows)
    if args.json_out:
        payload = out_rows if not sweep else out_rows + sweep
        write_atomic(Path(args.json_out), json.dumps(payload, indent=2) + "\n")
        print(f"rows: {args.json_out}")
    if sweep:
        print(format_sweep(sweep))
        if args.plot:
            plot_pareto(sweep, out_rows, Path(args.plot))
            print(f"plot: {args.plot}")
    return 0






