"""The real `sessions-mcp` over stdio: both eras, two processes on one database, stdout hygiene."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from .conftest import ERAS, server_command, server_env

pytestmark = pytest.mark.anyio


def stdio_client(db: Path, era: str, **env: str) -> Client:
    cmd = server_command()
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=server_env(db, **env))
    return Client(params, mode=era)


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


@pytest.mark.parametrize("era", ERAS)
async def test_stdio_server_serves_every_tool(tmp_path: Path, era: str) -> None:
    db = tmp_path / "s.db"
    async with stdio_client(db, era) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert names >= {
            "create_session", "send_message", "list_messages", "get_session",
            "list_sessions", "rename_session", "interrupt_session", "delete_session",
        }  # fmt: skip
        created = await ok(c, "create_session", prompt="hello over stdio", title="stdio")
        sid = created["session"]["id"]
        assert created["status"] == "awaiting_reply"
        assert len(sid.split(":", 1)[1]) >= 22
        await ok(c, "send_message", session_id=sid, text="answer", role="assistant")
        page = await ok(c, "list_messages", session_id=sid)
        assert [m["text"] for m in page["messages"]] == ["hello over stdio", "answer"]
        assert page["status"] == "idle"
        inbox = await ok(c, "list_sessions", status="awaiting_reply")
        assert all(s["id"] != sid for s in inbox["sessions"])
        await ok(c, "rename_session", session_id=sid, title="renamed")
        await ok(c, "delete_session", session_id=sid)
        r = await c.call_tool("get_session", {"session_id": sid})
        assert r.is_error and "unknown session" in r.content[0].text  # type: ignore[union-attr]
    assert db.exists()


async def test_two_processes_one_asks_other_answers_while_waiting(tmp_path: Path) -> None:
    """Agent A waits on its question; agent B, another process, finds it in its inbox and answers."""
    db = tmp_path / "shared.db"
    async with stdio_client(db, "auto") as asker, stdio_client(db, "legacy") as answerer:
        created = await ok(asker, "create_session", prompt="please review PR 7", title="review")
        sid = created["session"]["id"]

        async def answer(text: str) -> None:
            # the answerer polls its inbox the way an agent would; the asker is already waiting
            with anyio.fail_after(20):
                while True:
                    inbox = await ok(answerer, "list_sessions", status="awaiting_reply")
                    if any(s["id"] == sid for s in inbox["sessions"]):
                        break
                    await anyio.sleep(0.05)
            await ok(answerer, "send_message", session_id=sid, text=text, role="assistant")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, "LGTM")
            with anyio.fail_after(25):
                got = await ok(asker, "list_messages", session_id=sid, after=created["cursor"], wait_s=20)
        assert [m["text"] for m in got["messages"]] == ["LGTM"]
        assert got["status"] == "idle"

        # and the blocking form: send_message(wait=True) returns the reply written by the other process
        async with anyio.create_task_group() as tg:
            tg.start_soon(answer, "still LGTM")
            sent = await ok(asker, "send_message", session_id=sid, text="and now?", wait=True, timeout_s=20)
        assert [m["text"] for m in sent["messages"]] == ["and now?", "still LGTM"]
        assert sent["status"] == "idle"


async def test_wait_times_out_cleanly_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    async with stdio_client(db, "auto") as c:
        created = await ok(c, "create_session", prompt="anyone?")
        sid = created["session"]["id"]
        before = await ok(c, "get_session", session_id=sid)
        page = await ok(c, "list_messages", session_id=sid, after=created["cursor"], wait_s=0.3)
        assert page["messages"] == [] and page["next_cursor"] == created["cursor"]
        sent = await ok(c, "send_message", session_id=sid, text="hello?", wait=True, timeout_s=0.3)
        assert sent["status"] == "awaiting_reply" and len(sent["messages"]) == 1
        after = await ok(c, "get_session", session_id=sid)
        assert after["status"] == before["status"] == "awaiting_reply"
        assert after["message_count"] == 2


def test_stdout_is_protocol_only_and_version_help(tmp_path: Path) -> None:
    """Raw stdio: every stdout line is a JSON-RPC message, even with noisy logging and a bad request."""
    db = tmp_path / "raw.db"
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_session", "arguments": {"session_id": "local:zz"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "create_session", "arguments": {"title": "raw"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "no/such/method"},
    ]  # fmt: skip
    proc = subprocess.Popen(
        [*server_command(), "--log-level", "DEBUG"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(db),
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        for req in requests:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
        answers: dict[int, dict[str, Any]] = {}
        while len(answers) < 4:
            line = proc.stdout.readline()
            assert line, "server closed stdout early"
            msg = json.loads(line)  # anything that is not JSON fails here
            assert msg["jsonrpc"] == "2.0"
            if "id" in msg:
                answers[msg["id"]] = msg
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
        stderr = proc.stderr.read() if proc.stderr else ""
    assert answers[2]["result"]["isError"] is True
    assert answers[3]["result"]["structuredContent"]["status"] == "idle"
    assert "error" in answers[4]
    assert "Traceback" not in stderr

    out = subprocess.run([*server_command(), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("sessions-mcp ")
    helptext = subprocess.run([*server_command(), "--help"], capture_output=True, text=True, check=True).stdout
    for word in ("--transport", "doctor", "SESSIONS_MCP_LOCAL__DB", "FACTORY_API_KEY"):
        assert word in helptext


def test_python_dash_m_and_console_script_agree() -> None:
    exe = Path(sys.executable).with_name("sessions-mcp")
    a = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True).stdout
    b = subprocess.run([*server_command(), "--version"], capture_output=True, text=True, check=True).stdout
    assert a == b
