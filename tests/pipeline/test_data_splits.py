"""Speaker roles, the stored PCA basis and the noise mixer of the AV-MNIST builders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from exitflow.pipeline.data.noise import NOISE_POOL_OF, mix_noise, noise_rng, read_noise_bank
from exitflow.pipeline.data.pca import components_for, degrade_images, load_pca_basis
from exitflow.pipeline.data.roots import EMBEDDED_DATA, SHARED_DATA, read_mnist
from exitflow.pipeline.data.speakers import ROLES_FILE, speaker_roles, split_pools
from exitflow.pipeline.errors import DataError

FIVE = np.array(["theo", "george", "nicolas", "jackson", "lucas"])


def test_rule_on_a_full_root_holds_out_two_speakers(tmp_path: Path) -> None:
    roles = speaker_roles(tmp_path, np.repeat(FIVE, 3), full_root=True)
    assert roles.train == ("george", "jackson", "lucas") and roles.val == ("nicolas",) and roles.test == ("theo",)
    speakers = np.repeat(FIVE, 50)
    indices = np.tile(np.arange(50), 5)
    pools = split_pools(roles, speakers, indices)
    assert set(speakers[pools["val"]]) == {"nicolas"} and set(speakers[pools["test"]]) == {"theo"}
    assert indices[pools["train"]].max() == 39 and indices[pools["test_id"]].min() == 40
    all_ids = np.concatenate(list(pools.values()))
    assert len(all_ids) == len(set(all_ids.tolist())) == 250  # every recording in exactly one pool


def test_test_only_root_tests_on_every_speaker_it_holds(tmp_path: Path) -> None:
    roles = speaker_roles(tmp_path, np.array(["me", "me"]), full_root=False)
    assert roles.test == ("me",) and roles.train == ()
    assert set(split_pools(roles, np.array(["me", "me"]), np.array([0, 45]))) == {"test"}
    with pytest.raises(DataError, match="at least 3"):
        speaker_roles(tmp_path, np.array(["a", "b"]), full_root=True)


def test_declared_roles_win_and_are_checked(tmp_path: Path) -> None:
    (tmp_path / "fsdd").mkdir()
    path = tmp_path / "fsdd" / ROLES_FILE
    path.write_text(json.dumps({"train": ["a"], "val": ["b"], "test": ["c"]}))
    assert speaker_roles(tmp_path, np.array(["c"]), full_root=False).test == ("c",)
    path.write_text(json.dumps({"train": ["a"], "val": ["a"], "test": ["c"]}))
    with pytest.raises(DataError, match="overlap"):
        speaker_roles(tmp_path, np.array(["c"]), full_root=False)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected"):
        speaker_roles(tmp_path, np.array(["c"]), full_root=False)


def test_pca_degradation_is_exact_integer_arithmetic_close_to_float() -> None:
    basis = load_pca_basis()
    images = read_mnist(EMBEDDED_DATA, "test").images[:200]
    out = degrade_images(images, basis, 0.75)
    assert out.shape == (200, 1, 28, 28) and out.dtype == np.float32
    # the float reference (BLAS) agrees within the fixed-point step, not bit for bit
    k = components_for(basis, 0.75)
    assert k == 4  # what the builder has always used; the recipe's "k = 3" is not what it computes
    comps = basis["components"][:k].astype(np.float64)
    x = images.reshape(-1, 784).astype(np.float64) - basis["mean"].astype(np.float64)
    ref = ((x @ comps.T) @ comps / 255.0).reshape(-1, 1, 28, 28)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-4)
    # the same rows give the same bytes in any batch (no BLAS blocking effects)
    assert np.array_equal(degrade_images(images[7:9], basis, 0.75), out[7:9])
    with pytest.raises(DataError, match="components"):
        degrade_images(images, basis, 0.0)


def test_noise_mix_hits_the_snr_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(6000) * 3000).astype(np.int16)
    pool = [(rng.standard_normal(9000) * 1000).astype(np.int16) for _ in range(4)]
    for kind in ("babble", "talker", "white"):
        mixed = mix_noise(speech, pool, kind, 5.0, noise_rng(0, "test", 3, 1))
        x = speech / 32768.0
        snr = 10 * np.log10(np.mean(x**2) / np.mean((mixed - x) ** 2))
        assert snr == pytest.approx(5.0, abs=1e-6)
        assert np.array_equal(mixed, mix_noise(speech, pool, kind, 5.0, noise_rng(0, "test", 3, 1)))
    with pytest.raises(DataError, match="noise_kind"):
        mix_noise(speech, pool, "ocean", 5.0, noise_rng(0, "test", 3, 1))
    with pytest.raises(DataError, match="empty"):
        mix_noise(speech, [], "babble", 5.0, noise_rng(0, "test", 3, 1))


def test_noise_pools_are_disjoint_between_splits() -> None:
    if not (SHARED_DATA / "ljspeech_subset").is_dir():
        pytest.skip("needs ../shared/data")
    bank = read_noise_bank(SHARED_DATA)
    by_split = {s: set(bank.names[bank.splits == s].tolist()) for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
    assert not (by_split["val"] & by_split["test"]) and NOISE_POOL_OF["test_id"] == "test"
    embedded = read_noise_bank(EMBEDDED_DATA)
    assert set(embedded.names.tolist()) == by_split["test"]
