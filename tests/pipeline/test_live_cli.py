"""`exitflow replay FILE.mcap` and `exitflow run` refuse bad options with one line, before any work."""

from __future__ import annotations

import pytest

from exitflow.pipeline.cli import main


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--rate", "0"], "--rate must be a finite number > 0"),
        (["--rate", "nan"], "--rate must be a finite number > 0"),
        (["--rate=-inf"], "--rate must be a finite number > 0"),
        (["--start", "nan"], "--start must be a finite number of seconds >= 0"),
        (["--start", "inf"], "--start must be a finite number of seconds >= 0"),
        (["--start", "-1"], "--start must be a finite number of seconds >= 0"),
        (["--realtime", "--fast"], "choose one of --realtime and --fast"),
        (["--decisions", "{file}/out.jsonl"], "is a file, not a folder"),
        (["--decisions", "{dir}"], "is a folder; give a file path"),
        (["--json", "{file}/x/summary.json"], "is a file, not a folder"),
    ],
)
def test_replay_options_are_checked_before_any_work(tmp_path, capsys, extra, needle):
    rec = tmp_path / "rec.mcap"
    rec.write_bytes(b"")
    extra = [x.format(file=rec, dir=tmp_path) for x in extra]
    assert main(["replay", str(rec), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_replay_of_a_missing_recording_is_one_line(tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.mcap")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "needle"), [
    (["--duration", "nan"], "--duration must be a finite number"),
    (["--duration", "0"], "--duration must be a finite number"),
    (["--decisions", "{dir}"], "is a folder"),
    (["--record", "{file}/x.mcap"], "is a file, not a folder"),
])
def test_run_options_are_checked_before_ray_starts(tmp_path, capsys, extra, needle):
    afile = tmp_path / "f"
    afile.write_text("x")
    extra = [x.format(file=afile, dir=tmp_path) for x in extra]
    assert main(["run", "--no-view", *extra]) == 2
    assert needle in capsys.readouterr().err
