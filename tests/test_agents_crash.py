"""Durable agent turns: a server killed mid-turn, two processes on one database, claims and leases."""

from __future__ import annotations

import os
import shlex
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from sessions_mcp.backends.local.backend import LocalBackend
from sessions_mcp.backends.requests import MessageQuery
from sessions_mcp.models import Status
from sessions_mcp.server import Runtime
from sessions_mcp.settings import Settings
from sessions_mcp.store.base import TURN_LOST, pid_alive, this_host
from sessions_mcp.store.sqlite import SqliteStore

from .conftest import agent_server_pid, is_running, server_command, server_env

pytestmark = pytest.mark.anyio

AGENT = """\
import os, sys, time
prompt = sys.argv[-1]
with open(os.environ["RUNS_FILE"], "a") as f:
    f.write(prompt + "\\n")
if prompt == "hang":
    with open(os.environ["PIDS_FILE"], "w") as f:
        f.write(f"{os.getppid()} {os.getpid()}\\n")
    print("started, now hanging", flush=True)
    time.sleep(600)
if prompt == "slow":
    time.sleep(1)
print("echo: " + prompt)
"""


def agent_env(tmp_path: Path) -> dict[str, str]:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    return {
        "SESSIONS_MCP_LOCAL__AGENT": "command",
        "SESSIONS_MCP_LOCAL__AGENT_COMMAND": shlex.join([sys.executable, "-S", str(script)]),
        "SESSIONS_MCP_LOCAL__AGENT_INPUT": "none",
        "RUNS_FILE": str(tmp_path / "runs"),
        "PIDS_FILE": str(tmp_path / "pids"),
    }


def stdio(db: Path, env: dict[str, str]) -> Client:
    cmd = server_command()
    return Client(StdioServerParameters(command=cmd[0], args=cmd[1:], env=server_env(db, **env)), mode="auto")


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def test_kill_9_mid_turn_then_restart_shows_the_turn_failed_and_the_session_usable(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    env = agent_env(tmp_path)
    pids = tmp_path / "pids"
    agent_pid = 0
    killed = False
    try:
        try:
            async with stdio(db, env) as c:
                created = await ok(c, "create_session", prompt="hang", title="doomed", wait=False)
                sid = created["session"]["id"]
                with anyio.fail_after(20):
                    while not pids.exists() or not pids.read_text().endswith("\n"):
                        await anyio.sleep(0.02)
                parent_pid, agent_pid = (int(p) for p in pids.read_text().split())
                server_pid = agent_server_pid(parent_pid)
                running = await ok(c, "get_session", session_id=sid)
                assert running["status"] == "running"
                os.kill(server_pid, signal.SIGKILL)
                killed = True
                with anyio.fail_after(10):
                    while pid_alive(server_pid):
                        await anyio.sleep(0.02)
        except Exception:
            if not killed:
                raise
            # after the kill, the client may fail noticing its server vanished
        assert killed and not pid_alive(server_pid)
        if sys.platform == "linux":  # the guardian stops the agent's group when its server dies
            with anyio.fail_after(10):
                while is_running(agent_pid) or is_running(parent_pid):
                    await anyio.sleep(0.02)

        async with stdio(db, env) as c:  # any process opening the database recovers the turn
            s = await ok(c, "get_session", session_id=sid)
            assert s["status"] == "failed" and s["error"] == TURN_LOST
            page = await ok(c, "list_messages", session_id=sid)
            assert [m["text"] for m in page["messages"]] == ["hang"]
            again = await ok(c, "send_message", session_id=sid, text="hello", timeout_s=20)
            assert again["status"] == "idle"
            assert [m["text"] for m in again["messages"]] == ["hello", "echo: hello\n"]
            assert (await ok(c, "get_session", session_id=sid))["error"] is None
        assert (tmp_path / "runs").read_text() == "hang\nhello\n"  # the dead turn never ran again
    finally:
        if agent_pid and pid_alive(agent_pid):
            os.kill(agent_pid, signal.SIGKILL)  # an orphan of the killed server (a failed assertion above)


async def test_two_processes_on_one_database_never_run_the_same_turn_twice(
    tmp_path: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = agent_env(tmp_path)
    for k, v in env.items():
        if not k.startswith("SESSIONS_MCP_"):
            monkeypatch.setenv(k, v)
    local = {"agent": "command", "agent_command": env["SESSIONS_MCP_LOCAL__AGENT_COMMAND"], "agent_input": "none"}
    a, b = Runtime(make_settings(local=dict(local))), Runtime(make_settings(local=dict(local)))
    async with a.running(), b.running():
        la, lb = a.service.backends["local"], b.service.backends["local"]
        assert isinstance(la, LocalBackend) and isinstance(lb, LocalBackend)
        assert la.runner is not None and lb.runner is not None
        created = await a.service.create_session(
            "local", prompt="slow", title=None, backend=None, model=None, system=None, wait=False,
            timeout_s=0, idempotency_key=None,
        )  # fmt: skip
        native = created.session.id.split(":", 1)[1]
        for _ in range(3):  # B is told about the same turn, repeatedly, while A runs it
            lb.runner.begin_turn("local", native)
            la.runner.begin_turn("local", native)
        with anyio.fail_after(20):
            while (await lb.get_session("local", native)).status is Status.RUNNING:
                await anyio.sleep(0.02)
        page = await lb.list_messages(MessageQuery("local", native, after=None, limit=10))
    assert [m.text for m in page.items] == ["slow", "echo: slow\n"]
    assert (tmp_path / "runs").read_text() == "slow\n"


async def test_concurrent_claims_from_two_connections_yield_one_winner(tmp_path: Path) -> None:
    db = tmp_path / "claims.db"
    one, two = SqliteStore(db), SqliteStore(db)
    await one.open()
    await two.open()
    try:
        row, _ = await one.create_session(
            owner="o", title=None, model=None, system=None, agent="command", status=Status.RUNNING,
            first_message=("user", [{"type": "text", "text": "q"}], "q"),
        )  # fmt: skip
        host, pid = this_host(), os.getpid()
        results: list[bool] = []

        async def claim(store: SqliteStore, runner: str) -> None:
            results.append(
                await store.turn_claim("o", row.id, upto_seq=1, runner=runner, pid=pid, host=host, lease_ms=60_000)
            )

        async with anyio.create_task_group() as tg:
            for i in range(10):
                tg.start_soon(claim, one if i % 2 else two, f"r{i}")
        assert results.count(True) == 1
        holders = [f"r{i}" for i in range(10) if await one.turn_heartbeat(f"r{i}", [row.id], lease_ms=60_000)]
        assert len(holders) == 1
        winner = holders[0]
        assert await two.turn_claim("o", row.id, upto_seq=1, runner="late", pid=pid, host=host, lease_ms=1) is False
        assert await two.turn_release(row.id, runner="not-the-holder") == 1
        assert await one.turn_release(row.id, runner=winner) == 1
        # the finished turn is never claimed again; a newer message is
        assert await two.turn_claim("o", row.id, upto_seq=1, runner="again", pid=pid, host=host, lease_ms=1) is False
        assert await two.turn_claim("x", row.id, upto_seq=2, runner="stranger", pid=pid, host=host, lease_ms=1) is False
        await one.append_message("o", row.id, role="user", parts=[], text="q2", new_status=Status.RUNNING)
        assert await two.turn_claim("o", row.id, upto_seq=2, runner="next", pid=pid, host=host, lease_ms=60_000)
    finally:
        await one.close()
        await two.close()


async def test_expired_lease_or_dead_pid_fails_the_turn_live_claims_stay(tmp_path: Path) -> None:
    db = tmp_path / "leases.db"
    store = SqliteStore(db)
    await store.open()
    try:
        sessions = []
        for _ in range(3):
            row, _ = await store.create_session(
                owner="o", title=None, model=None, system=None, agent="command", status=Status.RUNNING,
                first_message=("user", [{"type": "text", "text": "q"}], "q"),
            )  # fmt: skip
            sessions.append(row.id)
        expired, dead, live = sessions
        assert await store.turn_claim("o", expired, upto_seq=1, runner="a", pid=1, host="elsewhere", lease_ms=-1)
        assert await store.turn_claim(
            "o", dead, upto_seq=1, runner="b", pid=2**22 + 12345, host=this_host(), lease_ms=60_000
        )
        assert await store.turn_claim(
            "o", live, upto_seq=1, runner="c", pid=os.getpid(), host=this_host(), lease_ms=60_000
        )
        failed = await store.turn_recover(host=this_host(), error=TURN_LOST)
        assert sorted(failed) == sorted([(expired, "o"), (dead, "o")])
        for sid, status in ((expired, Status.FAILED), (dead, Status.FAILED), (live, Status.RUNNING)):
            got = await store.get_session("o", sid)
            assert got is not None and got.status is status
        assert await store.turn_recover(host=this_host(), error=TURN_LOST) == []
        assert await store.turn_heartbeat("c", [live, dead], lease_ms=60_000) == [live]
    finally:
        await store.close()
    reopened = SqliteStore(db)
    await reopened.open()  # a live claim survives another process opening the database
    try:
        got = await reopened.get_session("o", live)
        assert got is not None and got.status is Status.RUNNING
    finally:
        await reopened.close()


async def test_interrupt_from_another_process_stops_the_turn_where_it_runs(
    tmp_path: Path, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    env = agent_env(tmp_path)
    for k, v in env.items():
        if not k.startswith("SESSIONS_MCP_"):
            monkeypatch.setenv(k, v)
    local = {"agent": "command", "agent_command": env["SESSIONS_MCP_LOCAL__AGENT_COMMAND"], "agent_input": "none"}
    runner_side, other_side = Runtime(make_settings(local=dict(local))), Runtime(make_settings(local=dict(local)))
    pids = tmp_path / "pids"
    async with runner_side.running(), other_side.running():
        created = await runner_side.service.create_session(
            "local", prompt="hang", title=None, backend=None, model=None, system=None, wait=False,
            timeout_s=0, idempotency_key=None,
        )  # fmt: skip
        sid = created.session.id
        with anyio.fail_after(20):
            while not pids.exists() or not pids.read_text().endswith("\n"):
                await anyio.sleep(0.02)
        agent_pid = int(pids.read_text().split()[1])
        stopped = await other_side.service.interrupt_session("local", sid)
        assert stopped.status is Status.IDLE
        with anyio.fail_after(10):  # the runner's next heartbeat (2 s) notices and kills the group
            while pid_alive(agent_pid):
                await anyio.sleep(0.02)
            while True:
                page = await other_side.service.list_messages(
                    "local", session_id=sid, after=None, limit=10, roles=None, wait_s=0
                )
                if len(page.messages) == 2:
                    break
                await anyio.sleep(0.02)
        assert page.messages[1]["text"] == "started, now hanging\n\n\n[interrupted]"
        assert (await other_side.service.get_session("local", sid)).status is Status.IDLE


async def test_a_stored_message_whose_turn_never_started_is_adopted_by_a_runner(
    tmp_path: Path, make_settings: Callable[..., Settings], db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that stored the user message died (or its call was cancelled) before claiming."""
    env = agent_env(tmp_path)
    for k, v in env.items():
        if not k.startswith("SESSIONS_MCP_"):
            monkeypatch.setenv(k, v)
    store = SqliteStore(db_path)
    await store.open()
    try:
        row, _ = await store.create_session(
            owner="local", title="orphan", model=None, system=None, agent="command", status=Status.RUNNING,
            first_message=("user", [{"type": "text", "text": "adopt me"}], "adopt me"),
        )  # fmt: skip
        assert await store.turn_orphans(agents=["command"], older_than_ms=10_000) == []  # too fresh
        with sqlite3.connect(db_path) as raw:
            raw.execute("UPDATE sessions SET updated_at = updated_at - 60000 WHERE id = ?", (row.id,))
        assert await store.turn_orphans(agents=["openai"], older_than_ms=10_000) == []
        assert await store.turn_orphans(agents=["command"], older_than_ms=10_000) == [(row.id, "local")]
    finally:
        await store.close()
    local = {"agent": "command", "agent_command": env["SESSIONS_MCP_LOCAL__AGENT_COMMAND"], "agent_input": "none"}
    rt = Runtime(make_settings(local=local))
    async with rt.running():
        backend = rt.service.backends["local"]
        with anyio.fail_after(20):
            while (await backend.get_session("local", row.id)).status is Status.RUNNING:
                await anyio.sleep(0.02)
        page = await backend.list_messages(MessageQuery("local", row.id, after=None, limit=10))
    assert [m.text for m in page.items] == ["adopt me", "echo: adopt me\n"]
