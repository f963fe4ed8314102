"""The contract suite: DESIGN.md's tool semantics, run against every backend harness in both eras.

A harness whose agent answers by itself replies ``echo: <text>``; the local mailbox is answered
by the test through ``send_message(role="assistant")``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError

from sessions_mcp.server import build_server

from ..conftest import ERAS, client_for
from ..harnesses import discover

HARNESSES = discover()
pytestmark = pytest.mark.anyio


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with HARNESSES[request.param]() as h:
        yield h


@pytest.fixture(params=ERAS)
async def mcp_client(harness: Any, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    async with client_for(build_server(harness.settings(tmp_path)), request.param) as c:
        yield c


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def call_error(client: Client, tool: str, **args: Any) -> str:
    r = await client.call_tool(tool, args)
    assert r.is_error, r.structured_content
    return r.content[0].text  # type: ignore[union-attr]


async def ask(harness: Any, client: Client, prompt: str) -> dict[str, Any]:
    """Create a session with a prompt and get it answered; returns the create result."""
    created = await call(client, "create_session", prompt=prompt, title="contract", timeout_s=20)
    sid = created["session"]["id"]
    if not harness.auto_reply:
        assert created["status"] == "awaiting_reply"
        await harness.reply(client, sid, prompt)
    return created


async def test_tools_listed_with_annotations(mcp_client: Client) -> None:
    tools = {t.name: t for t in (await mcp_client.list_tools()).tools}
    expected = {
        "create_session": (False, False, False),
        "send_message": (False, False, False),
        "list_messages": (True, False, True),
        "get_session": (True, False, True),
        "list_sessions": (True, False, True),
        "rename_session": (False, False, True),
        "interrupt_session": (False, False, True),
        "delete_session": (False, True, True),
    }
    assert set(expected) <= set(tools)
    for name, (ro, destructive, idem) in expected.items():
        a = tools[name].annotations
        assert a is not None
        assert (a.read_only_hint, a.destructive_hint, a.idempotent_hint) == (ro, destructive, idem), name
        assert a.open_world_hint is not None
        assert tools[name].output_schema is not None
        assert tools[name].description


async def test_create_without_prompt_is_idle(mcp_client: Client, harness: Any) -> None:
    r = await call(mcp_client, "create_session", title="empty")
    s = r["session"]
    assert r["status"] == "idle" and s["status"] == "idle"
    assert s["id"].startswith(f"{harness.name}:")
    assert s["backend"] == harness.name
    assert r["messages"] == []
    assert s["transcript_uri"].endswith("/transcript") and s["messages_uri"].endswith("/messages")
    got = await call(mcp_client, "get_session", session_id=s["id"])
    assert got["id"] == s["id"] and got["title"] == "empty"


async def test_question_and_answer_then_cursor_reads_only_new(mcp_client: Client, harness: Any) -> None:
    created = await ask(harness, mcp_client, "what is 2+2")
    sid = created["session"]["id"]
    page = await call(mcp_client, "list_messages", session_id=sid, wait_s=10)
    texts = [m["text"] for m in page["messages"]]
    assert texts[0] == "what is 2+2"
    assert any("echo: what is 2+2" in t for t in texts[1:])
    assert page["status"] == "idle"
    again = await call(mcp_client, "list_messages", session_id=sid, after=page["next_cursor"])
    assert again["messages"] == [] and again["next_cursor"] == page["next_cursor"]
    for m in page["messages"]:
        assert m["session_id"] == sid and m["role"] in ("user", "assistant", "tool", "system")
        assert m["parts"] and m["created_at"]


async def test_send_message_and_follow_with_cursor(mcp_client: Client, harness: Any) -> None:
    created = await ask(harness, mcp_client, "first")
    sid = created["session"]["id"]
    first_page = await call(mcp_client, "list_messages", session_id=sid, wait_s=10)
    cursor = first_page["next_cursor"]
    sent = await call(mcp_client, "send_message", session_id=sid, text="second", timeout_s=20)
    assert sent["message_id"] and sent["messages"][0]["text"] == "second"
    if not harness.auto_reply:
        assert sent["status"] == "awaiting_reply"
        await harness.reply(mcp_client, sid, "second")
    new = await call(mcp_client, "list_messages", session_id=sid, after=cursor, wait_s=10)
    texts = [m["text"] for m in new["messages"]]
    assert texts[0] == "second"
    if len(texts) == 1:  # the reply may land after the first read
        more = await call(mcp_client, "list_messages", session_id=sid, after=new["next_cursor"], wait_s=10)
        texts += [m["text"] for m in more["messages"]]
    assert "first" not in texts
    assert any("echo: second" in t for t in texts)


async def test_wait_true_returns_reply(mcp_client: Client, harness: Any) -> None:
    if not harness.auto_reply:
        created = await call(mcp_client, "create_session", title="w")
        sid = created["session"]["id"]

        async def answer() -> None:
            page = await call(mcp_client, "list_sessions", status="awaiting_reply")
            while not any(s["id"] == sid for s in page["sessions"]):
                await anyio.sleep(0.02)
                page = await call(mcp_client, "list_sessions", status="awaiting_reply")
            await harness.reply(mcp_client, sid, "ping")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            r = await call(mcp_client, "send_message", session_id=sid, text="ping", wait=True, timeout_s=10)
    else:
        r = await call(mcp_client, "create_session", prompt="ping", wait=True, timeout_s=20)
    assert r["status"] == "idle"
    assert r["messages"][0]["text"] == "ping"
    assert any("echo: ping" in m["text"] for m in r["messages"][1:])


async def test_wait_timeout_returns_running_and_cursor(mcp_client: Client, harness: Any) -> None:
    async with harness.slow():
        r = await call(mcp_client, "create_session", prompt="slow one", wait=True, timeout_s=0.5)
    assert r["status"] in ("running", "awaiting_reply")
    assert r["cursor"]
    follow = await call(mcp_client, "list_messages", session_id=r["session"]["id"], after=r["cursor"])
    assert all(m["text"] != "slow one" for m in follow["messages"])


async def test_list_sessions_filters_and_pages(mcp_client: Client, harness: Any) -> None:
    ids = [(await call(mcp_client, "create_session", title=f"page {i}"))["session"]["id"] for i in range(3)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        args: dict[str, Any] = {"limit": 2, "backend": harness.name}
        if cursor:
            args["cursor"] = cursor
        page = await call(mcp_client, "list_sessions", **args)
        seen += [s["id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert set(ids) <= set(seen)
    assert len(seen) == len(set(seen)), "a session appeared on two pages"
    idle = await call(mcp_client, "list_sessions", status=["idle", "failed"])
    assert all(s["status"] in ("idle", "failed") for s in idle["sessions"])


async def test_rename_interrupt_delete_or_clear_unsupported(mcp_client: Client, harness: Any) -> None:
    sid = (await call(mcp_client, "create_session", title="old"))["session"]["id"]
    r = await mcp_client.call_tool("rename_session", {"session_id": sid, "title": "new"})
    if r.is_error:
        assert harness.name in r.content[0].text and "rename" in r.content[0].text  # type: ignore[union-attr]
    else:
        assert r.structured_content["title"] == "new"  # type: ignore[index]
    r = await mcp_client.call_tool("interrupt_session", {"session_id": sid})
    if r.is_error:
        assert harness.name in r.content[0].text and "interrupt" in r.content[0].text  # type: ignore[union-attr]
    else:
        assert r.structured_content["status"] in ("idle", "failed")  # type: ignore[index]
    r = await mcp_client.call_tool("delete_session", {"session_id": sid})
    if r.is_error:
        assert harness.name in r.content[0].text and "delete" in r.content[0].text  # type: ignore[union-attr]
        return
    assert r.structured_content == {"deleted": True, "session_id": sid}
    assert "unknown session" in await call_error(mcp_client, "get_session", session_id=sid)
    assert "unknown session" in await call_error(mcp_client, "delete_session", session_id=sid)
    assert "unknown session" in await call_error(mcp_client, "send_message", session_id=sid, text="x")
    with pytest.raises(MCPError):
        await mcp_client.read_resource(f"session://{sid.replace(':', '/', 1)}/transcript")


async def test_bad_arguments_are_tool_errors(mcp_client: Client, harness: Any) -> None:
    sid = (await call(mcp_client, "create_session", title="args"))["session"]["id"]
    other = (await call(mcp_client, "create_session", title="other"))["session"]["id"]
    assert "unknown session" in await call_error(mcp_client, "get_session", session_id=f"{harness.name}:nope-nope")
    assert "unknown session" in await call_error(mcp_client, "get_session", session_id="nonsense")
    assert "empty" in await call_error(mcp_client, "send_message", session_id=sid, text="   ")
    assert "cursor" in await call_error(mcp_client, "list_messages", session_id=sid, after="garbage!")
    foreign = (await call(mcp_client, "list_messages", session_id=other))["next_cursor"]
    assert "cursor" in await call_error(mcp_client, "list_messages", session_id=sid, after=foreign)
    await call_error(mcp_client, "list_messages", session_id=sid, limit=0)
    await call_error(mcp_client, "list_messages", session_id=sid, limit=201)
    assert "backend" in await call_error(mcp_client, "create_session", backend="nope")
    assert "limit" in await call_error(mcp_client, "send_message", session_id=sid, text="x" * 1_000_001)


async def test_idempotency_keys(mcp_client: Client, harness: Any) -> None:
    a = await call(mcp_client, "create_session", title="idem", idempotency_key="k-create")
    b = await call(mcp_client, "create_session", title="idem", idempotency_key="k-create")
    assert a["session"]["id"] == b["session"]["id"] and b["replayed"] is True
    assert "idempotency_key" in await call_error(
        mcp_client, "create_session", title="different", idempotency_key="k-create"
    )
    sid = a["session"]["id"]
    m1 = await call(mcp_client, "send_message", session_id=sid, text="once", wait=False, idempotency_key="k-send")
    m2 = await call(mcp_client, "send_message", session_id=sid, text="once", wait=False, idempotency_key="k-send")
    assert m1["message_id"] == m2["message_id"]
    assert "idempotency_key" in await call_error(
        mcp_client, "send_message", session_id=sid, text="twice", idempotency_key="k-send"
    )
    page = await call(mcp_client, "list_messages", session_id=sid, roles=["user"])
    assert [m["text"] for m in page["messages"]].count("once") == 1


async def test_max_chars_cuts_and_cursor_continues(mcp_client: Client, harness: Any) -> None:
    sid = (await call(mcp_client, "create_session", title="long"))["session"]["id"]
    body = "".join(f"{i:05d}" for i in range(2000))  # 10,000 characters
    await call(mcp_client, "send_message", session_id=sid, text=body, wait=False)
    got = ""
    cursor = None
    for _ in range(20):
        args: dict[str, Any] = {"session_id": sid, "max_chars": 3000, "roles": ["user"]}
        if cursor:
            args["after"] = cursor
        page = await call(mcp_client, "list_messages", **args)
        if not page["messages"]:
            break
        m = page["messages"][0]
        assert len(m["text"]) <= 3000
        assert m["text_offset"] == len(got)
        got += m["text"]
        cursor = page["next_cursor"]
        if got == body:
            break
    assert got == body


async def test_resources_transcript_messages_index(mcp_client: Client, harness: Any) -> None:
    created = await ask(harness, mcp_client, "resource me")
    s = created["session"]
    await call(mcp_client, "list_messages", session_id=s["id"], wait_s=10)
    md = (await mcp_client.read_resource(s["transcript_uri"])).contents[0]
    assert md.mime_type == "text/markdown" and "resource me" in md.text  # type: ignore[union-attr]
    js = (await mcp_client.read_resource(s["messages_uri"])).contents[0]
    assert js.mime_type == "application/json" and "resource me" in js.text  # type: ignore[union-attr]
    index = (await mcp_client.read_resource("sessions://index")).contents[0]
    assert s["id"] in index.text and harness.name in index.text  # type: ignore[union-attr]
    with pytest.raises(MCPError):
        await mcp_client.read_resource(f"session://{harness.name}/does-not-exist/transcript")


async def test_delegate_prompt_and_completions(mcp_client: Client, harness: Any) -> None:
    prompts = {p.name for p in (await mcp_client.list_prompts()).prompts}
    assert "delegate" in prompts
    got = await mcp_client.get_prompt("delegate", {"task": "fix the bug"})
    text = got.messages[0].content.text  # type: ignore[union-attr]
    assert "fix the bug" in text and "create_session" in text
