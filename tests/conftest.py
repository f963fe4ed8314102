"""Shared fixtures: isolated settings, servers and real MCP clients in both protocol eras."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
ERAS = ["auto", "legacy"]  # auto negotiates 2026-07-28; legacy is the 2025-11-25 handshake
# stdio servers started by tests go through the per-user daemon (the default) unless
# SESSIONS_MCP_TEST_DAEMON=off: scripts/test.sh runs the stdio tests both ways
DAEMON_MODE = os.environ.get("SESSIONS_MCP_TEST_DAEMON", "on").strip().lower()
_daemon_dir: list[Path] = []  # the current test's runtime dir (one per test: parallel workers never share)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's configuration or writes to their data dir."""
    for key in list(os.environ):
        if key.startswith("SESSIONS_MCP_") or key in ("FACTORY_API_KEY", "OPENAI_API_KEY"):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    for key, value in daemon_env().items():
        monkeypatch.setenv(key, value)


@pytest.fixture(autouse=True)
def daemon_dir() -> Iterator[Path]:
    """A fresh daemon runtime dir for each test; every daemon started in it is stopped by PID after.

    Short and under /tmp: a Unix socket path has at most 107 bytes.
    """
    path = Path(tempfile.mkdtemp(prefix="smd-", dir="/tmp"))
    _daemon_dir.append(path)
    try:
        yield path
    finally:
        _daemon_dir.remove(path)
        stop_daemons(path)
        shutil.rmtree(path, ignore_errors=True)


def daemon_env() -> dict[str, str]:
    """What a server subprocess needs to use this test's daemon dir (or to serve in-process)."""
    if DAEMON_MODE in ("off", "0", "false", "no"):
        return {"SESSIONS_MCP_DAEMON": "off"}
    return {"SESSIONS_MCP_DAEMON__DIR": str(_daemon_dir[-1])} if _daemon_dir else {}


def daemon_pids(path: Path) -> list[int]:
    """PIDs of the daemons that described themselves in ``path`` and still run."""
    from sessions_mcp.daemon.common import is_daemon

    pids: list[int] = []
    for meta in path.glob("daemon-*.json"):
        try:
            data = json.loads(meta.read_text())
            pid = data["pid"]
        except (OSError, ValueError, KeyError):
            continue
        if is_daemon(pid, data.get("start_time")):
            pids.append(pid)
    return pids


def stop_daemons(path: Path) -> None:
    """SIGTERM each daemon of ``path`` by PID, SIGKILL what is still there after 10 s."""
    import time

    pids = daemon_pids(path)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if is_running(pid)]
        time.sleep(0.02)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.db"


@pytest.fixture
def make_settings(db_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        local = overrides.pop("local", {})
        local.setdefault("db", str(db_path))
        return load_settings(None, local=local, **overrides)

    return make


def client_for(mcp: Any, era: str, **kwargs: Any) -> Client:
    return Client(mcp, mode=era, raise_exceptions=era != "legacy", **kwargs)


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def client(make_settings: Callable[..., Settings], era: str) -> AsyncIterator[Client]:
    async with client_for(build_server(make_settings()), era) as c:
        yield c


def server_env(db: Path | str, **extra: str) -> dict[str, str]:
    """Environment for a `sessions-mcp` subprocess (the SDK passes only a safe whitelist)."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "SESSIONS_MCP_LOCAL__DB": str(db),
        "PYTHONUNBUFFERED": "1",
        **daemon_env(),
    }
    env.update(extra)
    return env


def server_command() -> list[str]:
    """How to start the installed server as a subprocess."""
    return [sys.executable, "-m", "sessions_mcp"]


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), or None when gone (Linux)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return None


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan may wait a moment for init to reap it)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def agent_server_pid(agent_parent: int) -> int:
    """The server that runs an agent whose parent is ``agent_parent``: on Linux that parent is the
    guardian (agents/guardian.py), whose own parent is the server."""
    if sys.platform != "linux":
        return agent_parent
    stat = proc_stat(agent_parent)
    assert stat is not None, "the agent's parent is gone"
    return int(stat[1])
