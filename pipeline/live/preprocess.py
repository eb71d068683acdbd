"""Raw synced payloads -> model-ready inputs (the step between sync and the engine).

- image: uint8 HxW (gray) or HxWx3 (BGR) -> gray, area-resized to 28x28, float32 in [0, 1],
  shape (1, 28, 28);
- audio: :class:`~exitflow.pipeline.live.sync.AudioWindow` -> the data sets' spectrogram
  (:func:`pipeline.data.spectrogram.spectrogram_112`), shape (1, 112, 112) float32;
- text: unchanged ``str``.

A payload that cannot be converted (empty frame, wrong dtype or shape, silent, too-short or
non-finite audio) moves its modality to ``missing`` and is counted in ``drops`` as
``"<modality>:<ExceptionType>"``; whatever the payload, it never raises.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import cv2
import numpy as np

from exitflow.pipeline.data.spectrogram import AudioInputError, spectrogram_112
from exitflow.pipeline.live.sync import AudioWindow
from exitflow.pipeline.messages import Sample

log = logging.getLogger(__name__)

IMAGE_SIDE = 28


def preprocess_image(frame: np.ndarray) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> float32 (1, 28, 28) in [0, 1].

    Raises:
        ValueError: for an empty frame or one that is not 2-D/3-D.
    """
    x = np.asarray(frame)
    if x.ndim == 3:
        x = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) if x.shape[2] == 3 else x[..., 0]
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"expected a frame of shape (H, W) or (H, W, C), got shape {np.shape(frame)}")
    small = cv2.resize(x, (IMAGE_SIDE, IMAGE_SIDE), interpolation=cv2.INTER_AREA)  # (28, 28)
    scale = 255.0 if small.dtype == np.uint8 else 1.0
    return (small.astype(np.float32) / scale)[None]  # (1, 28, 28)


def preprocess_audio(clip: AudioWindow) -> np.ndarray:
    """AudioWindow -> float32 (1, 112, 112) spectrogram (same transform as the data sets)."""
    return spectrogram_112(clip.samples, clip.sample_rate_hz)[None]  # (1, 112, 112)


def preprocess_sample(sample: Sample, drops: dict[str, int] | None = None) -> Sample:
    """A copy of ``sample`` with model-ready payloads; failures become ``missing``.

    Args:
        sample: Raw synced payloads.
        drops: Counter bumped per failed payload (``"audio:AudioInputError"``), or None.
    """
    payloads: dict[str, Any] = {}
    missing = set(sample.missing)
    for modality, payload in sample.payloads.items():
        if modality in missing:
            continue
        try:
            if modality == "image" and isinstance(payload, np.ndarray) and payload.dtype == np.uint8:
                payloads[modality] = preprocess_image(payload)
            elif modality == "audio" and isinstance(payload, AudioWindow):
                payloads[modality] = preprocess_audio(payload)
            else:
                payloads[modality] = payload
        except Exception as e:  # noqa: BLE001 - cv2.error, MemoryError, ...: this payload is dropped
            key = f"{modality}:{type(e).__name__}"
            if drops is not None:
                drops[key] = drops.get(key, 0) + 1
            level = logging.WARNING if isinstance(e, (ValueError, AudioInputError)) else logging.ERROR
            log.log(level, "preprocess: sample %s: %s dropped: %s", sample.sample_id, modality, e)
            missing.add(modality)
    return dataclasses.replace(sample, payloads=payloads, missing=frozenset(missing))
