"""Exit rules and exit profiles: scores, exit probabilities, JSON round trip, fingerprints."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from exitflow.scheduler.errors import ProfileFormatError, ProfileMismatchError
from exitflow.scheduler.profile import ExitArrays, build_profile, fingerprint_checkpoints, load_profile
from exitflow.scheduler.rules import couple_threshold, normalized_entropy, passes, patience_counts


def test_normalized_entropy_bounds():
    assert normalized_entropy(np.full(10, 0.1)) == pytest.approx(1.0)
    assert normalized_entropy(np.eye(10)[3]) == pytest.approx(0.0, abs=1e-9)
    two = normalized_entropy(np.array([[0.5, 0.5], [0.9, 0.1]]))
    assert two[0] == pytest.approx(1.0)
    assert two[1] == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2))


def test_passes_directions_and_patience():
    assert passes("entropy", 0.2, 0.3) and not passes("entropy", 0.4, 0.3)
    assert passes("max_prob", 0.9, 0.8) and not passes("max_prob", 0.7, 0.8)
    assert not passes("none", 0.0, 1.0)
    counts = patience_counts(np.array([[1, 1, 1, 2], [0, 3, 3, 3]]))
    assert counts.tolist() == [[0, 1, 2, 0], [0, 0, 1, 2]]


def test_couple_threshold_moves_towards_earlier_exits_for_small_lambda():
    assert couple_threshold("entropy", 0.3, 0.5, 1.0, 1.0) == pytest.approx(0.6)
    assert couple_threshold("max_prob", 0.9, 0.5, 1.0, 1.0) == pytest.approx(0.8)
    assert couple_threshold("entropy", 0.3, 0.5, 1.0, 0.0) == 0.3


def _arrays() -> dict[str, ExitArrays]:
    # 4 samples, 2 exits; entropy scores; threshold 0.5
    scores = np.array([[0.1, 0.2], [0.9, 0.3], [0.8, 0.9], [0.6, 0.4]])
    correct = np.array([[1, 1], [0, 1], [0, 0], [1, 1]], dtype=bool)
    energy = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    return {"image": ExitArrays(scores, correct, np.array([10, 30]), energy, layers=(2, 4))}


def test_build_profile_hand_case():
    profile = build_profile(
        _arrays(), {"image": 0.5}, "entropy", fusion={("image",): (np.array([1, 1, 0, 1]), 5, 0.5)}
    )
    first, second = profile.exits["image"]
    # sample 0 exits at exit 0 (1 of 4); samples 1 and 3 exit at exit 1 (2 of the 3 reaching it)
    assert first.exit_prob == pytest.approx(0.25) and first.n_reached == 4
    assert second.exit_prob == pytest.approx(2 / 3) and second.n_reached == 3
    assert first.accuracy == pytest.approx(0.5) and second.accuracy == pytest.approx(0.75)
    assert first.accuracy_exited == pytest.approx(1.0) and second.accuracy_exited == pytest.approx(1.0)
    assert (first.macs, second.macs) == (10.0, 30.0)
    assert (first.energy_mj, second.energy_mj) == (1.0, 3.0)  # cumulative from per-step energy
    assert profile.fusion[0].accuracy == pytest.approx(0.75)
    assert profile.n_samples == 4 and second.layer == 4


def test_build_profile_rejects_bad_input():
    arrays = _arrays()
    with pytest.raises(ValueError, match="no threshold"):
        build_profile(arrays, {}, "entropy")
    bad = {"image": ExitArrays(np.full((2, 2), np.nan), np.ones((2, 2), bool), np.array([1, 2]))}
    with pytest.raises(ValueError, match="NaN"):
        build_profile(bad, {"image": 0.5})
    with pytest.raises(ValueError, match="exit rule"):
        build_profile(arrays, {"image": 0.5}, "nope")


def test_profile_json_round_trip_and_fingerprint(tmp_path):
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"weights-v1")
    fp = fingerprint_checkpoints([ckpt])
    profile = build_profile(
        _arrays(), {"image": 0.5}, fingerprint=fp, energy_source="rapl", energy_estimated=False
    )
    path = tmp_path / "profile.json"
    profile.save(path)
    loaded = load_profile(path, expected_fingerprint=fp)
    assert loaded == profile
    ckpt.write_bytes(b"weights-v2")
    with pytest.raises(ProfileMismatchError, match="exitflow profile"):
        load_profile(path, expected_fingerprint=fingerprint_checkpoints([ckpt]))


def test_profile_format_errors(tmp_path):
    with pytest.raises(ProfileFormatError, match="exitflow profile"):
        load_profile(tmp_path / "absent.json")
    path = tmp_path / "old.json"
    data = build_profile(_arrays(), {"image": 0.5}).to_json_dict()
    data["schema_version"] = 0
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileFormatError, match="schema version"):
        load_profile(path)


@pytest.mark.parametrize("probs", [[0.97, 0.01, 0.01, 0.01], [0.25] * 4, [1.0, 0.0, 0.0], [0.5, 0.5]])
def test_entropy_of_matches_numpy_rule(probs):
    from exitflow.scheduler.rules import entropy_of, normalized_entropy

    assert entropy_of(probs) == pytest.approx(float(normalized_entropy(np.array(probs))), abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        entropy_of([1.0])
