"""Run the ``exitflow`` CLI on hostile configs, ``--set`` values and damaged checkpoints; count failures.

Usage::

    .venv/bin/python benchmarks/cli_hostile.py [--jobs 2] [--timeout 120] [--group G] [--only SUBSTRING] [--json OUT]

Every case is one CLI process (``python -m exitflow.pipeline.cli``) on copies under a temporary
folder: config files written there, and a copy of ``checkpoints/`` that ``train.checkpoint_dir``
(or ``--checkpoint``) points at, damaged one way per case. Each outcome is one of

- ``rejected``: non-zero exit, ``exitflow:`` error line(s), no traceback, the expected words
  (usually the dotted key or the file) in the error;
- ``unclear``: rejected without a traceback, but the expected words are missing;
- ``traceback``: ``Traceback (most recent call last)`` in stderr;
- ``hang``: still running after ``--timeout`` seconds (killed);
- ``accepted``: exit 0 on a bad value.

The live runtime (``run``, ``record``, ``budget``) is not exercised here. Printed: one row per
case, then the counts. A hang is a timeout, so size ``--timeout`` to the machine: on a shared
2-core box at load average ~21 the CLI's imports alone took 278 s (the checks themselves take
milliseconds), and every case timed out at 150 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from exitflow.encoders.checkpoint import CHECKSUM_KEY, file_sha256

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "exitflow.pipeline.cli"]


@dataclass
class Case:
    """One CLI invocation that must be refused with a clear one-line error."""

    name: str
    group: str
    args: list[str]
    expect: list[str] = field(default_factory=list)  # words the error must contain
    prepare: str = ""  # name of a damage applied to a fresh checkpoint copy


@dataclass
class Outcome:
    name: str
    group: str
    verdict: str
    seconds: float
    returncode: int | None
    error: str


# ---------------------------------------------------------------- hostile config files
BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{c}: &{c} [{','.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
)

CONFIG_FILES: dict[str, tuple[bytes, list[str]]] = {
    "alias_bomb": (BOMB.encode(), ["aliases"]),
    "deep_flow_5000": (("data: " + "[" * 5000 + "]" * 5000).encode(), ["nested deeper"]),
    "deep_block_200": (
        ("x:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200))).encode(),
        ["nested deeper"],
    ),
    "recursive_alias": (b"bench:\n  lambdas: &a [1, *a]\n", ["recursive"]),
    "latin1": ("data:\n  root: caf\xe9\n".encode("latin-1"), ["UTF-8"]),
    "utf16": ("data:\n  seed: 1\n".encode("utf-16"), ["UTF-8"]),
    "two_mib": (b"# " + b"x" * (2 << 20), ["larger than"]),
    "huge_int_literal": (b"data:\n  seed: " + b"9" * 5000 + b"\n", ["too long"]),
    "python_tag": (b"data: !!python/object/apply:os.system ['echo hacked']\n", ["not valid YAML"]),
    "list_root": (b"- 1\n- 2\n", ["mapping"]),
    "scalar_root": (b"hello\n", ["mapping"]),
    "nul_bytes": (b"data:\n  root: a\x00b\n", ["not valid YAML"]),
    "binary_garbage": (bytes(range(256)) * 4, ["UTF-8"]),
    "tabs": (b"data:\n\tseed: 1\n", ["not valid YAML"]),
    "unknown_section": (b"dataa:\n  seed: 1\n", ["dataa"]),
    "nan_in_file": (b"train:\n  lr: .nan\n", ["train.lr"]),
    "inf_unbounded_field": (b"stream:\n  slop_ms: .inf\n", ["stream.slop_ms"]),
    "policy_in_file": (b"stream:\n  policies: {image: fuzzy}\n", ["stream.policies.image"]),
    "threads_in_file": (b"engine:\n  num_threads: 100000000\n", ["engine.num_threads"]),
    "section_is_list": (b"train: [1, 2]\n", ["train"]),
    "unhashable_key": (b"data:\n  ? [1, 2]\n  : 3\n", ["not valid YAML"]),
}

# ---------------------------------------------------------------- hostile --set values
SETS: dict[str, tuple[str, list[str]]] = {
    "lr_nan": ("train.lr=.nan", ["train.lr"]),
    "lr_inf": ("train.lr=.inf", ["train.lr"]),
    "slop_inf": ("stream.slop_ms=.inf", ["stream.slop_ms"]),
    "snr_neg_inf": ("data.audio_snr_db=-.inf", ["data.audio_snr_db"]),
    "lam_nan": ("scheduler.lam=.nan", ["scheduler.lam"]),
    "budget_nan": ("budget.mj_per_sample=.nan", ["budget.mj_per_sample"]),
    "sample_hz_overflow": ("power.sample_hz=1.0e+999", ["power.sample_hz"]),
    "exit_threshold_nan": ("fusion.exit_thresholds={image: .nan}", ["fusion.exit_thresholds.image"]),
    "lambdas_inf": ("bench.lambdas=[1.0, .inf]", ["bench.lambdas[1]"]),
    "sched_thresholds_nan": ("scheduler.thresholds={image: .nan}", ["scheduler.thresholds.image"]),
    "duration_inf": ("stream.duration_s=.inf", ["stream.duration_s"]),
    "policy_value": ("stream.policies={image: fuzzy}", ["stream.policies.image"]),
    "policy_key": ("stream.policies={smell: exact}", ["stream.policies.smell"]),
    "policy_not_map": ("stream.policies=exact", ["stream.policies"]),
    "trigger": ("stream.trigger=video", ["stream.trigger"]),
    "dataset": ("data.dataset=cifar", ["data.dataset"]),
    "meter": ("power.meter=magic", ["power.meter"]),
    "exit_rule_list": ("scheduler.exit_rule=[max_prob]", ["scheduler.exit_rule"]),
    "engine_threads": ("engine.num_threads=100000000", ["engine.num_threads"]),
    "train_threads": ("train.num_threads=5000", ["train.num_threads"]),
    "threads_negative": ("train.num_threads=-1", ["train.num_threads"]),
    "batch_huge": ("train.batch_size=1000000000000", ["train.batch_size"]),
    "ray_cpus": ("ray.num_cpus=1000000000", ["ray.num_cpus"]),
    "seed_2e30": ("data.seed=1000000000000000000000000000000", ["data.seed"]),
    "seed_5000_digits": ("data.seed=" + "9" * 5000, ["data.seed"]),
    "hidden_huge": ("encoder.hidden_size=10000000", ["encoder.hidden_size"]),
    "chunk_huge": ("stream.record_chunk_kib=1000000000000", ["stream.record_chunk_kib"]),
    "epochs_huge": ("train.epochs=1000000000", ["train.epochs"]),
    "limit_word": ("replay.limit=many", ["replay.limit"]),
    "lr_list": ("train.lr=[1]", ["train.lr"]),
    "root_map": ("data.root={a: 1}", ["data.root"]),
    "device_null": ("engine.device=null", ["engine.device"]),
    "root_nul": ('data.root="a\\0b"', ["data.root"]),
    "root_10k": ("data.root=" + "x" * 10000, ["data.root"]),
    "exit_layers_zero": ("encoder.text_exit_layers=[0, 2]", ["encoder.text_exit_layers[0]"]),
    "split_bool": ("replay.split=true", ["replay.split"]),
    "unknown_key": ("x.y.z=1", ["unknown key"]),
    "empty_key": ("=1", ["KEY=VALUE"]),
    "no_equals": ("replay.limit", ["KEY=VALUE"]),
    "deep_key": (".".join(["a"] * 500) + "=1", ["at most 64"]),
    "key_into_scalar": ("data.seed.extra=1", ["data.seed"]),
    "long_key": ("k" * 100000 + "=1", ["unknown key"]),
    "alias_bomb_value": ("bench.lambdas=" + BOMB.replace("\n", ", "), ["bench.lambdas"]),
    "deep_value": ("bench.lambdas=" + "[" * 3000 + "]" * 3000, ["bench.lambdas"]),
    "python_tag_value": ("data.root=!!python/object/apply:os.system ['true']", ["tags are not allowed"]),
}


def path_sets(tmp: Path) -> dict[str, tuple[str, list[str]]]:
    blocker = tmp / "plain.txt"
    blocker.write_text("x")
    return {
        "decisions_under_file": (f"replay.decisions_path={blocker}/d.jsonl", ["replay.decisions_path"]),
        "decisions_is_dir": (f"replay.decisions_path={tmp}", ["replay.decisions_path"]),
        "record_is_dir": (f"stream.record={tmp}", ["stream.record"]),
        "checkpoint_dir_is_file": (f"train.checkpoint_dir={blocker}", ["train.checkpoint_dir"]),
        "cache_dir_is_file": (f"data.cache_dir={blocker}", ["data.cache_dir"]),
        "run_dir_under_file": (f"encoder.run_dir={blocker}/runs", ["encoder.run_dir"]),
    }


# ---------------------------------------------------------------- damaged checkpoints
def _rewrite_weights(path: Path, fn) -> None:
    """Rewrite a safetensors file through ``fn(state)`` and re-record its checksum (so only ``fn`` shows)."""
    state = fn(load_file(str(path)))
    save_file(state, str(path))
    meta_path = path.parent / "config.json"
    meta = json.loads(meta_path.read_text())
    meta[CHECKSUM_KEY] = {path.name: file_sha256(path)}
    meta_path.write_text(json.dumps(meta, indent=2))


def _nan_first(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    key = next(k for k, v in state.items() if v.is_floating_point())
    return {**state, key: torch.full_like(state[key], float("nan"))}


def _edit_meta(folder: Path, fn) -> None:
    meta_path = folder / "config.json"
    meta = json.loads(meta_path.read_text())
    fn(meta)
    meta_path.write_text(json.dumps(meta, indent=2))


def damage(ck: Path, kind: str) -> None:
    """Apply damage ``kind`` to the checkpoint copy ``ck`` (a copy of checkpoints/)."""
    lf, img = ck / "baseline_lf_avmnist", ck / "image_avmnist"
    target = img if kind.startswith("enc_") else lf
    weights, meta = target / "model.safetensors", target / "config.json"
    if kind.endswith("truncated"):
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif kind.endswith("header_only"):
        weights.write_bytes(weights.read_bytes()[:6])
    elif kind.endswith("empty_weights"):
        weights.write_bytes(b"")
    elif kind.endswith("flipped_byte"):
        raw = bytearray(weights.read_bytes())
        raw[-3] ^= 0x40
        weights.write_bytes(bytes(raw))
    elif kind.endswith("nan_weights"):
        _rewrite_weights(weights, _nan_first)
    elif kind.endswith("inf_weights"):
        _rewrite_weights(
            weights, lambda s: {k: (v * float("inf") if v.is_floating_point() else v) for k, v in s.items()}
        )
    elif kind.endswith("wrong_shape_weights"):
        _rewrite_weights(
            weights,
            lambda s: {
                k: (torch.zeros(*[d + 1 for d in v.shape]) if v.is_floating_point() else v)
                for k, v in s.items()
            },
        )
    elif kind.endswith("missing_weights"):
        weights.unlink()
    elif kind.endswith("missing_meta"):
        meta.unlink()
    elif kind.endswith("meta_not_json"):
        meta.write_text("{not json")
    elif kind.endswith("meta_list"):
        meta.write_text("[1, 2, 3]")
    elif kind.endswith("meta_bad_checksum"):
        _edit_meta(target, lambda m: m.update(weights_sha256={"model.safetensors": 5}))
    elif kind == "lf_arch_wrong_type":
        _edit_meta(target, lambda m: m["arch"].update(hidden="wide"))
    elif kind == "lf_arch_huge":
        _edit_meta(target, lambda m: m["arch"].update(hidden=10**9))
    elif kind == "lf_arch_extra_key":
        _edit_meta(target, lambda m: m["arch"].update(bogus=1))
    elif kind == "enc_config_hidden_changed":
        _edit_meta(target, lambda m: m["encoder_config"].update(hidden_size=32))
    elif kind == "enc_config_hidden_huge":
        _edit_meta(target, lambda m: m["encoder_config"].update(hidden_size=10**9))
    elif kind == "enc_config_kind":
        _edit_meta(target, lambda m: m.update(kind="resnet"))
    elif kind == "enc_config_exit_layers":
        _edit_meta(target, lambda m: m.update(exit_layers="all"))
    else:
        raise ValueError(f"unknown damage {kind!r}")


CHECKPOINT_DAMAGE = [
    "lf_truncated", "lf_header_only", "lf_empty_weights", "lf_flipped_byte", "lf_nan_weights", "lf_inf_weights",
    "lf_wrong_shape_weights", "lf_missing_weights", "lf_missing_meta", "lf_meta_not_json", "lf_meta_list",
    "lf_meta_bad_checksum", "lf_arch_wrong_type", "lf_arch_huge", "lf_arch_extra_key",
    "enc_truncated", "enc_flipped_byte", "enc_nan_weights", "enc_wrong_shape_weights", "enc_meta_not_json",
    "enc_meta_list", "enc_config_hidden_changed", "enc_config_hidden_huge", "enc_config_kind",
    "enc_config_exit_layers", "enc_missing_weights",
]  # fmt: skip


def build_cases(tmp: Path) -> list[Case]:
    cases = []
    for name, (data, expect) in CONFIG_FILES.items():
        path = tmp / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(Case(name, "config-file", ["--config", str(path), "config", "show"], expect))
    cases.append(
        Case("config_is_dir", "config-file", ["--config", str(tmp), "config", "show"], ["directory"])
    )
    cases.append(
        Case(
            "config_missing",
            "config-file",
            ["--config", str(tmp / "nope.yaml"), "config", "show"],
            ["not found"],
        )
    )
    cases.append(
        Case("config_dev_zero", "config-file", ["--config", "/dev/zero", "config", "show"], ["larger than"])
    )
    for name, (setting, expect) in {**SETS, **path_sets(tmp)}.items():
        cases.append(Case(name, "--set", ["--set", setting, "config", "show"], expect))
    for kind in CHECKPOINT_DAMAGE:
        ck = tmp / "ck" / kind
        if kind.startswith("enc_"):
            args = [
                "eval",
                "encoder",
                "--modality",
                "image",
                "--checkpoint",
                str(ck / "image_avmnist"),
                "--limit",
                "8",
            ]
            expect = ["image_avmnist"]
        else:
            args = [
                "--set", f"train.checkpoint_dir={ck}", "replay", "--system", "lf", "--limit", "3",
                "--decisions", str(tmp / f"{kind}.jsonl"),
            ]  # fmt: skip
            expect = ["baseline_lf_avmnist"]
        cases.append(Case(kind, "checkpoint", args, expect, prepare=kind))
    return cases


def prepare_checkpoints(tmp: Path, cases: list[Case]) -> None:
    for case in cases:
        if case.prepare:
            ck = tmp / "ck" / case.prepare
            ck.mkdir(parents=True)
            for name in ("baseline_lf_avmnist", "image_avmnist"):
                shutil.copytree(REPO / "checkpoints" / name, ck / name)
            damage(ck, case.prepare)


def run_case(case: Case, timeout_s: float, env: dict[str, str]) -> Outcome:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            CLI + case.args, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=REPO,
            errors="replace",
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Outcome(case.name, case.group, "hang", time.perf_counter() - t0, None, "")
    seconds = time.perf_counter() - t0
    err = proc.stderr
    lines = [ln for ln in err.splitlines() if ln.startswith("exitflow:") or ln.startswith("  ")]
    summary = " | ".join(ln.strip() for ln in lines)[:300]
    if "Traceback (most recent call last)" in err:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        return Outcome(case.name, case.group, "traceback", seconds, proc.returncode, last[:300])
    if proc.returncode == 0:
        return Outcome(case.name, case.group, "accepted", seconds, 0, proc.stdout.strip()[-200:])
    clear = bool(lines) and all(word in err for word in case.expect)
    return Outcome(
        case.name, case.group, "rejected" if clear else "unclear", seconds, proc.returncode, summary
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="CLI processes at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a case counts as a hang")
    parser.add_argument("--only", default=None, help="run only cases whose name contains this")
    parser.add_argument(
        "--group", choices=("config-file", "--set", "checkpoint"), default=None, help="one group only"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the outcomes as JSON here")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="cli-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        env["EXITFLOW_HOME"] = str(tmp / "home")
        cases = [
            c
            for c in build_cases(tmp)
            if (args.only is None or args.only in c.name) and (args.group is None or c.group == args.group)
        ]
        prepare_checkpoints(tmp, cases)
        print(f"{len(cases)} cases, {args.jobs} at a time, timeout {args.timeout:.0f} s", flush=True)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = []
            for out in pool.map(lambda c: run_case(c, args.timeout, env), cases):
                outcomes.append(out)
                print(
                    f"{out.verdict:9s} {out.seconds:6.1f}s  {out.group:11s} {out.name:28s} {out.error}",
                    flush=True,
                )
    counts = {
        v: sum(o.verdict == v for o in outcomes)
        for v in ("rejected", "unclear", "traceback", "hang", "accepted")
    }
    by_group = {
        g: {v: sum(o.verdict == v and o.group == g for o in outcomes) for v in counts}
        for g in dict.fromkeys(o.group for o in outcomes)
    }
    print(
        f"\n{len(outcomes)} cases in {time.perf_counter() - t0:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
    )
    for group, c in by_group.items():
        print(f"  {group:11s} " + ", ".join(f"{k} {v}" for k, v in c.items()))
    if args.json:
        args.json.write_text(
            json.dumps(
                {"counts": counts, "by_group": by_group, "cases": [asdict(o) for o in outcomes]}, indent=2
            )
        )
    return 0 if counts["traceback"] == counts["hang"] == counts["accepted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
