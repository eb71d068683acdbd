from __future__ import annotations

import shutil
from pathlib import Path

import librosa
import numpy as np
import pytest

from exitflow.pipeline.config import load_config
from exitflow.pipeline.data.avmnist import SPLITS, load_split
from exitflow.pipeline.data.grid_commands import (
    DIGITS,
    SLOTS,
    STATUS_DROPPED,
    STATUS_REPLACED,
    make_commands,
    parse_command,
)
from exitflow.pipeline.data.roots import EMBEDDED_DATA, SHARED_DATA
from exitflow.pipeline.data.spectrogram import AudioInputError, spectrogram_112, stft_112
from exitflow.pipeline.errors import DataError
from tests.conftest import requires_shared


def test_stft_equals_librosa_stft() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(111 * 37).astype(np.float32)
    ours = stft_112(x, 37)
    ref = librosa.stft(x, n_fft=222, hop_length=37, win_length=222, window="hann", center=True, pad_mode="constant")
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_spectrogram_shape_range_and_bad_audio() -> None:
    rng = np.random.default_rng(1)
    for n in (200, 3500, 18262):
        spec = spectrogram_112((rng.standard_normal(n) * 3000).astype(np.int16))
        assert spec.shape == (112, 112) and spec.dtype == np.float32
        assert spec.min() >= 0.0 and spec.max() == pytest.approx(1.0)
    with pytest.raises(AudioInputError, match="NaN"):
        spectrogram_112(np.array([0.1, np.nan] * 100, dtype=np.float32))
    with pytest.raises(AudioInputError, match="too short"):
        spectrogram_112(np.zeros(10, dtype=np.float32))
    with pytest.raises(AudioInputError, match="mono"):
        spectrogram_112(np.zeros((2, 400), dtype=np.float32))


def test_spectrogram_resamples_other_rates() -> None:
    t = np.arange(16000) / 16000.0
    tone = np.sin(2 * np.pi * 1000 * t).astype(np.float32)  # 1 kHz at 16 kHz
    spec = spectrogram_112(tone, 16000)
    peak_bin = int(spec.mean(axis=1).argmax())
    assert abs(peak_bin - round(1000 / 4000 * 111)) <= 1  # bins span 0..4 kHz


def test_commands_follow_the_grid_grammar_and_error_rate() -> None:
    labels = np.arange(4000) % 10
    cmds = make_commands(labels, 0.3, seed=5)
    for text, command, status, label in zip(cmds.text, cmds.command, cmds.status, labels, strict=True):
        words = parse_command(command)
        assert words[4] == DIGITS[label]
        if status == STATUS_DROPPED:
            assert len(text.split()) == 5 and not any(w in DIGITS for w in text.split())
        elif status == STATUS_REPLACED:
            assert text.split()[4] in DIGITS and text.split()[4] != DIGITS[label]
        else:
            assert text == command
    assert 0.27 < np.mean(cmds.status > 0) < 0.33
    assert make_commands(labels[:10], 0.3, seed=5, rows=np.arange(10)).text == cmds.text[:10]


def test_grammar_matches_real_grid_transcripts() -> None:
    path = SHARED_DATA / "grid_av_samples" / "transcripts.csv"
    if not path.is_file():
        pytest.skip("needs ../shared/data")
    for line in path.read_text().splitlines()[1:]:
        words = line.split(",")[2].split()
        assert all(w in slot for w, slot in zip(words, SLOTS, strict=True)), line


def test_embedded_slice_builds_test_split(embedded_cfg) -> None:
    split = load_split(embedded_cfg, "test", "avmnist-t", progress=False)
    assert len(split) == 1000
    assert split.image.shape == (1000, 1, 28, 28) and split.image.dtype == np.float32
    assert split.audio.shape == (1000, 1, 112, 112) and split.audio[3].shape == (1, 112, 112)
    assert np.isfinite(split.image).all() and 0.0 <= split.audio[:50].min() and split.audio[:50].max() <= 1.0
    # image/audio pairing never crosses labels: the recording's digit is the label
    digits = np.array([int(name.split("_")[0]) for name in split.recording])
    assert np.array_equal(digits, split.labels)
    assert {name.split("_")[1] for name in split.recording} == {"theo"}  # the unseen test speaker
    with pytest.raises(DataError, match="holds only 'test'"):
        load_split(embedded_cfg, "train", "avmnist", progress=False)


def test_other_root_with_same_layout_and_determinism(tmp_path: Path, embedded_cfg) -> None:
    root = tmp_path / "myroot"
    shutil.copytree(EMBEDDED_DATA, root)
    cfg = load_config(None, [f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"])
    a = load_split(cfg, "test", "avmnist", progress=False)
    b = load_split(embedded_cfg, "test", "avmnist", progress=False)
    assert a.digest() == b.digest()


def test_bad_roots_and_names_give_clear_errors(tmp_path: Path) -> None:
    cfg = load_config(None, [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(DataError, match="does not exist"):
        load_split(cfg, "test", progress=False)
    root = tmp_path / "broken"
    shutil.copytree(EMBEDDED_DATA, root)
    (root / "mnist" / "mnist_test.npz").write_bytes(b"not a zip")
    cfg = load_config(None, [f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}"])
    with pytest.raises(DataError, match="corrupt"):
        load_split(cfg, "test", progress=False)
    assert not any((tmp_path / "c").glob("*/manifest.json"))  # nothing half-written
    with pytest.raises(DataError, match="unknown split"):
        load_split(cfg, "tset", progress=False)


@requires_shared
@pytest.mark.slow
def test_full_build_splits_and_slice_equivalence(shared_cfg, embedded_cfg) -> None:
    splits = {name: load_split(shared_cfg, name, "avmnist-t", progress=False) for name in SPLITS}
    assert [len(splits[n]) for n in SPLITS] == [55000, 5000, 8000, 8000]
    assert np.array_equal(splits["val"].rows, np.arange(55000, 60000))

    def speakers(split) -> set[str]:
        return {n.split("_")[1] for n in split.recording}

    def pool(split) -> set[int]:
        return {int(n.split("_")[2].split(".")[0]) for n in split.recording}

    assert speakers(splits["train"]) == speakers(splits["test_id"]) == {"george", "jackson", "lucas"}
    assert speakers(splits["val"]) == {"nicolas"} and speakers(splits["test"]) == {"theo"}
    assert pool(splits["train"]) == set(range(40)) and pool(splits["test_id"]) == set(range(40, 50))
    assert not set(splits["train"].recording) & set(splits["test_id"].recording)
    test = splits["test"]
    emb = load_split(embedded_cfg, "test", "avmnist-t", progress=False)
    assert np.array_equal(test.image[:1000], emb.image)
    assert np.array_equal(test.audio[np.arange(1000)], emb.audio[np.arange(1000)])
    assert test.text[:1000] == emb.text
    assert 0.27 < np.mean(test.text_status > 0) < 0.33
    noisy = load_split(shared_cfg, "test", "avmnist-noisy", progress=False)
    noisy_emb = load_split(embedded_cfg, "test", "avmnist-noisy", progress=False)
    assert np.array_equal(noisy.audio[np.arange(1000)], noisy_emb.audio[np.arange(1000)])
    assert not np.array_equal(noisy.audio[np.arange(50)], test.audio[np.arange(50)])


def test_real_loaders_read_grid_fsdd_and_ljspeech() -> None:
    from exitflow.pipeline.data.grid_commands import parse_command
    from exitflow.pipeline.data.realsets import read_fsdd_wavs, read_grid, read_ljspeech

    if not (SHARED_DATA / "grid_av_samples").is_dir():
        pytest.skip("needs ../shared/data")
    clips = read_grid(SHARED_DATA)
    assert len(clips) == 11 and clips[0].frames.shape == (75, 144, 180)
    assert all(c.video_path.is_file() for c in clips)
    assert all(len(parse_command(c.transcript)) == 6 for c in clips)
    wavs = read_fsdd_wavs(SHARED_DATA)
    assert len(wavs) == 20 and all(w.sample_rate_hz == 8000 and w.label is not None for w in wavs)
    lj = read_ljspeech(SHARED_DATA)
    assert len(lj) == 32 and lj[0].sample_rate_hz == 22050 and lj[0].transcript
