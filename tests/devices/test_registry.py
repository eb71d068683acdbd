from __future__ import annotations

import argparse
import json

import pytest

import exitflow.devices.nvml as nvml_mod
import exitflow.devices.zeus_meter as zeus_meter
from exitflow.devices import DeviceError, get_power_meter, probe_meters
from exitflow.devices.null import NullMeter
from exitflow.devices.psutil_meter import PsutilMeter
from exitflow.devices.rapl import RaplMeter
from exitflow.pipeline.commands import devices_cmd
from tests.devices.fakes import make_rapl_zone


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(nvml_mod, "pynvml", None)

    def no_zeus():
        raise DeviceError("zeus is not installed (test); install it with pip install 'exitflow[zeus]'")

    monkeypatch.setattr(zeus_meter, "load_zeus_monitor", no_zeus)


def test_auto_falls_back_to_psutil(tmp_path, no_gpu):
    meter = get_power_meter("auto", rapl_root=str(tmp_path / "none"), jetson_root=str(tmp_path / "none"))
    assert isinstance(meter, PsutilMeter)
    meter.close()


def test_auto_picks_rapl_when_readable(tmp_path, no_gpu):
    make_rapl_zone(tmp_path, "0", "package-0", 5, 1000)
    with get_power_meter("auto", rapl_root=str(tmp_path), jetson_root=str(tmp_path)) as meter:
        assert isinstance(meter, RaplMeter)


def test_explicit_names_and_errors(tmp_path, no_gpu):
    assert isinstance(get_power_meter("null"), NullMeter)
    with pytest.raises(DeviceError, match="replay_trace"):
        get_power_meter("replay")
    with pytest.raises(DeviceError, match="no RAPL zones"):
        get_power_meter("rapl", rapl_root=str(tmp_path))
    with pytest.raises(ValueError, match="unknown power meter"):
        get_power_meter("geiger")
    with pytest.raises(ValueError, match="unknown meter option"):
        get_power_meter("null", colour="red")


def test_probe_gives_one_line_per_meter(tmp_path, no_gpu):
    from exitflow.devices import MeterOptions

    chosen, results = probe_meters(MeterOptions(rapl_root=str(tmp_path), jetson_root=str(tmp_path)))
    assert chosen == "psutil"
    by_name = {r.name: r for r in results}
    assert set(by_name) == {"zeus", "nvml", "rapl", "jetson", "psutil", "replay", "mac_model", "null"}
    assert not by_name["zeus"].available and "exitflow[zeus]" in by_name["zeus"].detail
    assert not by_name["nvml"].available and "nvidia-ml-py" in by_name["nvml"].detail
    assert by_name["psutil"].available and by_name["psutil"].estimated
    assert all("\n" not in r.detail for r in results)


def _run_devices(tmp_path, *argv):
    """Run ``exitflow devices`` through its own parser (no other command modules imported)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default=str(tmp_path / "absent.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=["power.meter=psutil"])
    devices_cmd.register(parser.add_subparsers(dest="command"), {})
    args = parser.parse_args(["devices", *argv])
    return args.func(args, None)


def test_devices_command_json(capsys, tmp_path, no_gpu):
    rc = _run_devices(tmp_path, "--json")
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert out["selected"] == "psutil" and out["selected_available"]
    assert "active_power_per_core_mw" in out["selected_description"]
    assert len(out["meters"]) == 8


def test_devices_command_text(capsys, tmp_path, no_gpu):
    rc = _run_devices(tmp_path)
    out = capsys.readouterr().out
    assert rc == 0 and "psutil: ESTIMATE" in out and "idle_power_w" in out


@pytest.mark.slow
def test_devices_registered_in_cli(capsys, tmp_path, no_gpu):
    from exitflow.pipeline.cli import main

    rc = main(["--config", str(tmp_path / "absent.yaml"), "--set", "power.meter=psutil", "devices", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["selected"] == "psutil"


def test_auto_prefers_zeus_when_it_measures(tmp_path, monkeypatch):
    from exitflow.devices.zeus_meter import ZeusMeter
    from tests.devices.test_zeus import FakeZeusMonitor

    monkeypatch.setattr(zeus_meter, "ZeusMonitor", lambda **kw: FakeZeusMonitor(**kw))
    make_rapl_zone(tmp_path, "0", "package-0", 5, 1000)
    with get_power_meter("auto", rapl_root=str(tmp_path), jetson_root=str(tmp_path)) as meter:
        assert isinstance(meter, ZeusMeter)


def test_devices_report_names_host_and_zeus(tmp_path, no_gpu):
    from exitflow.devices import MeterOptions
    from exitflow.devices.registry import devices_report

    report = devices_report("auto", MeterOptions(rapl_root=str(tmp_path), jetson_root=str(tmp_path)))
    json.dumps(report)
    assert report["selected"] == "psutil" and report["selected_available"] and report["profile"] == "host"
    assert "host detected" in report["selected_description"]
    assert any(m["name"] == "zeus" and not m["available"] for m in report["meters"])
    host = report["host"]
    assert host["host"]["model_name"] is not None and host["host"]["logical_cpus"] >= 1
    assert host["basis"] and host["assumptions"]
    with pytest.raises(ValueError, match="unknown power meter"):
        devices_report("geiger")
