"""Placement on a Ray cluster: preprocessing where the sensor is, and the project shipped to every node.

- Sources are pinned to the node that owns the sensor by a custom resource that only that node
  offers (``ray start --resources '{"robot1_camera": 1}'`` there, ``resources: {robot1_camera: 1}``
  on the source), as ``stream.sources[].resources`` already does; :func:`node_affinity` pins an
  actor to a known node id instead (Ray's ``NodeAffinitySchedulingStrategy``).
- :class:`EdgeSourceWorker` (``stream.preprocess_at_source``) reduces camera frames to the model's
  28x28 gray on the source's node before they are drained: 784 bytes per frame cross the network
  instead of the full frame (a 360x288 GRID frame is 104 KB gray, 311 KB BGR). The reduced frame
  is the uint8 image :func:`~exitflow.pipeline.live.runtime.preprocess.preprocess_image` produces, so the
  engine's preprocessing of it gives exactly the float32 input it would give for the full frame
  (the 1/255 scale is undone and redone exactly; a test checks). The spectrogram stays with the
  engine: it needs the audio window that only exists after the sync has aligned the PCM chunks
  (16-kHz float32 PCM is 64 KB/s; the spectrogram of one sample is 50 KB).
- :func:`job_runtime_env` ships the exitflow package (``py_modules``, given to ``ray.init`` by
  :func:`~exitflow.pipeline.live.runtime.ray.connect.start_ray`) so a worker node needs no checkout and no
  ``PYTHONPATH``; ``stream.ship_project: auto`` does so when joining a cluster (a local Ray
  already has the package installed).
"""

from __future__ import annotations

import atexit
import functools
import importlib
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from exitflow.pipeline.config import RayConfig, StreamConfig
from exitflow.pipeline.live.runtime.preprocess import IMAGE_SIDE, preprocess_image
from exitflow.pipeline.live.runtime.ray.workers import RaySourceWorker, untracked
from exitflow.pipeline.messages import SensorMessage

STAGES = ("devices", "encoders", "scheduler", "pipeline")


def reduce_frame(msg: SensorMessage) -> SensorMessage:
    """A camera message whose frame is reduced to the model's gray IMAGE_SIDE x IMAGE_SIDE uint8
    (``meta["source_shape"]`` keeps the original shape); any other message, or a frame that does not
    convert (left for the engine's preprocessing to drop and count), comes back unchanged."""
    frame = msg.payload
    if (msg.modality != "image" or not isinstance(frame, np.ndarray) or frame.dtype != np.uint8
            or frame.shape[:2] == (IMAGE_SIDE, IMAGE_SIDE)):
        return msg
    try:
        x = preprocess_image(frame)  # (1, side, side) float32 = uint8 / 255
    except Exception:  # noqa: BLE001 - the engine side drops and counts it
        return msg
    msg.meta["source_shape"] = list(frame.shape)
    msg.payload = np.rint(x[0] * 255.0).astype(np.uint8)  # (side, side): the exact uint8 values
    return msg


class EdgeSourceWorker(RaySourceWorker):
    """A Ray source worker whose drained camera frames are already reduced (:func:`reduce_frame`),
    so the reduction runs in the source's actor, on the sensor's node."""

    @untracked  # called ~100/s
    def drain(self, max_items: int = 256) -> list[SensorMessage]:
        return [reduce_frame(m) for m in self.queue.drain(max_items)]

    def package_path(self) -> str:
        """Where this actor imported exitflow from (a shipped copy when ``runtime_env`` carried it)."""
        return package_path()


PIPELINE_FOLDER = Path(__file__).resolve().parents[3]  # .../pipeline: this file is pipeline/live/runtime/ray/


def package_path() -> str:
    """The folder this process imported ``exitflow.pipeline`` from."""
    return str(PIPELINE_FOLDER)


def api_folder() -> Path:
    """The folder of the ``exitflow`` API package (found, not imported, by its spec)."""
    spec = importlib.util.find_spec("exitflow")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the exitflow package is not importable here; install it (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def node_affinity(node_id: str, soft: bool = False) -> dict[str, Any]:
    """Actor options that pin it to the Ray node ``node_id`` (``soft``: elsewhere if that one is gone)."""
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=soft)}


@functools.lru_cache(maxsize=1)
def staged_package() -> Path:
    """A folder named ``exitflow`` holding the whole installed package (API and the four stages),
    for ``py_modules``. An installed wheel already is one; an editable install maps the stage folders
    of the checkout, so they are copied once per process into a temporary folder."""
    api = api_folder()
    if all((api / stage / "__init__.py").is_file() for stage in STAGES):
        return api
    root = Path(tempfile.mkdtemp(prefix="exitflow-ship-"))
    atexit.register(shutil.rmtree, root, True)
    target = root / "exitflow"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(api, target, ignore=ignore)
    for stage in STAGES:
        folder = Path(importlib.import_module(f"exitflow.{stage}").__file__ or "").resolve().parent
        shutil.copytree(folder, target / stage, ignore=ignore)
    return target


def project_runtime_env(extra_modules: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """The ``runtime_env`` that ships the exitflow package (and ``extra_modules``, e.g. a plug-in
    engine's package folder) to whichever node runs the actor."""
    return {"py_modules": [str(staged_package()), *(str(Path(m).resolve()) for m in extra_modules)]}


def job_runtime_env(stream: StreamConfig, ray_cfg: RayConfig) -> dict[str, Any] | None:
    """The job's ``runtime_env`` for :func:`~exitflow.pipeline.live.runtime.ray.connect.start_ray` per
    ``stream.ship_project``: always, never, or (auto) when joining a cluster (``ray.address`` set).

    Ray ships local folders only at the job level (``ray.init``), never per actor; every actor and
    task of the job, the detached service replicas included, inherits it.
    """
    if stream.ship_project == "never" or (stream.ship_project == "auto" and not ray_cfg.address):
        return None
    return project_runtime_env()
