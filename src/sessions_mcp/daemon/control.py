"""``sessions-mcp daemon status|stop``: the daemons of this user's runtime dir. Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from .common import DaemonUnavailable, encode, is_daemon, peer_uid, pid_alive, read_meta, runtime_dir

STOP_WAIT_S = 10.0


def run_control(command: str) -> int:
    """Print the daemons (status) or stop every one of them (stop)."""
    try:
        directory = runtime_dir(create=False)
    except DaemonUnavailable as exc:
        print(f"sessions-mcp daemon: {exc}", file=sys.stderr)
        return 1
    daemons = list_daemons(directory)
    if command == "status":
        if not daemons:
            print(f"no daemon running (runtime dir {directory})")
            return 0
        for d in daemons:
            print(_describe(d))
        return 0
    stopped = 0
    for d in daemons:
        if stop_daemon(d):
            stopped += 1
    print(f"stopped {stopped} daemon(s)" if daemons else f"no daemon running (runtime dir {directory})")
    return 0 if stopped == len(daemons) else 1


def list_daemons(directory: Path) -> list[dict[str, Any]]:
    """Every daemon with a description file whose process is alive, with its live status if it answers."""
    out: list[dict[str, Any]] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("daemon-*.json")):
        meta = read_meta(path)
        if not meta or not isinstance(meta.get("pid"), int) or not is_daemon(meta["pid"], meta.get("start_time")):
            continue
        live = ask(Path(meta["socket"]), {"op": "status"})
        # a retired daemon no longer listens, and the socket may be its successor's
        if live is not None and live.get("pid") != meta["pid"]:
            live = None
        out.append({**meta, **(live or {})})
    return out


def ask(sock_path: Path, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any] | None:
    """Send one request to a daemon and return its answer (None if it does not answer)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            if peer_uid(s) != os.getuid():
                return None
            f = s.makefile("rb")
            f.readline()  # hello
            s.sendall(encode(request))
            line = f.readline()
    except OSError:
        return None
    try:
        answer = json.loads(line)
    except ValueError:
        return None
    return answer if isinstance(answer, dict) else None  # pyright: ignore[reportUnknownVariableType]


def stop_daemon(d: dict[str, Any]) -> bool:
    """Ask a daemon to stop; SIGTERM, then SIGKILL, if it does not exit in time. True when gone."""
    pid: int = d["pid"]
    first = None
    if "connections" in d:  # it answers on its socket
        ask(Path(d["socket"]), {"op": "stop"})
    else:  # retired: its socket is gone or a successor's
        first = signal.SIGTERM
    for sig in (first, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_WAIT_S / 2
        while time.monotonic() < deadline:
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
    return not pid_alive(pid)


def _describe(d: dict[str, Any]) -> str:
    version = str(d.get("version", "?")).split(" ")[0]
    if "connections" not in d:
        return f"pid {d['pid']}  version {version}  retired (not listening)  cwd {d.get('cwd', '?')}"
    state = "retired" if d.get("retired") else "listening"
    return (
        f"pid {d['pid']}  version {version}  {state}  connections {d['connections']}  served {d['served']}  "
        f"up {d['uptime_s']:.0f}s  idle {d['idle_s']:.0f}s (exits after {d['idle_exit_s']:.0f}s)  "
        f"cwd {d['cwd']}  log {d['log']}"
    )
