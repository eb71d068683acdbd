"""Which FSDD speakers train, calibrate and test the audio, and which recordings each split uses.

Calibration (exit temperatures, thresholds, the exit profile, the operating point) must come
from voices the encoders never heard, and ``test`` must measure a new voice, so AV-MNIST's
audio pools are speaker-disjoint:

========= ===================================== ===============================================
split     audio recordings                      purpose
========= ===================================== ===============================================
train     train speakers, repetition index 0-39 encoder training (MNIST train rows)
val       the calibration speaker, every index  calibration (MNIST train rows, the last val_size)
test      the test speaker, every index         unseen voice, unseen images (MNIST test rows)
test_id   train speakers, index 40-49           in-distribution: known voices, unheard
                                                recordings, unseen images (MNIST test rows)
========= ===================================== ===============================================

Roles, in order of precedence:

1. ``ROOT/fsdd/speaker_roles.json`` (``{"train": [...], "val": [...], "test": [...]}``) when the
   root declares them (the embedded slice does, so its splits equal the full build's).
2. A full root (MNIST train present) with at least three speakers: speakers sorted by name;
   the last one tests, the one before it calibrates, the others train. On ``../shared/data``
   (george, jackson, lucas, nicolas, theo): train george/jackson/lucas, val nicolas, test theo.
3. A test-only root (no MNIST train, e.g. a user's own recordings, even of one speaker): every
   speaker it holds is a test speaker; ``test`` is built from all its recordings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exitflow.pipeline.errors import DataError

ROLES_FILE = "speaker_roles.json"
TEST_ID_MIN_INDEX = 40  # train speakers' recordings 40-49 are held out for test_id
MIN_SPEAKERS_FULL = 3


@dataclass(frozen=True)
class SpeakerRoles:
    """Speaker names per role; a name need not be present in the root's archives."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    source: str  # "declared", "rule" or "test-only root"

    def to_dict(self) -> dict[str, object]:
        return {"train": list(self.train), "val": list(self.val), "test": list(self.test), "source": self.source}


def speaker_roles(root: Path, speakers: np.ndarray, full_root: bool) -> SpeakerRoles:
    """The roles of the speakers in ``root`` (see the module doc for the rule).

    Args:
        root: The data root (``ROOT/fsdd/speaker_roles.json`` is read when present).
        speakers: (R,) speaker name of every recording in the root.
        full_root: Whether the root holds MNIST train (so train/val can be built).

    Raises:
        DataError: a malformed roles file, overlapping roles, or a full root with fewer than
            three speakers and no roles file.
    """
    present = sorted({str(s) for s in speakers.tolist()})
    path = root / "fsdd" / ROLES_FILE
    if path.is_file():
        try:
            raw = json.loads(path.read_text())
            roles = SpeakerRoles(*(tuple(sorted(str(s) for s in raw[k])) for k in ("train", "val", "test")), "declared")
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{path}: expected {{'train': [...], 'val': [...], 'test': [...]}} ({e})") from e
    elif full_root:
        if len(present) < MIN_SPEAKERS_FULL:
            raise DataError(
                f"{root / 'fsdd'} holds {len(present)} speaker(s) {present}; a full build needs at least "
                f"{MIN_SPEAKERS_FULL} (train, calibration, test) or a {ROLES_FILE} naming the roles"
            )
        roles = SpeakerRoles(tuple(present[:-2]), (present[-2],), (present[-1],), "rule")
    else:
        roles = SpeakerRoles((), (), tuple(present), "test-only root")
    named = [*roles.train, *roles.val, *roles.test]
    if len(named) != len(set(named)):
        raise DataError(f"speaker roles overlap: {roles.to_dict()}; each speaker may have one role")
    return roles


def split_pools(roles: SpeakerRoles, speakers: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Recording ids (into the root's recordings) of each split's audio pool; empty pools left out."""
    train_spk = np.isin(speakers, roles.train)
    masks = {
        "train": train_spk & (indices < TEST_ID_MIN_INDEX),
        "val": np.isin(speakers, roles.val),
        "test": np.isin(speakers, roles.test),
        "test_id": train_spk & (indices >= TEST_ID_MIN_INDEX),
    }
    return {name: np.flatnonzero(mask) for name, mask in masks.items() if mask.any()}
