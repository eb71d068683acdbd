"""The one preprocessing definition: raw frames, PCM clips and strings -> model-ready inputs.

Every path that turns raw sensor data into encoder inputs calls a :class:`Preprocessing`: the
AV-MNIST builder (audio), the importer of user data sets (``pipeline/data/importer.py``), the
live ``preprocess`` step (``pipeline/live/runtime/preprocess.py``) and, through the stored
``preprocessing.json`` of an imported set or a bundle, replay and the live runtime. So a model
is fed at run time exactly what it was trained on (no train/serve skew).

- image: uint8 (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA (uint16 too) -> gray, area-resized
  to ``image_side`` x ``image_side``, scaled to [0, 1], then ``(x - image_mean) / image_std``;
  float32 (1, side, side).
- audio: mono PCM (int16 or float in [-1, 1]) at any rate -> resampled to ``audio_rate_hz`` ->
  the (112, 112) log-power spectrogram of :func:`pipeline.data.spectrogram.spectrogram_112`;
  float32 (1, 112, 112) in [0, 1].
- text: cut to ``text_max_chars``; with ``text_normalize`` also stripped, whitespace collapsed
  and lower-cased. With ``text_encoding: chars`` the string also becomes a one-hot character
  grid float32 (1, text_max_chars, text_max_chars) (row = position, column = symbol of
  :data:`TEXT_ALPHABET`, the last column for any other symbol), the input of a character CNN;
  with ``string`` (the default) encoders receive the string (the BERT text encoder tokenizes it).

The defaults reproduce the tensors exitflow has always used (28x28 gray image in [0, 1], the
8 kHz 112x112 spectrogram, the string unchanged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from exitflow.pipeline.data.spectrogram import SPEC_BINS, SPEC_SAMPLE_RATE_HZ, TOP_DB, spectrogram_112

PREPROCESSING_VERSION = 1
TEXT_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 '-"  # + one column for anything else
TEXT_ENCODINGS = ("string", "chars")


class PreprocessingError(ValueError):
    """Preprocessing parameters that are malformed or not supported (the message names the field)."""


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become encoder inputs (see the module doc).

    Attributes:
        image_side: Side in pixels of the square, resized image.
        image_gray: Convert colour frames to one gray channel (the only layout the CNN encoders read).
        image_mean: Subtracted after scaling to [0, 1].
        image_std: Divides after subtracting ``image_mean``.
        audio_rate_hz: Every clip is resampled to this rate before the spectrogram.
        spec_bins: Frequency bins and time frames of the spectrogram.
        spec_top_db: Dynamic range of the spectrogram in dB.
        text_max_chars: Longer strings are cut; also the side of the ``chars`` grid.
        text_normalize: Strip, collapse whitespace and lower-case strings.
        text_encoding: ``string`` (encoders receive text) or ``chars`` (a one-hot character grid).
    """

    image_side: int = 28
    image_gray: bool = True
    image_mean: float = 0.0
    image_std: float = 1.0
    audio_rate_hz: int = SPEC_SAMPLE_RATE_HZ
    spec_bins: int = SPEC_BINS
    spec_top_db: float = TOP_DB
    text_max_chars: int = 512
    text_normalize: bool = False
    text_encoding: str = "string"

    def __post_init__(self) -> None:
        problems = []
        for name in ("image_side", "text_max_chars", "audio_rate_hz", "spec_bins"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        for name in ("image_gray", "text_normalize"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("image_mean", "image_std", "spec_top_db"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                problems.append(f"{name} must be a finite number, got {value!r}")
        if not problems and self.image_std <= 0:
            problems.append(f"image_std must be positive, got {self.image_std}")
        if not self.image_gray:
            problems.append("image_gray: false is not supported yet (the CNN encoders read one gray channel)")
        # the spectrogram is defined for one rate / size / range (pipeline/data/spectrogram.py)
        fixed = {"audio_rate_hz": SPEC_SAMPLE_RATE_HZ, "spec_bins": SPEC_BINS, "spec_top_db": TOP_DB}
        for name, supported in fixed.items():
            if not problems and getattr(self, name) != supported:
                problems.append(f"{name}={getattr(self, name)} is not supported; this exitflow version computes "
                                f"the spectrogram at {name}={supported} only")
        if self.text_encoding not in TEXT_ENCODINGS:
            problems.append(f"text_encoding must be one of {', '.join(TEXT_ENCODINGS)}, got {self.text_encoding!r}")
        if problems:
            raise PreprocessingError("preprocessing: " + "; ".join(problems))

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Every field plus ``version`` (JSON-ready)."""
        return {"version": PREPROCESSING_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Any) -> Preprocessing:
        """The inverse of :meth:`to_dict`; missing fields take their defaults.

        Raises:
            PreprocessingError: not a mapping, another version, an unknown field or a bad value.
        """
        if not isinstance(data, dict):
            raise PreprocessingError(f"preprocessing must be a mapping of fields, got {type(data).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k != "version"}
        version = data.get("version", PREPROCESSING_VERSION)
        if version != PREPROCESSING_VERSION:
            raise PreprocessingError(
                f"preprocessing version {version!r} is not {PREPROCESSING_VERSION}; it was written by another "
                f"exitflow version: re-import the data set (or re-export the bundle) with this one")
        unknown = sorted(set(values) - fields)
        if unknown:
            raise PreprocessingError(f"preprocessing: unknown field(s) {', '.join(unknown)}; "
                                     f"allowed: {', '.join(sorted(fields))}")
        if "image_mean" in values and isinstance(values["image_mean"], int):
            values["image_mean"] = float(values["image_mean"])
        return cls(**values)

    # -- the transforms --------------------------------------------------------------------------
    def image(self, frame: np.ndarray) -> np.ndarray:
        """uint8/uint16/float (H, W), (H, W, 3) BGR or (H, W, 4) BGRA -> float32 (1, side, side).

        Raises:
            ValueError: for an empty frame or one that is not 2-D/3-D.
        """
        x = np.asarray(frame)
        if x.ndim == 3 and x.size:
            if x.shape[2] == 3:
                x = cv2.cvtColor(x, cv2.COLOR_BGR2GRAY)
            elif x.shape[2] == 4:
                x = cv2.cvtColor(x, cv2.COLOR_BGRA2GRAY)
            else:
                x = x[..., 0]
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"expected a frame of shape (H, W) or (H, W, C), got shape {np.shape(frame)}")
        side = self.image_side
        small = cv2.resize(x, (side, side), interpolation=cv2.INTER_AREA)  # (side, side)
        scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(small.dtype, 1.0)
        out = small.astype(np.float32) / scale
        if self.image_mean != 0.0 or self.image_std != 1.0:
            out = (out - np.float32(self.image_mean)) / np.float32(self.image_std)
        return out[None]  # (1, side, side)

    def audio(self, samples: np.ndarray, rate_hz: int) -> np.ndarray:
        """Mono PCM at ``rate_hz`` -> float32 (1, 112, 112) spectrogram (resampled as needed).

        Raises:
            AudioInputError: for non-1-D input, too few samples, non-finite values or a bad rate.
        """
        return spectrogram_112(samples, int(rate_hz))[None]  # (1, 112, 112)

    def text(self, s: str) -> str:
        """``s`` normalised (``text_normalize``: stripped, whitespace collapsed, lower-cased), cut to
        ``text_max_chars``."""
        if not isinstance(s, str):
            raise ValueError(f"expected text as str, got {type(s).__name__}")
        out = " ".join(s.split()).lower() if self.text_normalize else s
        return out[: self.text_max_chars]

    def text_grid(self, s: str) -> np.ndarray:
        """``text(s)`` as a one-hot character grid, float32 (1, text_max_chars, text_max_chars)."""
        t = self.text(s)
        n = self.text_max_chars
        if len(TEXT_ALPHABET) + 1 > n:
            raise PreprocessingError(f"text_encoding: chars needs text_max_chars >= {len(TEXT_ALPHABET) + 1}, got {n}")
        grid = np.zeros((1, n, n), dtype=np.float32)
        other = len(TEXT_ALPHABET)
        for i, ch in enumerate(t):
            j = TEXT_ALPHABET.find(ch)
            grid[0, i, other if j < 0 else j] = 1.0
        return grid

    def text_input(self, s: str) -> str | np.ndarray:
        """What a text encoder receives: :meth:`text` (``string``) or :meth:`text_grid` (``chars``)."""
        return self.text_grid(s) if self.text_encoding == "chars" else self.text(s)

    def input_shape(self, modality: str) -> tuple[int, int, int]:
        """Shape (C, H, W) of one model-ready tensor of ``modality``."""
        shapes = {"image": (1, self.image_side, self.image_side), "audio": (1, self.spec_bins, self.spec_bins),
                  "text": (1, self.text_max_chars, self.text_max_chars)}
        if modality not in shapes:
            raise ValueError(f"unknown modality {modality!r}; choose one of {', '.join(shapes)}")
        return shapes[modality]


DEFAULT_PREPROCESSING = Preprocessing()
