"""Two Ray nodes on loopback (head + worker): sources on one node, the engine and the shared inference
service on the other, the project shipped to both by ``runtime_env`` (no PYTHONPATH).

Kept apart from test_runtime.py because a process holds one Ray connection at a time; the
cluster is always stopped in a ``finally``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from exitflow.pipeline.config import RayConfig, ServiceConfig, SourceConfig, StreamConfig  # noqa: E402
from exitflow.pipeline.live.runtime.ray.pipeline import RayPipeline, start_ray  # noqa: E402
from exitflow.pipeline.live.runtime.ray.placement import job_runtime_env  # noqa: E402
from exitflow.pipeline.live.runtime.ray.service import InferenceService, service_shutdown  # noqa: E402
from exitflow.pipeline.messages import Sample  # noqa: E402
from tests.pipeline.test_runtime import GRID_CLIP, needs_grid  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RULE_ENGINE = "exitflow.pipeline.live.runtime.rule_engine:build_rule_engine"  # built inside the actor, from the shipped package


@pytest.mark.slow
@needs_grid
def test_sources_and_engine_run_on_different_nodes_with_the_project_shipped(tmp_path):
    if ray.is_initialized():
        ray.shutdown()
    old = os.environ.pop("PYTHONPATH", None)  # the nodes find the project only through runtime_env
    old_cwd = os.getcwd()
    os.chdir(tmp_path)  # Ray puts the driver's folder first on the workers' sys.path: not the checkout
    cluster = None
    pipe = None
    service = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 1, "resources": {"sensor_node": 4}, "include_dashboard": False},
        )
        cluster.add_node(num_cpus=1, resources={"engine_node": 4})
        cluster.wait_for_nodes()
        # joined the way `exitflow run` joins a cluster: probed, then one throw-away join, then ray.init
        # with the job's runtime_env carrying the project (stream.ship_project: auto, an address set)
        ray_cfg = RayConfig(address=cluster.address, namespace="exitflow-multinode", connect_timeout_s=60)
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
            engine_num_cpus=0.25,
            engine_resources={"engine_node": 1},
            ship_project="auto",
        )
        runtime_env = job_runtime_env(stream, ray_cfg)
        assert runtime_env is not None and start_ray(ray_cfg, runtime_env=runtime_env)
        pipe = RayPipeline(stream, RULE_ENGINE)
        pipe.start()
        nodes = pipe.wait_ready(timeout_s=180)
        end = time.monotonic() + 90  # wait for enough decisions, not a fixed time (loaded machines)
        while time.monotonic() < end and (len(pipe.decisions) < 20 or all(d.missing for d in pipe.decisions)):
            pipe.step()
        source_package = ray.get(pipe.source_actors["cam"].package_path.remote(), timeout=30)
        # the shared inference service on Ray Serve, placed on the engine's node by its resource
        service = InferenceService.start(
            RULE_ENGINE, service=ServiceConfig(name="multinode-service", num_cpus=0.25, batch_wait_ms=50.0,
                                               resources={"engine_node": 1}),
        )
        service_nodes = service.wait_ready(timeout_s=180)
        frame = np.full((1, 28, 28), 0.375, np.float32)  # exact in binary: the rule engine votes int(37.5) % 10 = 7
        answers = [f.result(60) for f in [service.submit(Sample(i, 0, {"image": frame})) for i in range(8)]]
        service_package = service.call("package_path").result(30)
    finally:
        if service is not None:
            service_shutdown(stop_ray=False)
        if pipe is not None:
            try:
                pipe.shutdown()
            except Exception:  # noqa: BLE001 - the cluster goes down next anyway
                pass
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        os.chdir(old_cwd)
        if old is not None:
            os.environ["PYTHONPATH"] = old
    assert nodes["cam"] == nodes["txt"] != nodes["engine"]
    assert service_nodes == [nodes["engine"]]
    assert len(pipe.decisions) >= 20
    assert any(not d.missing for d in pipe.decisions)
    assert [error for _, _, error in answers] == [None] * 8 and [d.prediction for d, _, _ in answers] == [7] * 8
    for where in (source_package, service_package):  # imported from the copy runtime_env carried, not the checkout
        assert not where.startswith(str(REPO)) and "py_modules" in where, where
