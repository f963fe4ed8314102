"""Agent turns across replicas: a replica killed mid-turn; its turn is failed once, never run twice."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import pytest

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings
from sessions_mcp.store.base import TURN_LOST

from ..conftest import agent_server_pid, client_for
from ..test_stdio import ok, stdio_client

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

AGENT = """\
import os, pathlib, sys, time
prompt = sys.argv[-1]
marks = pathlib.Path(os.environ["MARK_DIR"])
(marks / f"ran-{time.monotonic_ns()}").write_text(prompt)
if "slow" in prompt:
    (marks / "slow").write_text(f"{os.getpid()} {os.getppid()}")
    time.sleep(120)
print(f"answer to {prompt}")
"""


async def test_replica_killed_mid_turn_is_recovered_by_another(
    tmp_path: Path, pg_url: str, pg_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    marks = tmp_path / "marks"
    marks.mkdir()
    command = f"{sys.executable} {script}"
    monkeypatch.setenv("MARK_DIR", str(marks))  # replica B runs in this process; its agent inherits it
    settings = pg_settings(local={"agent": "command", "agent_command": command})
    async with client_for(build_server(settings), "auto") as b:
        stack = AsyncExitStack()
        a = await stack.enter_async_context(
            stdio_client(
                pg_url,  # type: ignore[arg-type]
                "auto",
                SESSIONS_MCP_LOCAL__AGENT="command",
                SESSIONS_MCP_LOCAL__AGENT_COMMAND=command,
                MARK_DIR=str(marks),
            )
        )
        created = await ok(a, "create_session", prompt="slow job", title="doomed", wait=False)
        sid = created["session"]["id"]
        with anyio.fail_after(20):
            while not (marks / "slow").exists() or not (marks / "slow").read_text():
                await anyio.sleep(0.05)
        agent_pid, agent_parent = map(int, (marks / "slow").read_text().split())
        replica_pid = agent_server_pid(agent_parent)
        assert (await ok(b, "get_session", session_id=sid))["status"] == "running"
        os.kill(replica_pid, signal.SIGKILL)  # replica A dies mid-turn
        if sys.platform != "linux":  # on Linux the guardian stops the command with its server
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent_pid, signal.SIGKILL)
        killed = time.monotonic()
        with contextlib.suppress(Exception):
            await stack.aclose()
        # replica B's periodic sweep finds the dead claim and fails the session (never reruns it)
        with anyio.fail_after(30):
            while (got := await ok(b, "get_session", session_id=sid))["status"] == "running":
                await anyio.sleep(0.1)
        recovered_after = time.monotonic() - killed
        assert got["status"] == "failed" and got["error"] == TURN_LOST
        # the session carries on: B claims and runs the next turn
        sent = await ok(b, "send_message", session_id=sid, text="quick one", wait=True, timeout_s=30)
        assert sent["status"] == "idle"
        page = await ok(b, "list_messages", session_id=sid)
        assert [m["text"].strip() for m in page["messages"]] == ["slow job", "quick one", "answer to quick one"]
    ran = sorted(p.read_text() for p in marks.glob("ran-*"))
    assert ran == ["quick one", "slow job"]  # each turn ran exactly once, across both replicas
    print(f"\ndead replica's turn failed by the survivor after {recovered_after:.1f}s")


async def test_each_turn_runs_once_with_writers_on_every_replica(
    tmp_path: Path, pg_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three replicas with agents; user messages for the same sessions arrive through different replicas."""
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("MARK_DIR", str(marks))
    settings = pg_settings(local={"agent": "command", "agent_command": f"{sys.executable} {script}"})
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client_for(build_server(settings), era)) for era in ("auto", "legacy", "auto")]  # fmt: skip
        sids = []
        for i in range(4):
            created = await ok(clients[i % 3], "create_session", prompt=f"s{i} q0", wait=False)
            sids.append(created["session"]["id"])

        async def follow_up(i: int) -> None:
            await ok(clients[(i + 1) % 3], "send_message", session_id=sids[i], text=f"s{i} q1", wait=False)

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(follow_up, i)
        for i, sid in enumerate(sids):
            reader = clients[(i + 2) % 3]
            answered, cursor, status = "", None, ""
            try:
                with anyio.fail_after(60):
                    while status != "idle" or f"s{i} q1" not in answered:
                        args: dict[str, object] = {"session_id": sid, "wait_s": 5}
                        if cursor:
                            args["after"] = cursor
                        page = await ok(reader, "list_messages", **args)
                        answered += " ".join(m["text"] for m in page["messages"] if m["role"] == "assistant")
                        cursor, status = page["next_cursor"], page["status"]
            except TimeoutError:
                full = await ok(reader, "list_messages", session_id=sid)
                raise AssertionError(
                    f"session {i} never answered q1: {await ok(reader, 'get_session', session_id=sid)}, "
                    f"{[(m['role'], m['text']) for m in full['messages']]}, runs: "
                    f"{[p.read_text() for p in marks.glob('ran-*')]}"
                ) from None
    prompts = [p.read_text() for p in marks.glob("ran-*")]
    for i in range(4):  # every question reached the agent exactly once, whichever replica ran the turn
        for q in ("q0", "q1"):
            assert sum(p.count(f"s{i} {q}") for p in prompts) == 1, prompts
