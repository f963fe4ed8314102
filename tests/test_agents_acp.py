"""Named ACP agents with the REAL coding-agent CLIs (scripts/setup-clis.sh) against the mock model.

Each preset runs the same scenario through the MCP tools of an in-process server: a tool call
asked for permission and allowed (the file is written), the same refused (it is not), the policy
answering on its own, a follow-up that carries the earlier conversation, a server restart followed
by a follow-up, and an interrupt of a slow turn.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from mcp import Client

from sessions_mcp.principal import LOCAL_PRINCIPAL
from sessions_mcp.server import Runtime, build_server
from sessions_mcp.settings import Settings

from .acp_rig import PRESETS, Rig, rig_for
from .acp_script import SECRET
from .conftest import client_for

pytestmark = [pytest.mark.anyio, pytest.mark.hosts, pytest.mark.timeout(900)]


@pytest.fixture(params=list(PRESETS))
def rig(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_settings: Callable[..., Settings],
) -> Iterator[Rig]:
    with rig_for(request.param, tmp_path, monkeypatch, make_settings) as r:
        yield r


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def until(client: Client, sid: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            s = await ok(client, "get_session", session_id=sid)
            if s["status"] in statuses:
                return s
            await anyio.sleep(0.05)


async def messages(client: Client, sid: str, **kw: Any) -> list[dict[str, Any]]:
    page = await ok(client, "list_messages", session_id=sid, limit=200, max_chars=1_000_000, **kw)
    return page["messages"]


def tool_parts(msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for m in msgs for p in m["parts"] if p["type"] in ("tool_call", "tool_result")]


async def test_permission_asked_answered_both_ways_then_follow_ups_and_restart(rig: Rig) -> None:
    work = rig.home.work
    async with rig.client() as c:
        first = await ok(
            c, "create_session", agent=rig.preset, workdir=str(work), prompt="WRITE allowed.txt please", timeout_s=180
        )
        sid = first["session"]["id"]
        assert first["status"] == "needs_input", first["session"]["error"]
        pending = first["pending"]
        assert pending["kind"] == "permission" and pending["options"], pending
        kinds = {o["kind"] for o in pending["options"]}
        assert {"allow_once", "reject_once"} <= kinds, pending
        # a bogus answer is a tool error naming the options, and answers nothing
        bad = await c.call_tool("send_message", {"session_id": sid, "text": "maybe later"})
        assert bad.is_error
        assert pending["options"][0]["id"] in str(bad.content)
        assert (await ok(c, "get_session", session_id=sid))["status"] == "needs_input"
        allow = next(o for o in pending["options"] if o["kind"] == "allow_once")
        done = await ok(c, "send_message", session_id=sid, text=allow["label"].upper(), timeout_s=180)
        assert done["status"] == "idle", done
        assert (work / "allowed.txt").read_text().strip() == "hi"
        msgs = await messages(c, sid)
        calls = [p for p in tool_parts(msgs) if p["type"] == "tool_call"]
        assert calls and calls[0]["status"] == "completed", tool_parts(msgs)
        assert any("WROTE-DONE" in m["text"] for m in msgs if m["role"] == "assistant")

        # refused: the file is not written, the session ends idle (not failed)
        asked = await ok(c, "send_message", session_id=sid, text="WRITE refused.txt now", timeout_s=180)
        assert asked["status"] == "needs_input", asked
        reject = next(o for o in asked["pending"]["options"] if o["kind"] == "reject_once")
        after = await ok(c, "send_message", session_id=sid, text=reject["id"], timeout_s=180)
        assert after["status"] == "idle", after
        assert not (work / "refused.txt").exists()

        # the agent's conversation continues: a follow-up sees an earlier message
        await ok(c, "send_message", session_id=sid, text=f"REMEMBER the word {SECRET}", timeout_s=180)
        recall = await ok(c, "send_message", session_id=sid, text="RECALL the word", timeout_s=180)
        assert f"RECALLED {SECRET}" in recall["messages"][-1]["text"], recall

    # a restart: a new server on the same store loads the agent's conversation
    async with rig.client() as c:
        again = await ok(c, "send_message", session_id=sid, text="RECALL the word once more", timeout_s=240)
        assert again["status"] == "idle", again
        assert f"RECALLED {SECRET}" in again["messages"][-1]["text"], again
        replay = await messages(c, sid, roles=["user"])
        assert len(replay) == 7, [m["text"] for m in replay]  # nothing replayed into the transcript


async def test_policy_answers_and_interrupt_stops_a_slow_turn(rig: Rig) -> None:
    work = rig.home.work
    async with rig.client(permissions="allow") as c:
        r = await ok(c, "create_session", agent=rig.preset, workdir=str(work), prompt="WRITE policy.txt", timeout_s=180)
        assert r["status"] == "idle", r
        assert (work / "policy.txt").exists()
        sid = r["session"]["id"]
        notes = [m["text"] for m in await messages(c, sid, roles=["tool"])]
        assert any("policy allow" in t for t in notes), notes
        slow = await ok(c, "send_message", session_id=sid, text="SLOW please", wait=False)
        assert slow["status"] == "running"
        await anyio.to_thread.run_sync(lambda: rig.mock.wait_delayed(lambda e: "SLOW" in str(e.get("body", "")), 90))
        stopped = await ok(c, "interrupt_session", session_id=sid)
        assert stopped["status"] == "idle", stopped
        follow = await ok(c, "send_message", session_id=sid, text=f"REMEMBER {SECRET}", timeout_s=180)
        assert follow["status"] == "idle" and "NOTED" in follow["messages"][-1]["text"], follow


# --- one preset is enough for what is the same for every agent -----------------------------------


@pytest.fixture
def one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_settings: Callable[..., Settings]) -> Iterator[Rig]:
    with rig_for("claude", tmp_path, monkeypatch, make_settings) as r:
        yield r


async def test_a_client_that_can_elicit_is_asked_first(one: Rig) -> None:
    asked: list[Any] = []

    async def answer(context: Any, params: Any) -> Any:
        from mcp.types import ElicitResult

        asked.append(params)
        choices = params.requested_schema["properties"]["answer"]["oneOf"]
        allow = next(c["const"] for c in choices if "once" in c["const"] and "reject" not in c["const"])
        return ElicitResult(action="accept", content={"answer": allow})

    settings = one.settings()
    async with client_for(build_server(settings), "legacy", elicitation_callback=answer) as c:
        r = await ok(c, "create_session", agent="claude", workdir=str(one.home.work), prompt="WRITE allowed.txt")
        assert r["status"] == "idle", r
    assert asked and "echo hi > allowed.txt" in asked[0].message
    assert (one.home.work / "allowed.txt").exists()


async def test_an_unanswered_request_is_rejected_after_the_input_timeout(one: Rig) -> None:
    settings = one.make(local={"agent_roots": [str(one.home.work)], "input_timeout_s": 1}, agents={"claude": {}})
    async with client_for(build_server(settings), "auto") as c:
        r = await ok(c, "create_session", agent="claude", workdir=str(one.home.work), prompt="WRITE refused.txt")
        sid = r["session"]["id"]
        assert r["status"] == "needs_input"
        done = await until(c, sid, ("idle", "failed"))
        assert done["status"] == "idle" and done["pending"] is None, done
        notes = [m["text"] for m in await messages(c, sid, roles=["tool"])]
        assert any("nobody answered in time" in t for t in notes), notes
    assert not (one.home.work / "refused.txt").exists()


async def test_max_agents_queues_turns_and_reuses_idle_slots(one: Rig) -> None:
    settings = one.make(local={"agent_roots": [str(one.home.work)], "max_agents": 1}, agents={"claude": {}})
    work = str(one.home.work)
    async with client_for(build_server(settings), "auto") as c:
        a = await ok(c, "create_session", agent="claude", workdir=work, prompt="WRITE allowed.txt", timeout_s=120)
        assert a["status"] == "needs_input"  # holds the only slot while it waits
        b = await ok(c, "create_session", agent="claude", workdir=work, prompt=f"REMEMBER {SECRET}", timeout_s=1)
        assert b["status"] == "running"  # queued behind a
        allow = next(o for o in a["pending"]["options"] if o["kind"] == "allow_once")
        await ok(c, "send_message", session_id=a["session"]["id"], text=allow["id"], timeout_s=120)
        done = await until(c, b["session"]["id"], ("idle", "failed"))
        assert done["status"] == "idle", done
        # a's process was stopped to free the slot; its next turn starts it again and loads its conversation
        again = await ok(c, "send_message", session_id=a["session"]["id"], text="REMEMBER again", timeout_s=120)
        assert again["status"] == "idle" and "NOTED" in again["messages"][-1]["text"], again


async def test_interrupt_ends_a_turn_that_waits_for_input(one: Rig) -> None:
    async with one.client() as c:
        r = await ok(c, "create_session", agent="claude", workdir=str(one.home.work), prompt="WRITE refused.txt")
        sid = r["session"]["id"]
        assert r["status"] == "needs_input"
        listed = await ok(c, "list_sessions", status="needs_input")
        assert [s["id"] for s in listed["sessions"]] == [sid] and listed["sessions"][0]["pending"]["options"]
        stopped = await ok(c, "interrupt_session", session_id=sid)
        assert stopped["status"] == "idle" and stopped["pending"] is None, stopped
        after = await ok(c, "send_message", session_id=sid, text=f"REMEMBER {SECRET}", timeout_s=120)
        assert after["status"] == "idle" and "NOTED" in after["messages"][-1]["text"], after
        assert one.home.leftover_pids(wait_s=0)  # its process stays for the next turn...
        await ok(c, "delete_session", session_id=sid)
        assert not one.home.leftover_pids()  # ...until the session is deleted
    assert not (one.home.work / "refused.txt").exists()


async def test_tool_calls_are_in_the_transcript_while_the_turn_still_runs(one: Rig) -> None:
    async with one.client(permissions="allow") as c:
        r = await ok(
            c, "create_session", agent="claude", workdir=str(one.home.work), prompt="WRITE live.txt", wait=False
        )
        sid = r["session"]["id"]
        page = await ok(c, "list_messages", session_id=sid, after=r["cursor"], roles=["tool"], wait_s=120)
        seen = [m["text"] for m in page["messages"]]
        while not any("(completed)" in t for t in seen):
            page = await ok(c, "list_messages", session_id=sid, after=page["next_cursor"], roles=["tool"], wait_s=120)
            seen += [m["text"] for m in page["messages"]]
        assert page["status"] == "running"  # the model's final answer is still 60 s away
        assert (one.home.work / "live.txt").exists()
        await ok(c, "interrupt_session", session_id=sid)


async def test_deny_refuses_at_once(one: Rig) -> None:
    async with one.client(permissions="deny") as c:
        r = await ok(c, "create_session", agent="claude", workdir=str(one.home.work), prompt="WRITE policy.txt")
        assert r["status"] == "idle", r
        sid = r["session"]["id"]
        notes = [m["text"] for m in await messages(c, sid, roles=["tool"])]
        assert any("policy deny" in t for t in notes), notes
    assert not (one.home.work / "policy.txt").exists()


def test_the_agent_stops_when_the_event_loop_cancels_every_task_at_once(one: Rig) -> None:
    """``asyncio.run`` left with the server still running cancels every task at once, the ACP
    connection's own reader and writer included: ending the turn must not then wait for ever to
    tell the agent (``session/cancel``) over a connection that can no longer write."""
    settings = one.settings(permissions="allow")
    ended = threading.Event()

    async def main() -> None:
        rt = Runtime(settings)
        up = asyncio.Event()

        async def serve() -> None:
            async with rt.running():
                up.set()
                await asyncio.Event().wait()

        server = asyncio.create_task(serve())
        await up.wait()
        await rt.service.create_session(
            LOCAL_PRINCIPAL, prompt="SLOW please", title=None, backend=None, model=None, system=None, wait=False,
            timeout_s=0, idempotency_key=None, agent="claude", workdir=str(one.home.work),
        )  # fmt: skip
        slow = lambda e: "SLOW" in str(e.get("body", ""))  # noqa: E731
        await asyncio.get_running_loop().run_in_executor(None, lambda: one.mock.wait_delayed(slow, 90))
        assert not server.done()
        # returning now leaves the server, its turn and the agent connection's tasks to asyncio.run

    def run() -> None:
        try:
            asyncio.run(main())
        finally:
            ended.set()

    threading.Thread(target=run, name="loop-under-test", daemon=True).start()
    assert ended.wait(60), "the event loop never finished cancelling the server's tasks"
