"""guardian.py: an agent command cannot outlive its server, and keeps its exit status and grace period."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sessions_mcp.backends.local.agents.command import GUARDIAN

from .conftest import is_running

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")


def guardian(*argv: str, server_pid: int | None = None, grace: float = 1.0, **kw: object) -> subprocess.Popen[bytes]:
    pid = os.getpid() if server_pid is None else server_pid
    cmd = [sys.executable, "-I", "-S", str(GUARDIAN), str(pid), str(grace), "--", *argv]
    return subprocess.Popen(cmd, start_new_session=True, **kw)  # type: ignore[call-overload]


def test_exit_status_and_output_are_the_agents() -> None:
    g = guardian(sys.executable, "-c", "import sys; print('hi'); sys.exit(3)", stdout=subprocess.PIPE)
    out, _ = g.communicate(timeout=20)
    assert (g.returncode, out) == (3, b"hi\n")
    g = guardian(sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert g.wait(timeout=20) == 128 + signal.SIGSEGV


def test_sigterm_gives_the_agent_its_grace_then_kills_what_ignores_it(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ignores = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"import os; pathlib.Path({str(ready)!r}).write_text(str(os.getpid())); time.sleep(600)"
    )
    g = guardian(sys.executable, "-c", ignores, grace=0.5)
    deadline = time.monotonic() + 20
    while not ready.exists() or not ready.read_text():
        assert time.monotonic() < deadline, "the agent never started"
        time.sleep(0.01)
    started = time.monotonic()
    os.killpg(g.pid, signal.SIGTERM)  # what the server's interrupt does
    assert g.wait(timeout=20) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.45  # the grace period was kept
    agent = int(ready.read_text())
    while is_running(agent):  # killed with the group; init reaps the orphan
        assert time.monotonic() < deadline, "the agent survived its guardian"
        time.sleep(0.01)


def test_a_server_already_gone_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    g = guardian(sys.executable, "-c", f"open({str(marker)!r}, 'w')", server_pid=1)
    assert g.wait(timeout=20) == 128 + signal.SIGTERM
    assert not marker.exists()


def test_an_unknown_program_is_reported() -> None:
    g = guardian("/nonexistent/agent", stderr=subprocess.PIPE)
    _, err = g.communicate(timeout=20)
    assert g.returncode == 127 and b"cannot start '/nonexistent/agent'" in err
