"""The committed example recording: what Foxglove needs is in it, it replays, it plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcap.reader import make_reader

from exitflow.pipeline.cli import main
from exitflow.pipeline.evaluation.report import load_bench, pareto_front, running_mean, write_report

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples/grid_live.mcap"
RULE_ENGINE = "stream.engine=exitflow.pipeline.live.runtime.rule_engine:build_rule_engine"
YEAR_2020_NS = 1_577_836_800 * 10**9

pytestmark = pytest.mark.skipif(not EXAMPLE.exists(), reason="examples/grid_live.mcap is missing")


def test_the_example_opens_with_the_mcap_reader_as_the_issue_asks():
    assert EXAMPLE.stat().st_size <= 5 * 2**20
    with EXAMPLE.open("rb") as f:
        reader = make_reader(f)
        summary = reader.get_summary()
        assert summary is not None
        for channel in summary.channels.values():
            assert channel.schema_id in summary.schemas, f"{channel.topic} has no schema"
        names = {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()}
        assert names["/sensor/camera0"] in ("foxglove.CompressedImage", "foxglove.RawImage")
        assert names["/sensor/mic0"] == "foxglove.RawAudio" and names["/sensor/words"] == "foxglove.Log"
        assert summary.statistics.message_start_time > YEAR_2020_NS
        metadata = {m.name: m.metadata for m in reader.iter_metadata()}
        assert "stream:" in metadata["exitflow.config"]["yaml"]
        assert summary.statistics.channel_message_counts  # frames, audio, words, decisions
        assert len(summary.chunk_indexes) >= 5


def test_the_example_replays_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "d.jsonl"
    rc = main(["--set", RULE_ENGINE, "replay", str(EXAMPLE), "--fast", "--decisions", str(out),
               "--json", str(tmp_path / "s.json")])
    text = capsys.readouterr().out
    assert rc == 0, text
    summary = json.loads((tmp_path / "s.json").read_text())
    lines = out.read_text().splitlines()
    assert summary["decisions"] == len(lines) > 100 and summary["read"]["chunks_damaged"] == []
    assert "replayed" in text
    rc = main(["--set", RULE_ENGINE, "replay", str(EXAMPLE), "--fast", "--decisions", str(out),
               "--topics", "/sensor/camera0", "--start", "7", "--end", "9"])  # the camera starts at 5.3 s
    assert rc == 0
    part = out.read_text().splitlines()
    assert 0 < len(part) < len(lines) / 2


def test_a_damaged_example_replays_with_exit_code_3_and_says_what_was_lost(tmp_path, capsys):
    data = bytearray(EXAMPLE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path = tmp_path / "damaged.mcap"
    path.write_bytes(bytes(data))
    rc = main(["--set", RULE_ENGINE, "replay", str(path), "--fast", "--decisions", str(tmp_path / "d.jsonl")])
    err = capsys.readouterr().err
    assert rc == 3 and "damaged chunk(s) skipped" in err and "message(s) lost" in err


def test_a_copy_cut_to_53_percent_replays_with_a_warning_that_it_is_incomplete(tmp_path, capsys):
    data = EXAMPLE.read_bytes()
    path = tmp_path / "cut.mcap"
    path.write_bytes(data[: len(data) * 53 // 100])
    rc = main(["--set", RULE_ENGINE, "replay", str(path), "--fast", "--decisions", str(tmp_path / "d.jsonl")])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "the file is incomplete" in err and "message(s) kept" in err and " s (from 20" in err


def test_report_writes_the_four_plots_from_the_example(tmp_path, capsys):
    rc = main(["report", str(EXAMPLE), "--out", str(tmp_path)])
    assert rc == 0
    for name in ("exits", "budget", "latency", "pareto"):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
    assert main(["report", str(tmp_path / "nope.mcap")]) == 2


def test_bench_results_give_the_accuracy_pareto(tmp_path):
    bench = tmp_path / "bench.json"
    rows = [{"system": "full", "accuracy": 0.99, "macs_per_sample": 3e7, "mj_per_sample": 200.0},
            {"system": "lf", "accuracy": 0.98, "macs_per_sample": 1e7, "mj_per_sample": 100.0},
            {"system": "bad", "accuracy": 0.90, "macs_per_sample": 2e7, "mj_per_sample": 150.0}]
    bench.write_text(json.dumps(rows))
    assert [r["system"] for r in load_bench(bench)] == ["full", "lf", "bad"]
    assert write_report([bench], tmp_path / "out") == {"pareto": tmp_path / "out/pareto.png"}
    assert pareto_front([3e7, 1e7, 2e7], [0.99, 0.98, 0.90]) == [1, 0]
    assert running_mean([0, 1, 2, 10], [1, 3, 5, 7], window_s=1.5) == [1, 2, 4, 7]
