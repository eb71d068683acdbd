"""Loaders for the other real data in a data root: GRID clips, FSDD wav files, LJ Speech clips.

Each returns plain numpy + str records; the streaming layer serves them live and tests use
them as real inputs.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from exitflow.pipeline.data.roots import load_npz
from exitflow.pipeline.errors import DataError


@dataclass(frozen=True)
class GridClip:
    """One GRID talking-face clip.

    Attributes:
        name: File stem (e.g. ``bbaf2n``).
        video_path: The original MPEG-1 file (360x288, 25 fps, with audio).
        frames: (T, 144, 180) uint8 grayscale frames (decoded copy), T = 75.
        frame_rate_hz: 25.
        audio: (L,) int16 mono at ``sample_rate_hz`` (16 kHz decoded copy).
        transcript: The six-word GRID sentence.
    """

    name: str
    video_path: Path
    frames: np.ndarray
    frame_rate_hz: int
    audio: np.ndarray
    sample_rate_hz: int
    transcript: str


def read_grid(root: Path) -> list[GridClip]:
    folder = root / "grid_av_samples"
    a = load_npz(folder / "grid_decoded.npz", ("frames", "audio", "names", "transcripts", "frame_rate", "sample_rate"))
    paths = {}
    csv_path = folder / "transcripts.csv"
    if not csv_path.is_file():
        raise DataError(f"missing {csv_path}; the GRID folder is incomplete")
    with csv_path.open(newline="") as f:
        for row in csv.DictReader(f):
            paths[row["code"]] = folder / row["file"]
    clips = []
    for i, name in enumerate(a["names"].tolist()):
        code = name[-6:]
        clips.append(GridClip(
            name=name,
            video_path=paths.get(code, folder / "mpg" / f"{name}.mpg"),
            frames=a["frames"][i],
            frame_rate_hz=int(a["frame_rate"]),
            audio=a["audio"][i],
            sample_rate_hz=int(a["sample_rate"]),
            transcript=str(a["transcripts"][i]),
        ))
    return clips


@dataclass(frozen=True)
class AudioClip:
    name: str
    audio: np.ndarray  # (L,) float32 mono in [-1, 1]
    sample_rate_hz: int
    transcript: str | None = None
    label: int | None = None


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A wav/flac file as float32 mono (channels averaged) and its sample rate."""
    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as e:
        raise DataError(f"cannot read audio file {path}: {e}") from e
    return audio.mean(axis=1), int(rate)


def read_fsdd_wavs(root: Path) -> list[AudioClip]:
    """The original FSDD ``.wav`` files in ``fsdd/wav_samples`` (label from the file name)."""
    folder = root / "fsdd" / "wav_samples"
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise DataError(f"no wav files under {folder}")
    clips = []
    for path in files:
        audio, rate = read_wav(path)
        clips.append(AudioClip(name=path.stem, audio=audio, sample_rate_hz=rate, label=int(path.name.split("_")[0])))
    return clips


def read_ljspeech(root: Path) -> list[AudioClip]:
    """LJ Speech clips in ``ljspeech_subset/wavs`` with their normalized transcripts."""
    folder = root / "ljspeech_subset"
    meta = folder / "metadata.csv"
    if not meta.is_file():
        raise DataError(f"missing {meta}")
    texts = {}
    for line in meta.read_text(encoding="utf-8").splitlines():
        parts = line.split("|")
        if len(parts) >= 3:
            texts[parts[0]] = parts[2]
    clips = []
    for path in sorted((folder / "wavs").glob("*.wav")):
        audio, rate = read_wav(path)
        clips.append(AudioClip(name=path.stem, audio=audio, sample_rate_hz=rate, transcript=texts.get(path.stem)))
    if not clips:
        raise DataError(f"no wav files under {folder / 'wavs'}")
    return clips
