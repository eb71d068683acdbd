"""How the live pipeline reaches Ray: a local instance on loopback, or a cluster probed with a timeout.

:func:`start_ray` is the only entry. Without ``ray.address`` it starts a local Ray with the
dashboard off and its node address on ``ray.node_ip_address`` (loopback by default), so every Ray
listener binds 127.0.0.1 only. With an address it first probes ``host:port`` over TCP, then joins
once from a throw-away process (a port that answers but is no Ray head fails there, quietly),
and only then calls ``ray.init``; all of it within ``ray.connect_timeout_s``, failing with one
line and without Ray's own warnings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from exitflow.pipeline.config import RayConfig
from exitflow.pipeline.live.core.failures import LiveRuntimeError

__all__ = ["probe_ray_address", "running_gcs_addresses", "start_ray", "stop_ray"]


def start_ray(cfg: RayConfig, runtime_env: dict[str, Any] | None = None) -> bool:
    """``ray.init``, quiet and dashboard-free; True if this call started Ray.

    ``runtime_env`` is the job's (every actor and task inherits it), e.g.
    :func:`~exitflow.pipeline.live.runtime.ray.placement.job_runtime_env` shipping the project to a cluster.

    Without ``cfg.address`` a local instance starts bound to ``cfg.node_ip_address`` (loopback by
    default). With one, the head is probed first: an address nobody answers on fails within
    ``cfg.connect_timeout_s`` with one line, before Ray prints anything.

    Raises:
        LiveRuntimeError: when Ray cannot be started or reached.
    """
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "namespace": cfg.namespace,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if runtime_env:
        kwargs["runtime_env"] = runtime_env
    if cfg.address:
        deadline = time.monotonic() + cfg.connect_timeout_s
        kwargs["address"] = probe_ray_address(cfg.address, cfg.connect_timeout_s)
        _try_join_elsewhere(kwargs["address"], cfg.namespace, max(0.1, deadline - time.monotonic()), cfg)
        _init_with_timeout(kwargs, cfg)
        return True
    kwargs["address"] = "local"  # a new instance: never silently join another user's Ray on this host
    kwargs["num_cpus"] = cfg.num_cpus
    kwargs["_node_ip_address"] = cfg.node_ip_address
    if cfg.node_ip_address in LOOPBACK_HOSTS:
        with _loopback_only_ray():
            _init_with_timeout(kwargs, cfg)
    else:
        _init_with_timeout(kwargs, cfg)
    return True


def stop_ray() -> None:
    """``ray.shutdown()``: the end of a run whose :func:`start_ray` returned True."""
    ray.shutdown()


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
_RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def _loopback_only_ray() -> Iterator[None]:
    """Make a local Ray keep 127.0.0.1 as its node address (so GCS, raylet, object manager and
    every worker listen on loopback only).

    Ray on Linux replaces a loopback ``_node_ip_address`` with the host's routable address unless
    clusters are disabled, which is what its ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` does (the
    default on macOS and Windows). The setting is restored afterwards: it only matters while the
    node starts, and the processes started then keep their loopback addresses.
    """
    from ray._private import ray_constants

    old_env = os.environ.get(_RAY_LOCAL_ONLY_ENV)
    old_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_RAY_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_RAY_LOCAL_ONLY_ENV] = old_env


def _ray_address_file() -> Path:
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"


def running_gcs_addresses() -> list[str]:
    """``host:port`` of every Ray instance running on this machine (found by its GCS process,
    e.g. one that ``exitflow run`` started); empty when none or when Ray cannot tell."""
    try:
        from ray._private.services import find_gcs_addresses

        return sorted(set(find_gcs_addresses()))
    except Exception:  # noqa: BLE001 - a private Ray helper: missing or changed means "none found"
        return []


def probe_ray_address(address: str, timeout_s: float) -> str:
    """The ``host:port`` Ray should join, after checking something listens there.

    ``"auto"`` means ``$RAY_ADDRESS``, else the cluster ``ray start`` last started on this machine,
    else the one Ray instance running here (e.g. started by ``exitflow run``).

    Raises:
        LiveRuntimeError: when no cluster is found or nothing answers within ``timeout_s``.
    """
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        if not target:
            try:
                target = _ray_address_file().read_text().strip()
            except OSError:
                target = ""
        if not target:
            running = running_gcs_addresses()
            if len(running) > 1:
                raise LiveRuntimeError(
                    f"ray.address is 'auto' but several Ray instances run here ({', '.join(running)}); "
                    "set ray.address to one of them"
                )
            target = running[0] if running else ""
        if not target:
            raise LiveRuntimeError(
                "ray.address is 'auto' but no Ray cluster runs here; start one with `ray start --head` "
                "(or `exitflow run`) or set ray.address: null for a local instance"
            )
    hostport = target.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LiveRuntimeError(f"ray.address must look like HOST:PORT (e.g. 10.0.0.5:6379), got {address!r}")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise LiveRuntimeError(
            f"cannot reach Ray at {target} ({reason} within {timeout_s:g} s); check ray.address and that "
            f"`ray start --head` runs there, or raise ray.connect_timeout_s"
        ) from None
    return target


_JOIN_PROBE = (
    "import logging, sys, ray\n"
    "ray.init(address=sys.argv[1], namespace=sys.argv[2], include_dashboard=False, logging_level=logging.ERROR)\n"
    "ray.shutdown()\n"
)


def _try_join_elsewhere(address: str, namespace: str, timeout_s: float, cfg: RayConfig) -> None:
    """Join ``address`` once in a throw-away process, so a port that answers but is no Ray head
    (a proxy, another service) fails here, within ``timeout_s`` and without Ray's raw warnings.

    Raises:
        LiveRuntimeError: when that join fails or does not finish in time.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", _JOIN_PROBE, address, namespace],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise LiveRuntimeError(
            f"Ray at {address} did not accept a connection within {cfg.connect_timeout_s:g} s; check "
            "ray.address (is `ray start --head` running there?) or raise ray.connect_timeout_s"
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if "Error" in line or "error" in line]
        raise LiveRuntimeError(
            f"cannot join Ray at {address}: {lines[-1][:200] if lines else f'exit code {done.returncode}'}"
        )


def _init_with_timeout(kwargs: dict[str, Any], cfg: RayConfig) -> None:
    """``ray.init(**kwargs)`` that gives up after ``cfg.connect_timeout_s`` (joining) with one line."""
    outcome: dict[str, BaseException | None] = {}

    def init() -> None:
        try:
            ray.init(**kwargs)
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            outcome["error"] = e

    if not cfg.address:  # a local start has no network wait; run it here (signals, Ctrl-C)
        init()
    else:
        thread = threading.Thread(target=init, name="ray-init", daemon=True)
        thread.start()
        thread.join(cfg.connect_timeout_s)
        if "error" not in outcome:
            raise LiveRuntimeError(
                f"Ray at {kwargs.get('address')} did not accept the connection within "
                f"{cfg.connect_timeout_s:g} s; check the cluster or raise ray.connect_timeout_s"
            )
    error = outcome.get("error")
    if error is not None:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise LiveRuntimeError(
            f"cannot start/reach Ray (address={cfg.address!r}): {lines[0] if lines else type(error).__name__}"
        ) from error
