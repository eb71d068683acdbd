"""The manifest of a user data set: one row per sample, written by hand (CSV, JSONL or Parquet).

A data set folder ``DIR`` holds one manifest file (``manifest.csv``, ``manifest.jsonl`` or
``manifest.parquet``) and the files it names. Columns:

- ``image``: path of a PNG/JPEG file;
- ``audio``: path of a WAV/FLAC file (mono or mixed to mono, any sample rate);
- ``text``: the string itself, or the path of a ``.txt`` file (a value ending in ``.txt``);
- ``label``: the class name (required); names become ids through ``classes.json``;
- ``split`` (optional): ``train``, ``val`` or ``test``; when the column is absent the importer
  makes group-disjoint splits;
- ``group`` (optional): speaker, session, recording... Rows of one group never straddle splits;
- ``id`` (optional): a sample name, kept for reports.

At least one modality column; any modality cell may be empty for a sample (not all of them).
Paths are relative to ``DIR`` (absolute paths work too). Optional beside the manifest:
``classes.json`` (a list of class names: fixes the id order; labels not in it are errors) and
``preprocessing.json`` (fields of :class:`~exitflow.pipeline.data.preprocessing.Preprocessing`).

This module only reads the table and checks its shape; decoding the files is the importer's.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from exitflow.pipeline.errors import DataError

MODALITY_COLUMNS = ("image", "audio", "text")
OTHER_COLUMNS = ("label", "split", "group", "id")
ALLOWED_COLUMNS = MODALITY_COLUMNS + OTHER_COLUMNS
SPLIT_NAMES = ("train", "val", "test")
MANIFEST_NAMES = ("manifest.csv", "manifest.jsonl", "manifest.parquet")


class ManifestError(DataError):
    """A manifest with problems; ``problems`` holds one line per problem (every one found, not the first)."""

    def __init__(self, problems: list[str], source: str):
        self.problems = list(problems)
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n" + "\n".join(f"  {p}" for p in self.problems))


@dataclass(frozen=True)
class ManifestRow:
    """One sample as written: ``line`` is its line in the file (CSV: the header is line 1)."""

    line: int
    label: str
    cells: dict[str, str]  # modality -> path or text ("" when empty)
    split: str = ""
    group: str = ""
    sample_id: str = ""


@dataclass(frozen=True)
class Manifest:
    path: Path
    modalities: tuple[str, ...]  # the modality columns present, in MODALITY_COLUMNS order
    rows: list[ManifestRow]
    has_split: bool
    has_group: bool
    problems: list[str] = field(default_factory=list)  # per-row shape problems (empty label, bad split)


def find_manifest(folder: Path) -> Path:
    """The one manifest file of ``folder``."""
    if not folder.is_dir():
        raise DataError(f"data set folder {folder} does not exist")
    found = [folder / n for n in MANIFEST_NAMES if (folder / n).is_file()]
    if not found:
        raise DataError(f"{folder} has no manifest; write one of {', '.join(MANIFEST_NAMES)} (see docs/own_data.md)")
    if len(found) > 1:
        raise DataError(f"{folder} has {len(found)} manifests ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def _read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, object]]]]:
    """Column names and (line, row) pairs of a CSV, JSONL or Parquet file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                columns = [c.strip() for c in (reader.fieldnames or [])]
                rows = []
                for row in reader:
                    if None in row:
                        raise ManifestError([f"line {reader.line_num}: more cells than the header has columns"], str(path))
                    rows.append((reader.line_num, {k.strip(): v for k, v in row.items()}))
                return columns, rows
        if suffix == ".jsonl":
            columns_seen: dict[str, None] = {}
            rows = []
            for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
                if not text.strip():
                    continue
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise ManifestError([f"line {n}: not JSON ({e.msg})"], str(path)) from e
                if not isinstance(obj, dict):
                    raise ManifestError([f"line {n}: expected a JSON object, got {type(obj).__name__}"], str(path))
                columns_seen.update(dict.fromkeys(obj))
                rows.append((n, obj))
            return list(columns_seen), rows
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise DataError(f"{path}: reading Parquet needs pyarrow (`pip install pyarrow`), or write "
                                f"manifest.csv / manifest.jsonl instead") from e
            table = pq.read_table(path)
            return list(table.column_names), [(i + 1, r) for i, r in enumerate(table.to_pylist())]
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e})") from e
    raise DataError(f"{path}: manifests are .csv, .jsonl or .parquet, not {suffix!r}")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from Parquet / pandas
        return ""
    return str(value).strip()


def read_manifest(path: Path) -> Manifest:
    """Read ``path`` and check its columns; column problems raise, row problems are collected.

    Raises:
        ManifestError: unknown columns, no ``label`` column, no modality column, no rows.
    """
    columns, raw = _read_table(path)
    problems = []
    unknown = [c for c in columns if c not in ALLOWED_COLUMNS]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(ALLOWED_COLUMNS)}")
    if "label" not in columns:
        problems.append("no 'label' column (the class name of each sample)")
    modalities = tuple(m for m in MODALITY_COLUMNS if m in columns)
    if not modalities:
        problems.append(f"no modality column; add at least one of {', '.join(MODALITY_COLUMNS)}")
    if not raw:
        problems.append("no rows")
    if problems:
        raise ManifestError(problems, str(path))
    rows, row_problems = [], []
    for line, r in raw:
        cells = {m: _cell(r.get(m)) for m in modalities}
        label, split = _cell(r.get("label")), _cell(r.get("split")).lower()
        if not label:
            row_problems.append(f"line {line}: empty label")
        if not any(cells.values()):
            row_problems.append(f"line {line}: every modality is empty ({', '.join(modalities)})")
        if "split" in columns and split not in SPLIT_NAMES:
            row_problems.append(f"line {line}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
        rows.append(ManifestRow(line, label, cells, split, _cell(r.get("group")), _cell(r.get("id"))))
    for m in modalities:
        if not any(r.cells[m] for r in rows):
            row_problems.append(f"column {m!r} has no value in any row; drop the column or fill it")
    return Manifest(path, modalities, rows, "split" in columns, "group" in columns, row_problems)


def read_class_list(folder: Path) -> list[str] | None:
    """``folder/classes.json`` (a list of distinct, non-empty names), or None when absent."""
    path = folder / "classes.json"
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{path} must be a JSON list of class names, e.g. [\"stop\", \"go\"]")
    if len(set(names)) != len(names):
        raise DataError(f"{path} names a class twice")
    return [n.strip() for n in names]
