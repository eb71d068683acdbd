"""Build a small user data set folder (manifest + PNG/WAV/FLAC files) from the embedded slice.

Used by ``tests/pipeline/test_import.py`` and the bundle tests: ``write_small_set(folder)`` writes
a 3-class image + audio set of real MNIST digits and FSDD recordings (speaker theo) whose
``group`` is the recording's take (index % 6), so the automatic split is group-disjoint.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from exitflow.pipeline.data.roots import EMBEDDED_DATA, read_fsdd, read_mnist

CLASS_NAMES = ("zero", "one", "two")


def write_small_set(
    folder: Path, per_class: int = 12, missing_image_every: int = 5, modalities: tuple[str, ...] = ("image", "audio")
) -> Path:
    """Write ``folder/manifest.csv`` and its files; returns ``folder``.

    Every ``missing_image_every``-th row has no image (no text, with ``modalities`` audio + text,
    where the text is the class name, upper-cased on even rows); odd takes are stored as 16 kHz FLAC
    (resampled by the importer), the others as 8 kHz WAV.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    (folder / "wav").mkdir(exist_ok=True)
    mnist = read_mnist(EMBEDDED_DATA, "test")
    fsdd = read_fsdd(EMBEDDED_DATA, ("train",))
    rows = []
    for digit, name in enumerate(CLASS_NAMES):
        images = np.flatnonzero(mnist.labels == digit)[:per_class]
        clips = np.flatnonzero(fsdd.labels == digit)[:per_class]
        for k, (img, clip) in enumerate(zip(images.tolist(), clips.tolist(), strict=True)):
            stem = f"{name}_{k:02d}"
            image_cell = ""
            if (len(rows) + 1) % missing_image_every:
                cv2.imwrite(str(folder / "img" / f"{stem}.png"), mnist.images[img])
                image_cell = f"img/{stem}.png"
            take = int(fsdd.indices[clip]) % 6
            if take % 2:
                import librosa

                audio = librosa.resample(fsdd.clips[clip].astype(np.float64) / 32768.0, orig_sr=8000, target_sr=16000)
                sf.write(folder / "wav" / f"{stem}.flac", audio, 16000, subtype="PCM_16")
                audio_cell = f"wav/{stem}.flac"
            else:
                sf.write(folder / "wav" / f"{stem}.wav", fsdd.clips[clip], 8000, subtype="PCM_16")
                audio_cell = f"wav/{stem}.wav"
            text_cell = "" if not image_cell else (name.upper() if k % 2 == 0 else f" {name} ")
            rows.append({"id": stem, "image": image_cell, "audio": audio_cell, "text": text_cell, "label": name,
                         "group": f"take{take}"})
    columns = ["id", *modalities, "label", "group"]
    rows = [{c: r[c] for c in columns} for r in rows]
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder
