"""Engine: tiny honest incremental encoders, a deterministic meter, decisions per sample."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from exitflow.encoders.base import EarlyExitEncoder, EncoderState, ExitOutput
from exitflow.encoders.late_fusion import MaskedLateFusion
from exitflow.pipeline.inference.engine import Engine, EngineError
from exitflow.pipeline.messages import Sample
from exitflow.scheduler.budget import BudgetController
from exitflow.scheduler.policy import Policy, PolicySettings
from exitflow.scheduler.profile import ExitProfile, FusionProfile, Profile

NUM_CLASSES = 4
DIM = 8


class TinyEncoder(EarlyExitEncoder):
    """Linear embedding, a stack of MLP layers, a linear head after each exit layer."""

    def __init__(self, modality: str, in_dim: int, exit_layers: tuple[int, ...], seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.modality = modality
        self.exit_layers = exit_layers
        self.embed = nn.Linear(in_dim, DIM)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(DIM, DIM), nn.Tanh()) for _ in range(exit_layers[-1])
        )
        self.heads = nn.ModuleList(nn.Linear(DIM, NUM_CLASSES) for _ in exit_layers)
        self.layers_run = 0

    def start(self, x: torch.Tensor) -> EncoderState:
        if x.dim() != 2:
            raise ValueError(f"expected (B, {self.embed.in_features}), got {tuple(x.shape)}")
        return EncoderState(hidden=self.embed(x).unsqueeze(1))  # (B, 1, D)

    def step(self, state: EncoderState) -> ExitOutput:
        target = self.exit_layers[state.next_exit]
        while state.layer < target:
            state.hidden = self.layers[state.layer](state.hidden)  # (B, 1, D)
            state.layer += 1
            self.layers_run += 1
        emb = state.hidden[:, 0]  # (B, D)
        logits = self.heads[state.next_exit](emb)  # (B, C)
        out = ExitOutput(
            logits=logits,
            embedding=emb,
            hidden=state.hidden,
            confidence=torch.softmax(logits, -1).max(-1).values,
            layer=state.layer,
            exit_index=state.next_exit,
            macs=(state.layer + 1) * DIM * DIM,
        )
        state.next_exit += 1
        return out


@dataclass
class FakeMeasurement:
    energy_mj: float | None
    duration_s: float
    avg_power_mw: float | None
    source: str = "fake"
    estimated: bool = True
    rails: dict | None = None


class StepMeter:
    """Deterministic: every window costs 1 mJ, fusion windows 0.5 mJ."""

    def __init__(self):
        self.open: set[str] = set()
        self.names: list[str] = []

    def begin_window(self, name: str) -> None:
        assert name not in self.open
        self.open.add(name)

    def end_window(self, name: str) -> FakeMeasurement:
        self.open.remove(name)
        self.names.append(name)
        return FakeMeasurement(0.5 if name == "fusion" else 1.0, 1e-3, 1000.0)


def _profile(p: float = 0.5) -> Profile:
    def ex(m: str, j: int, a: float, macs: float) -> ExitProfile:
        return ExitProfile(modality=m, exit_index=j, accuracy=a, exit_prob=p, macs=macs, energy_mj=macs / 64)

    return Profile(
        exits={
            "image": (ex("image", 0, 0.7, 128), ex("image", 1, 0.8, 256)),
            "audio": (ex("audio", 0, 0.75, 192),),
        },
        fusion=(
            FusionProfile(("audio", "image"), 0.95, 100, 0.5),
            FusionProfile(("image",), 0.5, 100, 0.5),
            FusionProfile(("audio",), 0.5, 100, 0.5),
        ),
        thresholds={"image": 0.3, "audio": 0.3},
        energy_source="fake (dynamic energy)",
    )


def _parts():
    encoders = {
        "image": TinyEncoder("image", 5, (1, 2), seed=0),
        "audio": TinyEncoder("audio", 3, (2,), seed=1),
    }
    torch.manual_seed(2)
    fusion = MaskedLateFusion({"image": DIM, "audio": DIM}, NUM_CLASSES)
    return encoders, fusion


def _sample(i: int, missing: frozenset[str] = frozenset()) -> Sample:
    rng = np.random.default_rng(i)
    payloads = {
        "image": rng.normal(size=5).astype(np.float32),
        "audio": rng.normal(size=3).astype(np.float32),
    }
    return Sample(sample_id=i, timestamp_ns=i, payloads=payloads, missing=missing, label=i % NUM_CLASSES)


def test_no_early_exit_equals_running_everything():
    encoders, fusion = _parts()
    policy = Policy(_profile(), PolicySettings(lam=5.0, exit_rule="none", skip_negative=False))
    meter = StepMeter()
    engine = Engine(encoders, fusion, policy, meter, step_windows=True)
    for i in range(5):
        sample = _sample(i)
        decision = engine.process(sample)
        with torch.no_grad():
            finals = {
                m: enc(torch.from_numpy(sample.payloads[m]).unsqueeze(0))[-1].embedding
                for m, enc in encoders.items()
            }
            reference = fusion.fuse(finals, ["image", "audio"])  # (1, C)
        assert decision.prediction == int(reference[0].argmax())
        assert decision.exits == {"image": 1, "audio": 0}
        assert decision.skipped == [] and decision.missing == []
        assert decision.energy_mj == pytest.approx(3.5)  # 3 encoder steps + fusion
        assert decision.energy_source == "fake" and decision.estimated is True
        assert decision.macs == 2 * (3 * DIM * DIM) + fusion.macs  # both encoders end at layer 2
        assert set(decision.latency_ms) == {"image/0", "image/1", "audio/0", "fusion", "policy", "total"}
        assert decision.lam == 5.0 and decision.thresholds == {"image": 0.3, "audio": 0.3}
    assert meter.open == set()


def test_missing_modality_is_skipped_and_recorded():
    encoders, fusion = _parts()
    policy = Policy(_profile(), PolicySettings(lam=5.0, exit_rule="none", skip_negative=False))
    engine = Engine(encoders, fusion, policy, StepMeter())
    before = encoders["audio"].layers_run
    decision = engine.process(_sample(0, missing=frozenset({"audio"})))
    assert decision.missing == ["audio"]
    assert "audio" not in decision.exits and "audio" not in decision.order
    assert encoders["audio"].layers_run == before  # really not computed
    sample = _sample(1)
    del sample.payloads["image"]  # absent payload counts as missing too
    assert engine.process(sample).missing == ["image"]


def test_decisions_are_per_sample_and_early_exit_stops_compute():
    encoders, fusion = _parts()
    # entropy threshold 1.0 passes at the very first exit; 0.0 never passes
    eager = Policy(_profile(), PolicySettings(lam=5.0, thresholds={"image": 1.0, "audio": 1.0}))
    engine = Engine(encoders, fusion, eager, StepMeter())
    d = engine.process(_sample(3))
    first = d.order[0]
    assert d.exits == {first: 0} and d.energy_mj == pytest.approx(1.0)
    assert d.prediction == int(
        encoders[first](torch.from_numpy(_sample(3).payloads[first]).unsqueeze(0))[0].logits.argmax()
    )
    # per sample: a batch of samples gives the same decisions as each sample alone
    lazy = Policy(
        _profile(), PolicySettings(lam=5.0, exit_rule="max_prob", thresholds={"image": 0.4, "audio": 0.4})
    )
    engine = Engine(encoders, fusion, lazy, StepMeter())
    together = [engine.process(_sample(i)) for i in range(6)]
    alone = [Engine(encoders, fusion, lazy, StepMeter()).process(_sample(i)) for i in range(6)]
    for a, b in zip(together, alone, strict=True):
        assert (a.prediction, a.exits, a.order) == (b.prediction, b.exits, b.order)
    assert all(d.sample_id == i for i, d in enumerate(together))


def test_budget_updates_lambda_and_errors():
    encoders, fusion = _parts()
    policy = Policy(_profile(), PolicySettings(lam=5.0, cost_unit="mj"))
    budget = BudgetController(mj_per_sample=1.0, lam_ref=5.0)
    engine = Engine(encoders, fusion, policy, StepMeter(), budget=budget)
    lams = [engine.process(_sample(i)).lam for i in range(4)]
    assert lams[0] == 5.0 and policy.lam == budget.lam
    with pytest.raises(EngineError, match="exits"):
        Engine({"image": TinyEncoder("image", 5, (2,), 0), "audio": encoders["audio"]}, fusion, policy)
    with pytest.raises(EngineError, match="without an encoder"):
        Engine({"image": encoders["image"]}, fusion, policy)
    no_meter = Engine(encoders, fusion, Policy(_profile()), meter=None).process(_sample(0))
    assert no_meter.energy_mj is None and no_meter.energy_source is None


def test_config_sections_build_policy_and_budget():
    from exitflow.pipeline.config import config_from_dict
    from exitflow.pipeline.inference.engine import budget_from_config, policy_from_config

    cfg = config_from_dict(
        {
            "scheduler": {"lam": 2.0, "threshold": 0.5, "thresholds": {"audio": 0.1}},
            "budget": {"mode": "mj_per_sample", "mj_per_sample": 0.5},
        }
    )
    policy = policy_from_config(_profile(), cfg.scheduler)
    assert policy.lam == 2.0 and policy.thresholds == {"image": 0.5, "audio": 0.1}
    with pytest.warns(UserWarning, match="cheapest-exit mode"):
        budget = budget_from_config(cfg.budget, policy.lam, _profile())
    assert budget is not None and budget.cheapest_mode  # 0.5 mJ < cheapest exit 2 mJ
    assert budget_from_config(config_from_dict({}).budget, 1.0) is None


def test_engine_runs_only_the_selected_heads_and_counts_their_macs() -> None:
    """A real ViT encoder: with exits 1..3 left out, their heads never run and are not counted."""
    import torch

    from exitflow.encoders.presets import build_vit_encoder
    from exitflow.pipeline.inference.engine import Engine
    from exitflow.pipeline.messages import Sample
    from exitflow.scheduler.policy import Policy, PolicySettings
    from exitflow.scheduler.profile import ExitProfile, Profile

    torch.manual_seed(0)
    enc = build_vit_encoder("image", hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32, num_exits=4,
                               gah_heads=2).eval()
    probs = (0.5, 0.0, 0.0, 1.0)
    exits = tuple(ExitProfile("image", j, 0.9, p, float(m)) for j, (p, m) in enumerate(zip(probs, enc.exit_macs(), strict=True)))
    policy = Policy(Profile(exits={"image": exits}, thresholds={"image": -1.0}),
                    PolicySettings(skip_negative=False, min_exit_prob=0.1))
    calls = []
    for j, head in enumerate(enc.heads):
        head.register_forward_hook(lambda *a, j=j: calls.append(j))
    sample = Sample(0, 0, {"image": np.zeros((1, 28, 28), dtype=np.float32)})
    fusion = MaskedLateFusion({"image": 16}, 10)
    decision = Engine({"image": enc}, fusion=fusion, policy=policy).process(sample)
    assert calls == [0]  # heads 1 and 2 never ran (the final classifier is not in enc.heads)
    head_macs = enc.head_macs()
    assert decision.macs == enc.exit_macs()[3] - head_macs[1] - head_macs[2] + fusion.macs
    assert decision.exit_layers == {"image": enc.exit_layers[3]}


def test_engine_device_is_validated() -> None:
    from exitflow.pipeline.inference.engine import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(EngineError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engine_runs_on_cuda() -> None:
    from exitflow.encoders.presets import build_vit_encoder
    from exitflow.pipeline.inference.engine import device_input_adapter
    from exitflow.scheduler.policy import Policy, PolicySettings
    from exitflow.scheduler.profile import ExitProfile, Profile

    device = torch.device("cuda")
    enc = build_vit_encoder("image", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, num_exits=2,
                               gah_heads=2).eval().to(device)
    exits = tuple(ExitProfile("image", j, 0.9, 0.5, float(m)) for j, m in enumerate(enc.exit_macs()))
    policy = Policy(Profile(exits={"image": exits}, thresholds={"image": 0.5}), PolicySettings(skip_negative=False))
    fusion = MaskedLateFusion({"image": 16}, 10).to(device)
    engine = Engine({"image": enc}, fusion, policy, input_adapter=device_input_adapter(device))
    decision = engine.process(Sample(0, 0, {"image": np.zeros((1, 28, 28), dtype=np.float32)}))
    assert 0 <= decision.prediction < 10


def test_sample_with_no_usable_modality_gives_a_decision_not_an_error() -> None:
    from exitflow.encoders.presets import build_vit_encoder
    from exitflow.scheduler.policy import Policy, PolicySettings
    from exitflow.scheduler.profile import ExitProfile, Profile

    enc = build_vit_encoder("image", hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, num_exits=2,
                               gah_heads=2).eval()
    exits = tuple(ExitProfile("image", j, 0.9, 0.5, float(m)) for j, m in enumerate(enc.exit_macs()))
    policy = Policy(Profile(exits={"image": exits}, thresholds={"image": 0.5}), PolicySettings(skip_negative=False))
    engine = Engine({"image": enc}, MaskedLateFusion({"image": 16}, 10), policy)
    decision = engine.process(Sample(3, 0, {"text": "bin blue at f two now"}))
    assert decision.prediction == -1 and decision.missing == ["image"] and decision.macs == 0


def test_one_meter_window_per_sample_by_default_closed_even_when_a_step_fails():
    encoders, fusion = _parts()
    policy = Policy(_profile(), PolicySettings(lam=5.0, exit_rule="none", skip_negative=False))
    meter = StepMeter()
    engine = Engine(encoders, fusion, policy, meter)
    decision = engine.process(_sample(0))
    assert meter.names == ["sample"] and decision.energy_mj == pytest.approx(1.0)
    assert {"image/0", "audio/0", "fusion"} <= set(decision.latency_ms)  # stage times are still measured
    bad = _sample(1)
    bad.payloads["audio"] = np.full(7, np.nan, dtype=np.float32)  # the wrong width: the audio step raises
    with pytest.raises(Exception):  # noqa: B017 - whatever the encoder raises, the window must close
        engine.process(bad)
    assert meter.open == set()
    engine.process(_sample(2))
    assert meter.names == ["sample", "sample", "sample"]
