"""Spoken-style robot commands in the GRID grammar, for the text modality of ``avmnist-t``.

A GRID sentence has six slots: command, colour, preposition, letter, digit, adverb
("place red at b seven now"). In ``avmnist-t`` the digit slot carries the sample's label;
a configurable share of commands is corrupted as an ASR or typing error would be: the
digit word is dropped or replaced by another digit. The text is *constructed* (GRID's
grammar, exitflow's sampling) over the real MNIST images and FSDD recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMANDS = ("bin", "lay", "place", "set")
COLOURS = ("blue", "green", "red", "white")
PREPOSITIONS = ("at", "by", "in", "with")
LETTERS = tuple("abcdefghijklmnopqrstuvxyz")  # GRID has no "w"
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ADVERBS = ("again", "now", "please", "soon")
SLOTS = (COMMANDS, COLOURS, PREPOSITIONS, LETTERS, DIGITS, ADVERBS)
DIGIT_SLOT = 4

STATUS_OK, STATUS_DROPPED, STATUS_REPLACED = 0, 1, 2
STATUS_NAMES = ("ok", "dropped", "replaced")


@dataclass(frozen=True)
class CommandSet:
    """Commands for a list of labels.

    Attributes:
        text: The observed (possibly corrupted) command per sample.
        command: The true six-word command per sample (digit = label).
        status: (N,) int8, 0 ok / 1 digit dropped / 2 digit replaced.
    """

    text: list[str]
    command: list[str]
    status: np.ndarray


def make_commands(labels: np.ndarray, error_rate: float, seed: int, rows: np.ndarray | None = None) -> CommandSet:
    """Sample one GRID command per label, corrupting a share ``error_rate`` of the digit slots.

    Corrupted commands are split evenly at random between a dropped and a replaced digit;
    a replacement is uniform over the nine other digits. Each sample draws from its own
    generator seeded by ``(seed, rows[i])``, so a sample's command does not depend on which
    other samples are built with it (a slice equals the same rows of the full set).
    """
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"error_rate must be in [0, 1], got {error_rate}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError("labels must be digits 0-9")
    rows = np.arange(labels.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.shape != labels.shape:
        raise ValueError(f"rows must match labels in shape, got {rows.shape} vs {labels.shape}")
    sizes = [len(slot) for slot in SLOTS]
    texts, commands = [], []
    status = np.zeros(labels.shape[0], dtype=np.int8)
    for i, (label, row) in enumerate(zip(labels.tolist(), rows.tolist(), strict=True)):
        rng = np.random.default_rng([seed, row])
        picks = rng.integers(0, sizes)
        u_corrupt, u_drop = rng.random(2)
        shift = int(rng.integers(1, 10))  # replacement = (label + shift) % 10, never the label
        words = [SLOTS[s][picks[s]] for s in range(len(SLOTS))]
        words[DIGIT_SLOT] = DIGITS[label]
        commands.append(" ".join(words))
        if u_corrupt < error_rate:
            if u_drop < 0.5:
                status[i] = STATUS_DROPPED
                del words[DIGIT_SLOT]
            else:
                status[i] = STATUS_REPLACED
                words[DIGIT_SLOT] = DIGITS[(label + shift) % 10]
        texts.append(" ".join(words))
    return CommandSet(text=texts, command=commands, status=status)


def parse_command(text: str) -> list[str]:
    """Split a command into words, checking each against its GRID slot (six words expected)."""
    words = text.split()
    if len(words) != len(SLOTS):
        raise ValueError(f"a GRID command has {len(SLOTS)} words, got {len(words)}: {text!r}")
    for word, slot in zip(words, SLOTS, strict=True):
        if word not in slot:
            raise ValueError(f"{word!r} is not a GRID word for its slot (allowed: {', '.join(slot)})")
    return words
