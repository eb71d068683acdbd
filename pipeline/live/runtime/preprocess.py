"""Raw synced payloads -> model-ready inputs (the step between sync and the engine).

The transforms are the single definition in :mod:`pipeline.data.preprocessing` (the same object
the data set builders and the importer use), with the default parameters unless a
:class:`~exitflow.pipeline.data.preprocessing.Preprocessing` is passed (an imported set's or a
bundle's ``preprocessing.json``):

- image: uint8 HxW (gray) or HxWxC (BGR/BGRA) -> gray, area-resized to 28x28, float32 in [0, 1],
  shape (1, 28, 28);
- audio: :class:`~exitflow.pipeline.live.core.sync.AudioWindow` -> the data sets' spectrogram, shape
  (1, 112, 112) float32 (any sample rate, resampled);
- text: the string (``text_encoding: string``, the default: unchanged) or its character grid
  (``chars``).

A payload that cannot be converted (empty frame, wrong dtype or shape, silent, too-short or
non-finite audio) moves its modality to ``missing`` and is counted in ``drops`` as
``"<modality>:<ExceptionType>"``; whatever the payload, it never raises.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from exitflow.pipeline.data.preprocessing import DEFAULT_PREPROCESSING, Preprocessing
from exitflow.pipeline.data.spectrogram import AudioInputError
from exitflow.pipeline.live.core.sync import AudioWindow
from exitflow.pipeline.messages import Sample

log = logging.getLogger(__name__)

IMAGE_SIDE = DEFAULT_PREPROCESSING.image_side


def model_preprocessing(cfg: Any) -> Preprocessing:
    """The preprocessing the configured model expects: a bundle's (``engine.bundle``) or the defaults.

    ``cfg`` may be None or not a whole config (an engine factory's own argument): defaults then.
    """
    engine = getattr(cfg, "engine", None)
    if not getattr(engine, "bundle", None):
        return DEFAULT_PREPROCESSING
    from exitflow.pipeline.bundles.load import preprocessing_of  # torch-heavy: only with a bundle

    return preprocessing_of(cfg)


def preprocess_image(frame: np.ndarray, preprocessing: Preprocessing = DEFAULT_PREPROCESSING) -> np.ndarray:
    """uint8 (H, W) or (H, W, C) -> float32 (1, side, side) (28x28 in [0, 1] by default).

    Raises:
        ValueError: for an empty frame or one that is not 2-D/3-D.
    """
    return preprocessing.image(frame)


def preprocess_audio(clip: AudioWindow, preprocessing: Preprocessing = DEFAULT_PREPROCESSING) -> np.ndarray:
    """AudioWindow -> float32 (1, 112, 112) spectrogram (same transform as the data sets)."""
    return preprocessing.audio(clip.samples, clip.sample_rate_hz)


def preprocess_sample(
    sample: Sample, drops: dict[str, int] | None = None, preprocessing: Preprocessing = DEFAULT_PREPROCESSING
) -> Sample:
    """A copy of ``sample`` with model-ready payloads (``sample`` itself when it is model-ready already);
    failures become ``missing``.

    Args:
        sample: Raw synced payloads.
        drops: Counter bumped per failed payload (``"audio:AudioInputError"``), or None.
        preprocessing: The transforms' parameters (the defaults, or an imported set's / a bundle's).
    """
    payloads: dict[str, Any] = {}
    missing = set(sample.missing)
    for modality, payload in sample.payloads.items():
        if modality in missing:
            continue
        try:
            if modality == "image" and isinstance(payload, np.ndarray) and payload.dtype == np.uint8:
                payloads[modality] = preprocess_image(payload, preprocessing)
            elif modality == "audio" and isinstance(payload, AudioWindow):
                payloads[modality] = preprocess_audio(payload, preprocessing)
            elif modality == "text" and isinstance(payload, str) and preprocessing.text_encoding != "string":
                payloads[modality] = preprocessing.text_input(payload)
            else:
                payloads[modality] = payload
        except Exception as e:  # noqa: BLE001 - cv2.error, MemoryError, ...: this payload is dropped
            key = f"{modality}:{type(e).__name__}"
            if drops is not None:
                drops[key] = drops.get(key, 0) + 1
            level = logging.WARNING if isinstance(e, (ValueError, AudioInputError)) else logging.ERROR
            log.log(level, "preprocess: sample %s: %s dropped: %s", sample.sample_id, modality, e)
            missing.add(modality)
    if len(payloads) == len(sample.payloads) and len(missing) == len(sample.missing) and all(
            payloads[m] is p for m, p in sample.payloads.items()):
        return sample  # model-ready already: nothing to copy (the batch path of a replica)
    return dataclasses.replace(sample, payloads=payloads, missing=frozenset(missing))
