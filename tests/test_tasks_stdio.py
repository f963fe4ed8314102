"""MCP tasks over stdio, raw JSON-RPC, both eras: create, poll, complete, fail, cancel, restart, expiry."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from sessions_mcp.store.base import pid_alive

from .tasks_support import (
    LEGACY,
    MODERN,
    SESSION_META,
    RpcError,
    agent_env,
    final_result,
    release,
    start_task,
    started,
    stdio_peer,
)

pytestmark = pytest.mark.anyio
ERAS = [MODERN, LEGACY]


@pytest.fixture
def box(tmp_path: Path) -> Path:
    d = tmp_path / "box"
    d.mkdir()
    return d


@pytest.mark.parametrize("era", ERAS)
async def test_a_waiting_call_becomes_a_task_that_completes_with_the_calls_result(
    tmp_path: Path, box: Path, era: str
) -> None:
    async with stdio_peer(tmp_path / "s.db", era, env=agent_env(box)) as peer:
        task = await start_task(peer, "create_session", prompt="wait:a", title="long one")
        assert task["status"] == "working"
        assert task["taskId"].startswith("task_") and len(task["taskId"]) >= 30
        sid = task["statusMessage"].split("session ")[-1]
        assert sid.startswith("local:")
        if era == MODERN:
            assert 1000 <= task["pollIntervalMs"] <= 2000 and task["ttlMs"] == 86_400_000
            assert task["_meta"][SESSION_META] == sid
        else:
            assert 1000 <= task["pollInterval"] <= 2000 and task["ttl"] == 3_600_000
        await started(box, "a")
        polled = await peer.call("tasks/get", {"taskId": task["taskId"]})
        assert polled["status"] == "working" and "result" not in polled
        assert polled["_meta"][SESSION_META] == sid
        # the session is an ordinary session meanwhile: other views see the same turn
        s = await peer.tool("get_session", session_id=sid)
        assert s["structuredContent"]["status"] == "running"
        release(box, "a")
        done, result = await final_result(peer, task["taskId"])
        assert done["status"] == "completed"
        body = result["structuredContent"]
        assert body["status"] == "idle" and body["session"]["id"] == sid
        assert [m["text"] for m in body["messages"]] == ["wait:a", "reply to a\n"]
        assert "reply to a" in result["content"][0]["text"] and not result.get("isError")
        if era == LEGACY:
            assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}


@pytest.mark.parametrize("era", ERAS)
async def test_a_failed_turn_completes_the_task_with_a_failed_result(tmp_path: Path, box: Path, era: str) -> None:
    async with stdio_peer(tmp_path / "s.db", era, env=agent_env(box)) as peer:
        created = await peer.tool("create_session", prompt="quick", wait=False)
        sid = created["structuredContent"]["session"]["id"]
        task = await start_task(peer, "send_message", session_id=sid, text="fail:b")
        await started(box, "b")
        release(box, "b")
        done, result = await final_result(peer, task["taskId"])
        assert done["status"] == "completed"  # the call itself succeeded; the turn failed
        assert result["structuredContent"]["status"] == "failed"
        assert "gave up on b" in result["structuredContent"]["session"]["error"]


@pytest.mark.parametrize("era", ERAS)
async def test_tasks_cancel_interrupts_the_turn(tmp_path: Path, box: Path, era: str) -> None:
    async with stdio_peer(tmp_path / "s.db", era, env=agent_env(box)) as peer:
        task = await start_task(peer, "create_session", prompt="wait:c")
        agent_pid = await started(box, "c")
        answer = await peer.call("tasks/cancel", {"taskId": task["taskId"]})
        if era == MODERN:
            assert answer == {"resultType": "complete", "_meta": answer["_meta"]}
        else:
            assert answer["status"] == "cancelled"
        done = await peer.poll(task["taskId"])
        assert done["status"] == "cancelled" and "result" not in done
        with anyio.fail_after(20):
            while pid_alive(agent_pid):
                await anyio.sleep(0.05)
        sid = done["statusMessage"] if False else task["statusMessage"].split("session ")[-1]
        s = await peer.tool("get_session", session_id=sid)
        assert s["structuredContent"]["status"] == "idle"
        if era == MODERN:  # cooperative cancel of an ended task: acknowledged, nothing changes
            await peer.call("tasks/cancel", {"taskId": task["taskId"]})
        else:  # SEP-1686: cancelling a terminal task is invalid params
            with pytest.raises(RpcError) as err:
                await peer.call("tasks/cancel", {"taskId": task["taskId"]})
            assert err.value.code == -32602
        assert (await peer.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "cancelled"


@pytest.mark.parametrize("era", ERAS)
async def test_interrupt_session_ends_the_task_cancelled(tmp_path: Path, box: Path, era: str) -> None:
    async with stdio_peer(tmp_path / "s.db", era, env=agent_env(box)) as peer:
        task = await start_task(peer, "create_session", prompt="wait:d")
        await started(box, "d")
        sid = task["statusMessage"].split("session ")[-1]
        r = await peer.tool("interrupt_session", session_id=sid)
        assert not r.get("isError"), r
        done = await peer.poll(task["taskId"])
        assert done["status"] == "cancelled"


@pytest.mark.parametrize("era", ERAS)
async def test_without_task_support_the_call_still_blocks_until_the_reply(tmp_path: Path, box: Path, era: str) -> None:
    async with stdio_peer(tmp_path / "s.db", era, tasks=False, env=agent_env(box)) as peer:
        async with anyio.create_task_group() as tg:
            got: dict[str, Any] = {}

            async def call() -> None:
                got.update(await peer.tool("create_session", prompt="wait:e", timeout_s=60))

            tg.start_soon(call)
            await started(box, "e")
            assert not got  # still waiting: no task was made for it
            release(box, "e")
        assert "resultType" not in got or got["resultType"] == "complete"
        assert "task" not in got and got["structuredContent"]["status"] == "idle"
        assert got["structuredContent"]["messages"][-1]["text"] == "reply to e\n"
        if era == MODERN:  # tasks/* without the extension declared
            with pytest.raises(RpcError) as err:
                await peer.call("tasks/get", {"taskId": "task_whatever"})
            assert err.value.code == -32021
            assert err.value.data == {"requiredCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}}}


@pytest.mark.parametrize("era", ERAS)
async def test_wire_errors(tmp_path: Path, box: Path, era: str) -> None:
    async with stdio_peer(tmp_path / "s.db", era, env=agent_env(box)) as peer:
        for bad in ("task_unknown0000000000000000000000", ""):
            with pytest.raises(RpcError) as err:
                await peer.call("tasks/get", {"taskId": bad})
            assert err.value.code == -32602
        with pytest.raises(RpcError) as err:
            await peer.call("tasks/get", {})
        assert err.value.code == -32602
        if era == LEGACY:
            with pytest.raises(RpcError) as err:  # a tool without execution.taskSupport
                await peer.tool("list_sessions", task={"ttl": 1000})
            assert err.value.code == -32601
            with pytest.raises(RpcError) as err:
                await peer.call("tasks/update", {"taskId": "x", "inputResponses": {}})
            assert err.value.code == -32601
        else:
            # the old params.task is ignored in 2026: a quick call answers as usual
            got = await peer.tool("create_session", task={"ttl": 1000}, prompt="hello", wait=False)
            assert got.get("resultType") == "complete" and "structuredContent" in got
            for method in ("tasks/result", "tasks/list"):
                with pytest.raises(RpcError) as err:
                    await peer.call(method, {"taskId": "x"})
                assert err.value.code == -32601


async def test_a_restart_mid_task_completes_the_task_with_the_lost_turn(tmp_path: Path, box: Path) -> None:
    db = tmp_path / "s.db"
    # the server process itself dies here, so it serves in-process (no per-user daemon behind a relay)
    async with stdio_peer(db, MODERN, env={**agent_env(box), "SESSIONS_MCP_DAEMON": "off"}) as first:
        task = await start_task(first, "create_session", prompt="wait:f")
        agent_pid = await started(box, "f")
        first.proc.kill()  # no goodbye: the task and the user message are already durable
        await first.proc.wait()
    with anyio.fail_after(20):
        while pid_alive(agent_pid):
            await anyio.sleep(0.05)  # the guardian takes the agent down with its server
    async with stdio_peer(db, LEGACY, env=agent_env(box)) as second:
        done = await second.poll(task["taskId"])
        assert done["status"] == "completed"  # over stdio both eras see the local user's tasks
        result = await second.call("tasks/result", {"taskId": task["taskId"]})
        assert result["structuredContent"]["status"] == "failed"
        assert "cut off" in result["structuredContent"]["session"]["error"]


async def test_finished_tasks_expire_after_their_ttl(tmp_path: Path, box: Path) -> None:
    db = tmp_path / "s.db"
    async with stdio_peer(db, MODERN, env=agent_env(box)) as peer:
        task = await start_task(peer, "create_session", prompt="wait:g")
        await started(box, "g")
        release(box, "g")
        await peer.poll(task["taskId"])
        with sqlite3.connect(db) as conn:  # a day and a bit later
            conn.execute("UPDATE tasks SET created_at = created_at - 90000000 WHERE id = ?", (task["taskId"],))
        with pytest.raises(RpcError) as err:
            await peer.call("tasks/get", {"taskId": task["taskId"]})
        assert err.value.code == -32602
        assert sqlite3.connect(db).execute("SELECT count(*) FROM tasks").fetchone()[0] == 1
        # storing the next task deletes what expired, in the same transaction
        newer = await start_task(peer, "create_session", prompt="wait:g2")
        ids = [r[0] for r in sqlite3.connect(db).execute("SELECT id FROM tasks")]
        assert ids == [newer["taskId"]]
        release(box, "g2")
        assert (await peer.poll(newer["taskId"]))["status"] == "completed"


def _normalized(result: dict[str, Any]) -> str:
    """A CallToolResult with what differs between two sessions (ids, cursors, times) replaced."""
    import json
    import re

    body = result["structuredContent"]
    text = json.dumps(
        {"content": result["content"], "structured": body, "isError": result.get("isError")}, sort_keys=True
    )
    swaps = [body["session"]["id"], body["session"]["id"].split(":")[1], body["cursor"]]
    swaps += [m["id"] for m in body["messages"]] + [m["cursor"] for m in body["messages"]]
    swaps += [body.get("message_id", "")]
    names = {s: f"<{i}>" for i, s in enumerate(dict.fromkeys(s for s in swaps if s))}
    for s in sorted(names, key=len, reverse=True):  # longest first: a cursor may contain an id
        text = text.replace(s, names[s])
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(Z|\+00:00)?", "<time>", text)


@pytest.mark.parametrize("tool", ["create_session", "send_message"])
async def test_a_tasks_result_is_what_the_waiting_call_returns(tmp_path: Path, box: Path, tool: str) -> None:
    async with stdio_peer(tmp_path / "s.db", MODERN, env=agent_env(box)) as peer:
        args: list[dict[str, Any]] = [{}, {}]
        if tool == "send_message":
            for i in range(2):
                created = await peer.tool("create_session", title="same")
                args[i] = {"session_id": created["structuredContent"]["session"]["id"]}
        else:
            args = [{"title": "same"}, {"title": "same"}]
        text_key = "prompt" if tool == "create_session" else "text"
        release(box, "same")  # the turn answers at once: both see the same kind of turn end
        waited = await peer.call(
            "tools/call", {"name": tool, "arguments": {**args[0], text_key: "wait:same", "timeout_s": 60}}, tasks=False
        )
        task = await start_task(peer, tool, **args[1], **{text_key: "wait:same"})
        done, result = await final_result(peer, task["taskId"])
        assert done["status"] == "completed"
        assert _normalized(result) == _normalized(waited)
        assert result["structuredContent"]["messages"][-1]["text"] == "reply to same\n"


async def test_a_2025_task_call_with_nothing_to_wait_for_is_born_completed(tmp_path: Path, box: Path) -> None:
    async with stdio_peer(tmp_path / "s.db", LEGACY, env=agent_env(box)) as peer:
        got = await peer.tool("create_session", task={"ttl": 60_000}, prompt="hello", wait=False)
        task = got["task"]
        assert task["status"] == "completed" and task["ttl"] == 60_000
        assert "io.modelcontextprotocol/model-immediate-response" in got["_meta"]
        result = await peer.call("tasks/result", {"taskId": task["taskId"]})
        assert result["structuredContent"]["status"] == "running"  # the call did not wait
        # a call that ends with a tool error is a failed task in 2025-11-25 (SEP-1686)
        bad = await peer.tool("send_message", task={}, session_id="local:nope0000000000000000000", text="hi")
        assert bad["task"]["status"] == "failed"
        failed = await peer.call("tasks/result", {"taskId": bad["task"]["taskId"]})
        assert failed["isError"] is True and "unknown session" in failed["content"][0]["text"]
        listed = await peer.call("tasks/list", {})
        assert {t["taskId"] for t in listed["tasks"]} == {task["taskId"], bad["task"]["taskId"]}


async def test_2025_status_notifications_and_no_progress_for_task_calls(tmp_path: Path, box: Path) -> None:
    async with stdio_peer(tmp_path / "s.db", LEGACY, env=agent_env(box)) as peer:
        got = await peer.call(
            "tools/call",
            {"name": "create_session", "arguments": {"prompt": "wait:n"}, "task": {}, "_meta": {"progressToken": 7}},
        )
        task_id = got["task"]["taskId"]
        await started(box, "n")
        release(box, "n")
        note = await peer.note("notifications/tasks/status", lambda p: p.get("status") == "completed")
        assert note["params"]["taskId"] == task_id
        assert not [n for n in peer.notes if n.get("method") == "notifications/progress"]


async def test_tasks_result_blocks_until_the_turn_ends(tmp_path: Path, box: Path) -> None:
    async with stdio_peer(tmp_path / "s.db", LEGACY, env=agent_env(box)) as peer:
        task = await start_task(peer, "create_session", prompt="wait:r")
        await started(box, "r")
        got: dict[str, Any] = {}

        async def block() -> None:
            got.update(await peer.call("tasks/result", {"taskId": task["taskId"]}))

        async with anyio.create_task_group() as tg:
            tg.start_soon(block)
            assert (await peer.call("tasks/get", {"taskId": task["taskId"]}))["status"] == "working"
            assert not got
            release(box, "r")
        assert got["structuredContent"]["messages"][-1]["text"] == "reply to r\n"


async def test_a_2025_client_may_ask_for_a_short_ttl(tmp_path: Path, box: Path) -> None:
    async with stdio_peer(tmp_path / "s.db", LEGACY, env=agent_env(box)) as peer:
        got = await peer.tool("create_session", task={"ttl": 1000}, prompt="wait:t")
        task_id = got["task"]["taskId"]
        assert got["task"]["ttl"] == 1000
        await started(box, "t")
        await anyio.sleep(1.5)  # the ttl itself is under test: let it pass while the turn runs
        assert (await peer.call("tasks/get", {"taskId": task_id}))["status"] == "working"  # never expires mid-turn
        release(box, "t")
        done = await peer.poll(task_id)
        assert done["status"] == "completed" and done["ttl"] >= 1000
        with anyio.fail_after(10):  # then gone about a second after it ended
            while True:
                try:
                    await peer.call("tasks/get", {"taskId": task_id})
                except RpcError as err:
                    assert err.code == -32602
                    break
                await anyio.sleep(0.1)


async def test_tasks_list_pages_through_the_callers_tasks(tmp_path: Path, box: Path) -> None:
    async with stdio_peer(tmp_path / "s.db", LEGACY, env=agent_env(box)) as peer:
        made = [
            (await peer.tool("create_session", task={}, prompt=f"hi {i}", wait=False))["task"]["taskId"]
            for i in range(52)
        ]
        first = await peer.call("tasks/list", {})
        assert len(first["tasks"]) == 50 and first["nextCursor"]
        second = await peer.call("tasks/list", {"cursor": first["nextCursor"]})
        assert "nextCursor" not in second
        listed = [t["taskId"] for t in first["tasks"] + second["tasks"]]
        assert sorted(listed) == sorted(made) and len(set(listed)) == 52
        with pytest.raises(RpcError) as err:
            await peer.call("tasks/list", {"cursor": "not-a-cursor"})
        assert err.value.code == -32602
