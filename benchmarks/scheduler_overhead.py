"""Scheduler overhead (microseconds per decision) and how often phi finds the optimal order.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/scheduler_overhead.py [--samples 20000] [--trials 1000]``

Part 1 walks synthetic samples through :class:`scheduler.policy.Policy` (three modalities,
three exits each, entropy rule) and reports the time of one ``decide`` + ``observe`` pair, of
``start`` with a cached plan, and of planning afresh (what a lambda change per sample costs).
Part 2 compares phi and the exchange key with the exhaustive search over random profiles,
with and without the paper's assumptions (equal exit counts, one common p).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from exitflow.scheduler.policy import ActionKind, Policy, PolicySettings
from exitflow.scheduler.synthetic import random_profile
from exitflow.scheduler.utility import UtilityModel


def decision_overhead(num_samples: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    profile = random_profile(rng, num_exits=3)
    policy = Policy(profile, PolicySettings(lam=1.0, skip_negative=False))
    present = list(profile.modalities)
    probs = [rng.dirichlet(np.full(10, 0.3)) for _ in range(64)]
    decide_s = start_s = 0.0
    decisions = 0
    for i in range(num_samples):
        t0 = time.perf_counter()
        state = policy.start(present)
        start_s += time.perf_counter() - t0
        k = i
        while True:
            t0 = time.perf_counter()
            action = policy.decide(state)
            if action.kind is ActionKind.CONTINUE:
                policy.observe(state, action.modality, action.exit_index, probs[k % 64])
            decide_s += time.perf_counter() - t0
            decisions += 1
            k += 7
            if action.kind in (ActionKind.EXIT, ActionKind.FUSE):
                break
    t0 = time.perf_counter()
    replans = max(1, num_samples // 10)
    for i in range(replans):
        policy.set_lambda(0.5 + (i % 100) / 50)
        policy.plan(present)
    replan_s = time.perf_counter() - t0
    return {
        "us_per_decision": decide_s / decisions * 1e6,
        "decisions_per_sample": decisions / num_samples,
        "us_per_start_cached": start_s / num_samples * 1e6,
        "us_per_replan": replan_s / replans * 1e6,
    }


def phi_match_rates(trials: int, num_modalities: int, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    names = [f"m{i}" for i in range(num_modalities)]
    hits = {"phi (assumptions hold)": 0, "phi (general)": 0, "exchange (general)": 0}
    regret = []
    for _ in range(trials):
        lam = float(np.exp(rng.uniform(np.log(0.01), np.log(100))))
        p = float(rng.uniform(0.05, 0.9))
        equal = UtilityModel(random_profile(rng, names, num_exits=3, common_p=p), "macs")
        general = UtilityModel(random_profile(rng, names), "macs")
        for key, model, method in (
            ("phi (assumptions hold)", equal, "phi"),
            ("phi (general)", general, "phi"),
            ("exchange (general)", general, "exchange"),
        ):
            _, best = model.exhaustive(lam, names)
            got = model.expected_utility(lam, model.rank(lam, names, method))
            ok = got >= best - 1e-9 * max(1.0, abs(best))
            hits[key] += ok
            if key == "phi (general)":
                regret.append((best - got) / abs(best) if best else 0.0)
    out = {k: v / trials for k, v in hits.items()}
    out["phi median relative regret (general)"] = float(np.median(regret))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    overhead = decision_overhead(args.samples)
    print(f"policy overhead over {args.samples} synthetic samples (3 modalities x 3 exits):")
    for k, v in overhead.items():
        print(f"  {k}: {v:.2f}")
    for n in (2, 3, 4):
        rates = phi_match_rates(args.trials, n)
        print(f"order search, {n} modalities, {args.trials} random profiles:")
        for k, v in rates.items():
            print(f"  {k}: {v:.1%}" if "regret" not in k else f"  {k}: {v:.3%}")


if __name__ == "__main__":
    main()
