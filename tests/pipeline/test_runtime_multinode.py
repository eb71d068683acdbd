"""Two Ray nodes on loopback (head + worker): sources on one node, the engine on the other.

Kept apart from test_runtime.py because a process holds one Ray connection at a time; the
cluster is always stopped in a ``finally``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from exitflow.pipeline.config import RayConfig, SourceConfig, StreamConfig  # noqa: E402
from exitflow.pipeline.live.runtime import LivePipeline, start_ray  # noqa: E402
from tests.pipeline.test_runtime import GRID_CLIP, RuleEngine, needs_grid  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@needs_grid
def test_sources_and_engine_run_on_different_nodes(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    cluster = None
    pipe = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "resources": {"sensor_node": 4}, "include_dashboard": False},
        )
        cluster.add_node(num_cpus=1, resources={"engine_node": 4})
        cluster.wait_for_nodes()
        # joined the way `exitflow run` joins a cluster: probed, then one throw-away join, then ray.init
        assert start_ray(RayConfig(address=cluster.address, namespace="exitflow-multinode", connect_timeout_s=60))
        lines = tmp_path / "ops.txt"
        lines.write_text("".join(f"line {i}\n" for i in range(50)))
        stream = StreamConfig(
            sources=(
                SourceConfig(
                    name="cam", kind="camera", uri=str(GRID_CLIP), loop=True, resources={"sensor_node": 1}
                ),
                SourceConfig(
                    name="txt", kind="text_file", uri=str(lines), line_rate_hz=5, resources={"sensor_node": 1}
                ),
            ),
            engine_num_cpus=0.5,
            engine_resources={"engine_node": 1},
        )
        pipe = LivePipeline(stream, RuleEngine)
        pipe.start()
        nodes = pipe.wait_ready(timeout_s=120)
        end = time.monotonic() + 90  # wait for enough decisions, not a fixed time (loaded machines)
        while time.monotonic() < end and (len(pipe.decisions) < 20 or all(d.missing for d in pipe.decisions)):
            pipe.step()
    finally:
        if pipe is not None:
            try:
                pipe.shutdown()
            except Exception:  # noqa: BLE001 - the cluster goes down next anyway
                pass
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    assert nodes["cam"] == nodes["txt"] != nodes["engine"]
    assert len(pipe.decisions) >= 20
    assert any(not d.missing for d in pipe.decisions)
