"""Placement helpers: frames reduced on the source's node give the engine the same input; shipping."""

from __future__ import annotations

import numpy as np
import pytest

from exitflow.pipeline.config import RayConfig, StreamConfig
from exitflow.pipeline.live.runtime.preprocess import preprocess_image
from exitflow.pipeline.live.runtime.ray.placement import STAGES, job_runtime_env, reduce_frame, staged_package
from exitflow.pipeline.messages import SensorMessage


@pytest.mark.parametrize("shape", [(288, 360), (288, 360, 3), (480, 640, 4), (29, 31)])
def test_a_reduced_frame_preprocesses_to_exactly_the_full_frames_input(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, size=shape, dtype=np.uint8)
    msg = reduce_frame(SensorMessage("image", "cam", 0, frame.copy()))
    assert msg.payload.shape == (28, 28) and msg.payload.dtype == np.uint8 and msg.meta["source_shape"] == list(shape)
    np.testing.assert_array_equal(preprocess_image(msg.payload), preprocess_image(frame))  # bit-identical
    assert msg.payload.nbytes == 784 < frame.nbytes


def test_other_messages_and_unconvertible_frames_pass_unchanged() -> None:
    audio = SensorMessage("audio", "mic", 0, np.zeros(1600, np.float32))
    assert reduce_frame(audio).payload is audio.payload
    empty = SensorMessage("image", "cam", 0, np.zeros((0, 5), np.uint8))
    assert reduce_frame(empty).payload.shape == (0, 5)  # left for the engine to drop and count
    small = SensorMessage("image", "cam", 0, np.zeros((28, 28), np.uint8))
    assert reduce_frame(small).payload is small.payload


def test_the_project_ships_when_joining_a_cluster() -> None:
    cluster, local = RayConfig(address="10.0.0.5:6379"), RayConfig()
    assert job_runtime_env(StreamConfig(), local) is None
    assert job_runtime_env(StreamConfig(ship_project="never"), cluster) is None
    env = job_runtime_env(StreamConfig(), cluster)
    assert env is not None and job_runtime_env(StreamConfig(ship_project="always"), local) == env
    package = staged_package()
    assert package.name == "exitflow" and env["py_modules"] == [str(package)]
    for stage in STAGES:
        assert (package / stage / "__init__.py").is_file()
    assert not list(package.rglob("__pycache__"))
