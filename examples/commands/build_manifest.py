"""Build the spoken-command example data set: a folder of WAV files plus ``manifest.csv``.

Real audio from ``../shared/data`` (nothing is downloaded):

- 10 command classes ``zero`` ... ``nine``: every Free Spoken Digit recording there (2,500 clips,
  5 speakers, 8 kHz), written out as WAV files; ``group`` = the speaker, so the importer's
  automatic splits put each speaker wholly in train, val or test (test = an unseen voice).
- an ``other`` class: LJ Speech clips (22.05 kHz, one reader) cut into 0.8 s windows (``group`` =
  the clip), and the first words of each GRID sentence (16 kHz; 0.45-1.20 s: verb, colour,
  preposition, before the letter and digit; ``group`` = the clip). The files keep their own
  sample rates; the importer resamples.

Second modality, ``text``: what a user typed with the command. It is **simulated** (seeded),
because no recordings come with typed text: 40 % of rows have none; otherwise the command word
(35 %), the word with one typo (30 %) or only its first letter (35 %, ambiguous between
two/three, four/five, six/seven). An ``other`` row's text, when present, is one or two real
words of its clip's transcript. So text alone is right on some rows, audio alone on others, and
fusion on more than either.

Usage::

    python examples/commands/build_manifest.py OUT_DIR [--data ../shared/data] [--seed 0]
    exitflow data import OUT_DIR
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import soundfile as sf

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LJ_WINDOW_S = 0.8
GRID_WINDOW_S = (0.45, 1.20)
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def typed_command(word: str, rng: np.random.Generator) -> str:
    """Simulated typing of ``word``: none, the word, the word with one typo, or its first letter."""
    if rng.random() < 0.4:
        return ""
    kind = rng.choice(["word", "typo", "initial"], p=[0.35, 0.30, 0.35])
    if kind == "word":
        return word
    if kind == "initial":
        return word[0]
    i = int(rng.integers(len(word)))
    edit = rng.choice(["swap", "drop", "replace"])
    if edit == "drop":
        return word[:i] + word[i + 1:]
    if edit == "swap" and i < len(word) - 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + LETTERS[int(rng.integers(26))] + word[i + 1:]


def typed_other(transcript: str, rng: np.random.Generator) -> str:
    """None (40 %) or one or two consecutive real words of ``transcript``."""
    words = [w.strip(".,;:!?\"'()").lower() for w in transcript.split()]
    words = [w for w in words if w and w not in DIGITS]
    if rng.random() < 0.4 or not words:
        return ""
    i = int(rng.integers(len(words)))
    return " ".join(words[i : i + int(rng.integers(1, 3))])


def fsdd_rows(data: Path, out: Path, rng: np.random.Generator) -> list[dict[str, str]]:
    rows = []
    for part in ("train", "test"):
        with np.load(data / "fsdd" / f"fsdd_{part}.npz", allow_pickle=False) as z:
            audio, offsets, labels = z["audio"], z["offsets"], z["labels"]
            speakers, names, rate = z["speakers"], z["filenames"], int(z["sample_rate"])
        for k in range(labels.shape[0]):
            name = Path(str(names[k])).stem
            path = out / "audio" / "fsdd" / f"{name}.wav"
            sf.write(path, audio[offsets[k] : offsets[k + 1]], rate, subtype="PCM_16")
            word = DIGITS[int(labels[k])]
            rows.append({"id": f"fsdd-{name}", "audio": str(path.relative_to(out)), "text": typed_command(word, rng),
                         "label": word, "group": f"speaker-{speakers[k]}"})
    return rows


def ljspeech_rows(data: Path, out: Path, rng: np.random.Generator) -> list[dict[str, str]]:
    root = data / "ljspeech_subset"
    transcripts = {}
    with (root / "metadata.csv").open(encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("|")
            transcripts[parts[0]] = parts[-1]
    rows = []
    for wav in sorted((root / "wavs").glob("*.wav")):
        samples, rate = sf.read(wav, dtype="int16")
        step = int(LJ_WINDOW_S * rate)
        for w in range(samples.shape[0] // step):
            path = out / "audio" / "ljspeech" / f"{wav.stem}_{w:02d}.wav"
            sf.write(path, samples[w * step : (w + 1) * step], rate, subtype="PCM_16")
            rows.append({"id": f"lj-{wav.stem}-{w}", "audio": str(path.relative_to(out)),
                         "text": typed_other(transcripts.get(wav.stem, ""), rng), "label": "other",
                         "group": f"lj-{wav.stem}"})
    return rows


def grid_rows(data: Path, out: Path, rng: np.random.Generator) -> list[dict[str, str]]:
    with np.load(data / "grid_av_samples" / "grid_decoded.npz", allow_pickle=False) as z:
        audio, names, transcripts, rate = z["audio"], z["names"], z["transcripts"], int(z["sample_rate"])
    rows = []
    start, end = (int(t * rate) for t in GRID_WINDOW_S)
    for k in range(names.shape[0]):
        path = out / "audio" / "grid" / f"{names[k]}.wav"
        sf.write(path, audio[k, start:end], rate, subtype="PCM_16")
        first_words = " ".join(str(transcripts[k]).split()[:3])  # what the window holds
        rows.append({"id": f"grid-{names[k]}", "audio": str(path.relative_to(out)),
                     "text": typed_other(first_words, rng), "label": "other", "group": f"grid-{names[k]}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write (audio/ and manifest.csv)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data",
                        help="the shared data root (default: ../shared/data beside the repo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated typing")
    args = parser.parse_args()
    for sub in ("fsdd", "ljspeech", "grid"):
        (args.out / "audio" / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    rows = fsdd_rows(args.data, args.out, rng) + ljspeech_rows(args.data, args.out, rng) + grid_rows(
        args.data, args.out, rng)
    with (args.out / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "audio", "text", "label", "group"])
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "classes.json").write_text('["' + '", "'.join((*DIGITS, "other")) + '"]\n')
    counts = {c: sum(r["label"] == c for r in rows) for c in (*DIGITS, "other")}
    print(f"wrote {len(rows)} rows to {args.out / 'manifest.csv'}: {counts}")
    print(f"rows with text: {sum(bool(r['text']) for r in rows)}; next: exitflow data import {args.out}")


if __name__ == "__main__":
    main()
