"""One- and three-modality variants of the spoken-command example (``build_manifest.py``'s folder).

- ``audio``: the same rows with the audio column only (the microphone alone).
- ``three``: the same rows plus an ``image`` column. **The image is constructed**, not recorded with
  the command (no such recordings exist here): for 60 % of the command rows (seeded) a handwritten
  MNIST test digit of the spoken number, each MNIST image used once (so no image is in two splits);
  for 60 % of the ``other`` rows a random 56x56 gray crop of one of the 51 COCO photos in
  ``../shared/data/coco_captions_mini`` (the camera sees something that is not a digit). The other
  rows have no image. Text and audio are those of the source rows.

The audio files are not copied: each variant's ``audio`` is a symbolic link to the source's.

Usage::

    python examples/commands/variants.py runs/commands runs/commands_audio runs/commands_three
    exitflow data import runs/commands_audio; exitflow data import runs/commands_three
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import cv2
import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SHARE = 0.6
CROP = 56


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_rows(folder: Path, rows: list[dict[str, str]], columns: list[str], source: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "audio"
    if not link.exists():
        link.symlink_to((source / "audio").resolve(), target_is_directory=True)
    shutil.copyfile(source / "classes.json", folder / "classes.json")
    with (folder / "manifest.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: r[c] for c in columns} for r in rows)


def add_images(rows: list[dict[str, str]], out: Path, data: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with np.load(data / "mnist" / "mnist_test.npz") as z:
        images, labels = z["images"], z["labels"]
    with np.load(data / "coco_captions_mini" / "images_128.npz") as z:
        photos = z["images"]  # (51, 128, 128, 3) RGB
    pools = {d: list(rng.permutation(np.flatnonzero(labels == d))) for d in range(10)}
    (out / "image").mkdir(parents=True, exist_ok=True)
    for r in rows:
        r["image"] = ""
        if rng.random() >= IMAGE_SHARE:
            continue
        path = out / "image" / f"{r['id']}.png"
        if r["label"] in DIGITS:
            img = images[pools[DIGITS.index(r["label"])].pop()]
        else:
            photo = cv2.cvtColor(photos[int(rng.integers(len(photos)))], cv2.COLOR_RGB2GRAY)
            y, x = (int(v) for v in rng.integers(0, 128 - CROP, 2))
            img = photo[y : y + CROP, x : x + CROP]
        cv2.imwrite(str(path), img)
        r["image"] = str(path.relative_to(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the folder build_manifest.py wrote")
    parser.add_argument("audio_out", type=Path, help="the audio-only variant to write")
    parser.add_argument("three_out", type=Path, help="the image + audio + text variant to write")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = read_rows(args.source)
    write_rows(args.audio_out, rows, ["id", "audio", "label", "group"], args.source)
    add_images(rows, args.three_out, args.data, args.seed)
    write_rows(args.three_out, rows, ["id", "image", "audio", "text", "label", "group"], args.source)
    print(f"{args.audio_out}: {len(rows)} rows (audio); {args.three_out}: {len(rows)} rows, "
          f"{sum(bool(r['image']) for r in rows)} with an image")


if __name__ == "__main__":
    main()
