"""Per-principal isolation over real HTTP/SSE, and the inbound token never leaving the server."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import MCPError
from mcp.client.subscriptions import ResourceUpdated
from mcp.types import ResourceTemplateReference, ResourceUpdatedNotification
from starlette.types import Receive, Scope, Send

from sessions_mcp import service as service_module
from sessions_mcp.settings import Settings

from .emulators.factory import API_KEY, FactoryEmulator, Served
from .http_support import ALICE, BOB, TOKENS, ServerProcess, error_text, mcp_client, ok, serve

pytestmark = pytest.mark.anyio

CLIENTS = [("http", "auto"), ("http", "legacy"), ("sse", "legacy"), ("sse", "auto")]


def unknown_like(session_id: str) -> str:
    backend, _, native = session_id.partition(":")
    fake = secrets.token_urlsafe(len(native))[: len(native)]
    return f"{backend}:{fake}"


def _uri(session_id: str, kind: str) -> str:
    backend, _, native = session_id.partition(":")
    return f"session://{backend}/{native}/{kind}"


async def _answers(client: Any, session_id: str) -> list[str]:
    """What ``client`` gets for every way of touching ``session_id``, as comparable text."""
    out: list[str] = []
    for tool, args in [
        ("get_session", {}),
        ("list_messages", {}),
        ("list_messages", {"wait_s": 0.2}),
        ("send_message", {"text": "let me in", "wait": False}),
        ("rename_session", {"title": "mine now"}),
        ("interrupt_session", {}),
        ("delete_session", {}),
    ]:
        result = await client.call_tool(tool, {"session_id": session_id, **args})
        out.append(f"{tool}: {error_text(result)}")
    for kind in ("transcript", "messages"):
        try:
            await client.read_resource(_uri(session_id, kind))
            out.append(f"read {kind}: readable!")
        except MCPError as exc:
            out.append(f"read {kind}: {exc.code} {exc.message}")
    return out


@pytest.mark.parametrize(("transport", "era"), CLIENTS)
async def test_another_principals_handle_answers_exactly_like_an_unknown_one(
    make_settings: Callable[..., Settings], transport: str, era: str
) -> None:
    async with (
        serve(make_settings(http={"tokens": TOKENS})) as served,
        mcp_client(served.url, transport, era, token=ALICE) as alice,
        mcp_client(served.url, transport, era, token=BOB) as bob,
    ):
        created = await ok(alice, "create_session", prompt="alice's private task", title="alice")
        sid = created["session"]["id"]
        fake = unknown_like(sid)
        native, fake_native = sid.partition(":")[2], fake.partition(":")[2]
        theirs = [a.replace(sid, fake).replace(native, fake_native) for a in await _answers(bob, sid)]
        unknown = await _answers(bob, fake)
        assert theirs == unknown
        assert all("unknown session" in a for a in unknown[:7]), unknown
        # bob sees none of alice's sessions anywhere
        listed = await ok(bob, "list_sessions")
        assert listed["sessions"] == []
        completion = await bob.complete(
            ResourceTemplateReference(type="ref/resource", uri="session://{backend}/{native_id}/transcript"),
            {"name": "native_id", "value": ""},
        )
        assert native not in completion.completion.values
        # and nothing of alice's changed
        page = await ok(alice, "list_messages", session_id=sid)
        assert [m["text"] for m in page["messages"]] == ["alice's private task"]
        assert (await ok(alice, "get_session", session_id=sid))["title"] == "alice"


@pytest.mark.parametrize(("transport", "era"), CLIENTS)
async def test_subscriptions_to_another_principals_session_stay_silent(
    make_settings: Callable[..., Settings], transport: str, era: str
) -> None:
    """Bob subscribes to alice's URI and his own; after his own update arrives, none of alice's has."""
    async with (
        serve(make_settings(http={"tokens": TOKENS})) as served,
        mcp_client(served.url, transport, era, token=ALICE) as alice,
    ):
        a = (await ok(alice, "create_session", title="a"))["session"]
        got: list[str] = []
        arrived = anyio.Event()

        async def on_message(msg: Any) -> None:
            nonlocal arrived
            if isinstance(msg, ResourceUpdatedNotification):
                got.append(str(msg.params.uri))
                arrived.set()

        async with mcp_client(served.url, transport, era, token=BOB, message_handler=on_message) as bob:
            b = (await ok(bob, "create_session", title="b"))["session"]
            if era == "legacy":
                await bob.subscribe_resource(a["transcript_uri"])  # answers {} exactly as for an unknown URI
                await bob.subscribe_resource(b["transcript_uri"])
                await ok(alice, "send_message", session_id=a["id"], text="private", wait=False)
                await ok(bob, "send_message", session_id=b["id"], text="mine", wait=False)
                with anyio.fail_after(5):
                    while b["transcript_uri"] not in got:
                        await arrived.wait()
                        arrived = anyio.Event()
            else:
                async with bob.listen(resource_subscriptions=[a["transcript_uri"], b["transcript_uri"]]) as sub:
                    await ok(alice, "send_message", session_id=a["id"], text="private", wait=False)
                    await ok(bob, "send_message", session_id=b["id"], text="mine", wait=False)
                    with anyio.fail_after(5):
                        async for ev in sub:
                            if isinstance(ev, ResourceUpdated):
                                got.append(ev.uri)
                                if ev.uri == b["transcript_uri"]:
                                    break
        assert a["transcript_uri"] not in got and b["transcript_uri"] in got, got


@pytest.mark.parametrize("mode", ["http", "http-stateless", "sse"])
async def test_two_concurrent_clients_with_different_tokens_never_see_each_other(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(service_module, "HEARTBEAT_S", 0.03)
    transport = "sse" if mode == "sse" else "http"
    settings = make_settings(http={"tokens": TOKENS, "stateless": mode == "http-stateless"})
    rounds = 8
    seen: dict[str, dict[str, Any]] = {}

    async def run(name: str, token: str, era: str) -> None:
        mine: set[str] = set()
        progress: list[str] = []
        notes: list[Any] = []

        async def on_message(msg: Any) -> None:
            notes.append(msg)

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        async with mcp_client(served.url, transport, era, token=token, message_handler=on_message) as c:
            for i in range(rounds):
                created = await ok(c, "create_session", prompt=f"{name} task {i}", title=f"{name}-{i}")
                sid = created["session"]["id"]
                mine.add(sid)
                await anyio.sleep(0)  # let the other client interleave
                await ok(c, "send_message", session_id=sid, text=f"{name} answer {i}", role="assistant")
                r = await c.call_tool(
                    "list_messages",
                    {"session_id": sid, "after": created["cursor"], "wait_s": 0.2},
                    progress_callback=on_progress,
                )
                page = r.structured_content or {}
                assert [m["text"] for m in page["messages"]] == [f"{name} answer {i}"]
                waited = await c.call_tool(
                    "list_messages",
                    {"session_id": sid, "after": page["next_cursor"], "wait_s": 0.15},
                    progress_callback=on_progress,
                )
                assert not waited.is_error and waited.structured_content["messages"] == []  # type: ignore[index]
                listed = await ok(c, "list_sessions", limit=100)
                assert {s["id"] for s in listed["sessions"]} == mine
            seen[name] = {"sessions": mine, "progress": progress, "notes": notes}

    async with serve(settings) as served, anyio.create_task_group() as tg:
        tg.start_soon(run, "alice", ALICE, "auto")
        tg.start_soon(run, "bob", BOB, "legacy")
    alice, bob = seen["alice"], seen["bob"]
    assert not alice["sessions"] & bob["sessions"]
    assert alice["progress"] and bob["progress"]  # each waiting call reported progress to its own caller
    for who, other in (("alice", bob), ("bob", alice)):
        for note in seen[who]["notes"]:
            text = repr(note)
            assert not any(sid in text for sid in other["sessions"]), (who, note)


async def test_token_canary_never_leaves_the_server(tmp_path: Path) -> None:
    """The inbound bearer token appears in no log line, no result and no upstream request."""
    canary = "CANARY-" + secrets.token_hex(16)
    wrong = "CANARY-WRONG-" + secrets.token_hex(16)
    emulator = FactoryEmulator()
    upstream: list[dict[str, Any]] = []

    async def recorder(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await emulator.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        upstream.append(
            {
                "path": scope["path"],
                "query": scope.get("query_string", b"").decode(),
                "headers": {k.decode().lower(): v.decode() for k, v in scope["headers"]},
                "body": body.decode("utf-8", "replace"),
            }
        )
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await emulator.app(scope, replay, send)

    results: list[str] = []
    with Served(recorder) as factory:
        env = {
            "SESSIONS_MCP_HTTP__TOKENS": f"alice={canary}",
            "SESSIONS_MCP_BACKENDS": "local,factory",
            "FACTORY_API_KEY": API_KEY,
            "SESSIONS_MCP_FACTORY__BASE_URL": factory.url,
            "SESSIONS_MCP_LOG_LEVEL": "DEBUG",  # the noisiest logs, access log included
        }
        with ServerProcess(tmp_path / "s.db", env=env) as server:
            url = server.started()
            for transport, era in CLIENTS:
                async with mcp_client(url, transport, era, token=canary) as c:
                    for backend in ("factory", "local"):
                        created = await c.call_tool(
                            "create_session", {"prompt": f"hello via {transport}", "backend": backend}
                        )
                        results.append(repr(created))
                        sid = (created.structured_content or {})["session"]["id"]
                        for tool, args in [
                            ("send_message", {"text": "more", "wait": backend == "factory", "timeout_s": 5}),
                            ("list_messages", {"wait_s": 0.5}),
                            ("get_session", {}),
                        ]:
                            results.append(repr(await c.call_tool(tool, {"session_id": sid, **args})))
                        results.append(repr(await c.read_resource(_uri(sid, "transcript"))))
                    results.append(repr(await c.call_tool("get_session", {"session_id": "factory:nope"})))
                    results.append(repr(await c.call_tool("no_such_tool", {})))
            async with httpx2.AsyncClient() as http:
                r = await http.post(f"{url}/mcp?access_token={canary}", json={})
                results.append(r.text)
                r = await http.post(f"{url}/mcp", headers={"Authorization": f"Bearer {wrong}"}, json={})
                results.append(r.text + repr(dict(r.headers)))
            assert await anyio.to_thread.run_sync(server.terminate) == 0
        logs = server.stderr + server.stdout
    assert upstream, "the factory backend was never called"
    assert any(u["headers"].get("authorization", "").endswith(API_KEY) for u in upstream), upstream[0]["headers"]
    for needle in (canary, wrong, canary[7:]):
        assert needle not in logs
        assert not any(needle in r for r in results)
        for request in upstream:
            assert needle not in repr(request), request
    assert '"event": "tool_call"' in logs
    assert "access_token=[redacted]" in logs  # the access log line was written, and redacted
