"""The per-user daemon behind stdio: the relay under pipes and socketpairs, configurations kept
apart, version replacement, SIGKILL, idle exit, ``sessions-mcp daemon status|stop``.

Every test runs real ``sessions-mcp`` processes in its own runtime dir (tests/conftest.py), and
every daemon a test starts is stopped by PID when it ends.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from . import conftest
from .conftest import daemon_pids, is_running, server_command


def server_env(db: Path, **extra: str) -> dict[str, str]:
    """A server's environment with the daemon on in this test's runtime dir, whatever the run's mode."""
    env = conftest.server_env(db, **extra)
    if env.pop("SESSIONS_MCP_DAEMON", None) is not None:
        env.setdefault("SESSIONS_MCP_DAEMON__DIR", str(conftest._daemon_dir[-1]))  # pyright: ignore[reportPrivateUsage]
    return env


INIT = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}},
}
AGENT = "import os, sys; print(f\"{os.environ.get('COLOUR')} in {os.getcwd()}: {sys.argv[-1]}\")"


class Raw:
    """A JSON-RPC client over any pair of byte streams (pipes or a socket)."""

    def __init__(self, proc: subprocess.Popen[bytes], rfile: IO[bytes], wfile: IO[bytes]) -> None:
        self.proc, self.rfile, self.wfile = proc, rfile, wfile
        self.next_id = 1

    def send(self, msg: dict[str, Any]) -> None:
        self.wfile.write(json.dumps(msg).encode() + b"\n")
        self.wfile.flush()

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}})
        while True:
            line = self.rfile.readline()
            assert line, f"the server closed stdout (exit {self.proc.poll()})"
            msg = json.loads(line)  # stdout carries only protocol: anything else fails here
            if msg.get("id") == self.next_id:
                return msg

    def initialize(self) -> dict[str, Any]:
        self.send(INIT)
        answer = json.loads(self.rfile.readline())
        assert answer["id"] == 0 and "result" in answer, answer
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer["result"]

    def call(self, tool: str, **args: Any) -> dict[str, Any]:
        result = self.request("tools/call", {"name": tool, "arguments": args})["result"]
        assert not result.get("isError"), result
        return result["structuredContent"]

    def close(self) -> int:
        """Close our end of stdin (and stdout) and wait for the server's exit status."""
        for f in {self.wfile, self.rfile}:
            f.close()
        return self.proc.wait(timeout=30)


def spawn(env: dict[str, str], *args: str, cwd: Path | None = None, argv: list[str] | None = None) -> Raw:
    proc = subprocess.Popen(
        [*(argv or server_command()), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    assert proc.stdin is not None and proc.stdout is not None
    raw = Raw(proc, proc.stdout, proc.stdin)
    raw.initialize()
    return raw


@pytest.fixture
def clients() -> Iterator[list[Raw]]:
    """Clients to close after the test, whatever happens."""
    made: list[Raw] = []
    yield made
    for c in made:
        if c.proc.poll() is None:
            c.proc.kill()
        c.proc.wait(timeout=30)
        for f in (c.proc.stdin, c.proc.stdout, c.proc.stderr):
            if f is not None:
                f.close()


def runtime_dir(env: dict[str, str]) -> Path:
    return Path(env["SESSIONS_MCP_DAEMON__DIR"])


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll a condition another process makes true (a process exiting, a file appearing)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def control(env: dict[str, str], action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*server_command(), "daemon", action], env=env, capture_output=True, text=True, timeout=60)


def test_relay_over_pipes_shares_one_daemon_and_hands_over_stdio(tmp_path: Path, clients: list[Raw]) -> None:
    env = server_env(tmp_path / "s.db")
    a = spawn(env)
    clients.append(a)
    created = a.call("create_session", prompt="over pipes", title="pipes")
    [pid] = daemon_pids(runtime_dir(env))
    # the client's child is the ~1.5 MB waiter now; the daemon reads and writes the client's pipes
    assert Path(f"/proc/{a.proc.pid}/exe").resolve() != Path(sys.executable).resolve()
    b = spawn(env)
    clients.append(b)
    assert daemon_pids(runtime_dir(env)) == [pid]
    page = b.call("list_messages", session_id=created["session"]["id"])
    assert [m["text"] for m in page["messages"]] == ["over pipes"]
    assert a.close() == 0 and b.close() == 0
    assert a.proc.stderr is not None and a.proc.stderr.read() == b""
    assert is_running(pid)  # idle, not gone: the next start is instant


@pytest.mark.parametrize("shape", ["one socket", "two sockets"])
def test_relay_over_socketpairs(tmp_path: Path, clients: list[Raw], shape: str) -> None:
    env = server_env(tmp_path / "s.db")
    ours_in, theirs_in = socket.socketpair()
    if shape == "one socket":
        ours_out, theirs_out = ours_in, theirs_in
    else:
        ours_out, theirs_out = socket.socketpair()
    proc = subprocess.Popen(server_command(), stdin=theirs_in, stdout=theirs_out, stderr=subprocess.PIPE, env=env)
    theirs_in.close()
    theirs_out.close()
    raw = Raw(proc, ours_out.makefile("rb"), ours_in.makefile("wb"))
    clients.append(raw)
    raw.initialize()
    assert raw.call("create_session", prompt="over a socketpair")["status"] == "awaiting_reply"
    assert len(daemon_pids(runtime_dir(env))) == 1
    ours_in.shutdown(socket.SHUT_WR)  # EOF on the server's stdin, as a client closing it
    assert proc.wait(timeout=30) == 0
    ours_in.close()
    ours_out.close()


def test_configurations_never_share_a_daemon_or_state(tmp_path: Path, clients: list[Raw]) -> None:
    """Settings, the environment agents inherit and the working directory each key their own daemon."""
    agent = tmp_path / "agent.py"
    agent.write_text(AGENT)
    base = {
        "SESSIONS_MCP_LOCAL__AGENT": "command",
        "SESSIONS_MCP_LOCAL__AGENT_COMMAND": shlex.join([sys.executable, "-S", str(agent)]),
        "SESSIONS_MCP_LOCAL__AGENT_INPUT": "none",
    }
    (tmp_path / "here").mkdir()
    (tmp_path / "there").mkdir()
    red = spawn(server_env(tmp_path / "s.db", COLOUR="red", **base), cwd=tmp_path / "here")
    blue = spawn(server_env(tmp_path / "s.db", COLOUR="blue", **base), cwd=tmp_path / "here")
    red_there = spawn(server_env(tmp_path / "s.db", COLOUR="red", **base), cwd=tmp_path / "there")
    other_db = spawn(server_env(tmp_path / "other.db", COLOUR="red", **base), cwd=tmp_path / "here")
    clients.extend([red, blue, red_there, other_db])
    assert len(daemon_pids(runtime_dir(server_env(tmp_path / "s.db")))) == 4

    def answer(c: Raw, prompt: str) -> str:
        done = c.call("create_session", prompt=prompt, wait=True, timeout_s=60)
        return done["messages"][-1]["text"].strip()

    assert answer(red, "1") == f"red in {tmp_path / 'here'}: 1"
    assert answer(blue, "2") == f"blue in {tmp_path / 'here'}: 2"
    assert answer(red_there, "3") == f"red in {tmp_path / 'there'}: 3"
    # another store is another store: its daemon sees none of the first database's sessions
    assert other_db.call("list_sessions")["sessions"] == []
    assert len(red.call("list_sessions")["sessions"]) == 3


def old_version(tmp_path: Path) -> list[str]:
    """The command line of a copy of this package that calls itself version 0.0.0-old."""
    src = Path(__file__).resolve().parents[1] / "src" / "sessions_mcp"
    old = tmp_path / "old"
    shutil.copytree(src, old / "sessions_mcp", ignore=shutil.ignore_patterns("__pycache__"))
    init = old / "sessions_mcp" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.0-old'))
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(old)!r}); "
            "from sessions_mcp.cli import main; raise SystemExit(main())"]  # fmt: skip


def test_a_daemon_of_another_version_is_replaced(tmp_path: Path, clients: list[Raw]) -> None:
    """An older install's daemon stops taking connections but serves its own clients to their end."""
    old_argv = old_version(tmp_path)
    env = server_env(tmp_path / "s.db")
    status = control(env, "status")
    assert "no daemon running" in status.stdout

    old_client = spawn(env, argv=old_argv)
    clients.append(old_client)
    sid = old_client.call("create_session", prompt="from the old version")["session"]["id"]
    [old_pid] = daemon_pids(runtime_dir(env))
    assert "version 0.0.0-old" in control(env, "status").stdout

    new_client = spawn(env)
    clients.append(new_client)
    pids = daemon_pids(runtime_dir(env))
    assert len(pids) == 2 and old_pid in pids
    new_pid = next(p for p in pids if p != old_pid)
    lines = control(env, "status").stdout.splitlines()
    assert any(f"pid {old_pid}" in line and "retired" in line for line in lines), lines
    assert any(f"pid {new_pid}" in line and "listening" in line for line in lines), lines
    # the old daemon still serves its client; the new one sees the same database
    old_client.call("send_message", session_id=sid, text="still here", role="assistant")
    page = new_client.call("list_messages", session_id=sid)
    assert [m["text"] for m in page["messages"]] == ["from the old version", "still here"]
    assert old_client.close() == 0
    wait_until(lambda: not is_running(old_pid), what="the retired daemon to exit")
    assert daemon_pids(runtime_dir(env)) == [new_pid]


def test_sigkill_costs_the_connections_only(tmp_path: Path, clients: list[Raw]) -> None:
    env = server_env(tmp_path / "s.db")
    a, b = spawn(env), spawn(env)
    clients.extend([a, b])
    created = a.call("create_session", prompt="before the crash")
    sid = created["session"]["id"]
    b.call("send_message", session_id=sid, text="an answer", role="assistant")
    [pid] = daemon_pids(runtime_dir(env))
    os.kill(pid, signal.SIGKILL)
    for c in (a, b):
        assert c.proc.wait(timeout=30) == 1
        assert c.proc.stderr is not None
        assert b"lost the connection to its daemon" in c.proc.stderr.read()
    wait_until(lambda: not is_running(pid), what="the killed daemon to be reaped")
    after = spawn(env)  # the stale socket is replaced by a new daemon
    clients.append(after)
    [new_pid] = daemon_pids(runtime_dir(env))
    assert new_pid != pid
    page = after.call("list_messages", session_id=sid)
    assert [m["text"] for m in page["messages"]] == ["before the crash", "an answer"]
    assert after.close() == 0


def test_idle_daemon_exits_and_the_next_start_starts_another(tmp_path: Path, clients: list[Raw]) -> None:
    env = server_env(tmp_path / "s.db", SESSIONS_MCP_DAEMON__IDLE_S="0.5")
    a = spawn(env)
    clients.append(a)
    [pid] = daemon_pids(runtime_dir(env))
    b = spawn(env)
    clients.append(b)
    assert a.close() == 0
    assert is_running(pid)  # b is still connected
    assert b.close() == 0
    wait_until(lambda: not is_running(pid), what="the idle daemon to exit")
    assert not list(runtime_dir(env).glob("*.sock"))
    c = spawn(env)
    clients.append(c)
    assert daemon_pids(runtime_dir(env)) != [pid]
    assert c.close() == 0


def test_daemon_status_and_stop(tmp_path: Path, clients: list[Raw]) -> None:
    env = server_env(tmp_path / "s.db")
    assert "no daemon running" in control(env, "status").stdout
    a = spawn(env)
    clients.append(a)
    [pid] = daemon_pids(runtime_dir(env))
    out = control(env, "status")
    assert out.returncode == 0
    assert f"pid {pid}" in out.stdout and "connections 1" in out.stdout and str(tmp_path) not in out.stderr
    stopped = control(env, "stop")
    assert stopped.returncode == 0 and "stopped 1 daemon(s)" in stopped.stdout
    assert not is_running(pid)
    assert a.proc.wait(timeout=30) == 1  # its client lost the connection, and was told so on stderr
    assert "no daemon running" in control(env, "status").stdout


@pytest.mark.parametrize("how", ["env", "flag"])
def test_daemon_off_serves_in_process(tmp_path: Path, clients: list[Raw], how: str) -> None:
    env = server_env(tmp_path / "s.db")
    args: list[str] = []
    if how == "env":
        env["SESSIONS_MCP_DAEMON"] = "off"
    else:
        args.append("--no-daemon")
    c = spawn(env, *args)
    clients.append(c)
    assert c.call("create_session", prompt="in process")["status"] == "awaiting_reply"
    assert daemon_pids(runtime_dir(env)) == []
    assert Path(f"/proc/{c.proc.pid}/exe").resolve() == Path(sys.executable).resolve()
    assert c.close() == 0


def test_configuration_errors_reach_the_client_as_without_daemon(tmp_path: Path) -> None:
    env = server_env(tmp_path / "s.db", SESSIONS_MCP_BACKENDS="nope")
    with_daemon = subprocess.run(server_command(), env=env, capture_output=True, text=True, timeout=60, input="")
    env_off = {**env, "SESSIONS_MCP_DAEMON": "off"}
    without = subprocess.run(server_command(), env=env_off, capture_output=True, text=True, timeout=60, input="")
    assert with_daemon.returncode == without.returncode == 2
    assert "unknown backend" in with_daemon.stderr
    assert with_daemon.stderr == without.stderr
    assert with_daemon.stdout == ""
    assert daemon_pids(runtime_dir(env)) == []


def test_an_unsafe_runtime_dir_falls_back_to_in_process(tmp_path: Path, clients: list[Raw]) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    env = server_env(tmp_path / "s.db", SESSIONS_MCP_DAEMON__DIR=str(shared))
    c = spawn(env)
    clients.append(c)
    assert c.call("list_sessions")["sessions"] == []
    assert c.close() == 0
    assert c.proc.stderr is not None and b"mode 0700" in c.proc.stderr.read()
    assert not list(shared.iterdir())


def test_the_relay_imports_no_sdk_and_no_pydantic(tmp_path: Path, clients: list[Raw]) -> None:
    env = server_env(tmp_path / "s.db")
    spawn(env).close()  # a daemon runs: what follows is the warm path
    proc = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "sessions_mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None and proc.stdout is not None
    raw = Raw(proc, proc.stdout, proc.stdin)
    clients.append(raw)
    raw.initialize()
    assert raw.close() == 0
    assert proc.stderr is not None
    imported = {line.split("|")[-1].strip() for line in proc.stderr.read().decode().splitlines() if "|" in line}
    assert "sessions_mcp.daemon.relay" in imported
    heavy = {m for m in imported if m.split(".")[0] in ("mcp", "mcp_types", "pydantic", "anyio", "pydantic_settings")}
    assert heavy == set()
    assert "sessions_mcp.hosts" not in imported  # only 'sessions-mcp setup' describes the hosts (~13 ms)


def test_simultaneous_first_starts_share_one_daemon(tmp_path: Path, clients: list[Raw]) -> None:
    """Three clients start at once with no daemon running: the lock lets exactly one daemon start."""
    env = server_env(tmp_path / "s.db")
    procs = [
        subprocess.Popen(
            server_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        for _ in range(3)
    ]
    raws = [Raw(p, p.stdout, p.stdin) for p in procs]  # type: ignore[arg-type]
    clients.extend(raws)
    for r in raws:
        r.send(INIT)
    for r in raws:
        assert json.loads(r.rfile.readline())["id"] == 0
    assert len(daemon_pids(runtime_dir(env))) == 1
    for r in raws:
        assert r.close() == 0


def test_daemon_stop_also_stops_a_retired_daemon(tmp_path: Path, clients: list[Raw]) -> None:
    """A retired daemon no longer listens: stop finds it by its description file and signals its PID."""
    env = server_env(tmp_path / "s.db")
    old_client = spawn(env, argv=old_version(tmp_path))
    new_client = spawn(env)
    clients.extend([old_client, new_client])
    pids = daemon_pids(runtime_dir(env))
    assert len(pids) == 2
    stopped = control(env, "stop")
    assert stopped.returncode == 0 and "stopped 2 daemon(s)" in stopped.stdout
    assert not any(is_running(p) for p in pids)
    assert old_client.proc.wait(timeout=30) == 1 and new_client.proc.wait(timeout=30) == 1
