"""The local runtime's control channel: ``exitflow budget set`` without Ray.

The Ray runtime takes a budget change through its named engine actor (``exitflow-engine`` in the
``ray.namespace``). A local pipeline has no actor to look up, so it opens a
:class:`ControlServer`: a TCP socket on loopback (an OS-chosen port), announced in a *discovery
file* ``$EXITFLOW_HOME/run/<namespace>/<pid>.json`` (mode 0600) that holds the port and a random
token. :func:`send_budget` (what ``exitflow budget set`` calls) reads the discovery files of the
namespace, skips those whose process is gone (and removes them), and sends one JSON line
``{"token": ..., "mj_per_sample": ..., "power_w": ...}``; the server hands it to the pipeline's
``set_budget`` (which runs it on the engine's thread, between two samples) and answers with one
JSON line, ``{"budget": {...}}`` or ``{"error": "..."}``. The change is in force when the reply
comes back, typically within milliseconds.

Only a process that can read the discovery file (the same user) knows the token; the socket
listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exitflow.pipeline.home import user_home
from exitflow.pipeline.live.core.failures import LiveRuntimeError

log = logging.getLogger(__name__)

__all__ = ["ControlServer", "control_folder", "running_pipelines", "send_budget"]

MAX_REQUEST_BYTES = 4096
BudgetSetter = Callable[[float | None, float | None], dict[str, Any]]


def control_folder(namespace: str) -> Path:
    """Where local pipelines of ``namespace`` announce their control socket."""
    return user_home() / "run" / namespace


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive, but not ours to control
        return True
    return True


class ControlServer:
    """Serves budget changes for one running local pipeline (see the module docstring).

    Args:
        set_budget: Called with ``(mj_per_sample, power_w)`` (both None: budget off); returns the
            budget now in force or raises (the error is sent back as one line).
        namespace: The ``ray.namespace`` the pipeline runs in (one name space for both runtimes).
    """

    def __init__(self, set_budget: BudgetSetter, namespace: str = "exitflow"):
        self._set_budget = set_budget
        self.token = secrets.token_hex(16)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(4)
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        folder = control_folder(namespace)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{os.getpid()}-{self.port}.json"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "host": "127.0.0.1", "port": self.port, "token": self.token}, f)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="exitflow-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    conn.settimeout(2.0)
                    conn.sendall((json.dumps(self._answer(_read_line(conn))) + "\n").encode("utf-8"))
                except OSError as e:
                    log.warning("control: a request failed (%s)", e)

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except ValueError:
            return {"error": "not a JSON request"}
        if not isinstance(request, dict) or not secrets.compare_digest(str(request.get("token", "")), self.token):
            return {"error": "wrong token"}
        try:
            mj, power = request.get("mj_per_sample"), request.get("power_w")
            return {"budget": self._set_budget(None if mj is None else float(mj), None if power is None else float(power))}
        except Exception as e:  # noqa: BLE001 - the caller gets the reason, the pipeline goes on
            return {"error": f"{type(e).__name__}: {e}"}

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=1.0)
        with contextlib.suppress(OSError):
            self.path.unlink()


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data and len(data) < MAX_REQUEST_BYTES:
        part = conn.recv(MAX_REQUEST_BYTES)
        if not part:
            break
        data += part
    return data.split(b"\n", 1)[0]


def running_pipelines(namespace: str) -> list[dict[str, Any]]:
    """The discovery records of the local pipelines of ``namespace`` whose process still runs
    (the files of those that died are removed)."""
    out = []
    folder = control_folder(namespace)
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(pid):
            out.append({**record, "path": str(path)})
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return out


def send_budget(record: dict[str, Any], mj_per_sample: float | None, power_w: float | None,
                timeout_s: float = 10.0) -> dict[str, Any]:
    """Send a budget change to the local pipeline ``record`` describes; returns the budget in force.

    Raises:
        LiveRuntimeError: when it cannot be reached or refuses the budget.
    """
    request = {"token": record.get("token"), "mj_per_sample": mj_per_sample, "power_w": power_w}
    try:
        with socket.create_connection((str(record.get("host", "127.0.0.1")), int(record["port"])), timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall((json.dumps(request) + "\n").encode("utf-8"))
            reply = json.loads(_read_line(s) or b"{}")
    except (OSError, ValueError, KeyError) as e:
        raise LiveRuntimeError(f"cannot reach the local pipeline of pid {record.get('pid')} ({e})") from e
    if "error" in reply or "budget" not in reply:
        raise LiveRuntimeError(f"the engine refused the budget: {reply.get('error', 'no answer')}")
    return dict(reply["budget"])
