"""The public Python API: the README's example runs as written, and ``exitflow`` stays small."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import exitflow

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    if match is None:
        raise ValueError("README's Python API section has no ```python block")
    return match.group(1)


def test_public_names_are_the_documented_few() -> None:
    assert set(exitflow.__all__) == {
        "LiveRun", "bench", "build_engine", "load_bundle", "load_config", "load_samples", "open_meter", "process",
        "process_batch", "start_live",
    }


@pytest.mark.slow
def test_readme_example_runs(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                             tmp_path: Path) -> None:
    monkeypatch.setenv("EXITFLOW_HOME", str(tmp_path))  # outputs of the default config stay out of the repo
    code = readme_example().replace('overrides=["bench.limit=50"]',
                                    f'overrides=["bench.limit=50", "data.cache_dir={tmp_path}/cache"]')
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 6  # five decisions and the window
    prediction, label = lines[0].split()[:2]
    assert 0 <= int(prediction) <= 9 and 0 <= int(label) <= 9
