"""Live transcripts: subscriptions in both eras, across processes, and progress while waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourcesListChanged, ResourceUpdated
from mcp.types import ResourceListChangedNotification, ResourceUpdatedNotification

from sessions_mcp import service as service_module
from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

from .conftest import client_for
from .test_stdio import ok, stdio_client

pytestmark = pytest.mark.anyio


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.01)


async def test_modern_listen_gets_updates_from_another_client_then_stops(
    make_settings: Callable[..., Settings],
) -> None:
    from sessions_mcp.server import Runtime

    rt = Runtime(make_settings())
    mcp = build_server(rt.settings, runtime=rt)
    feed = rt.service.backends["local"].feed  # type: ignore[attr-defined]
    async with client_for(mcp, "auto") as watcher, client_for(mcp, "legacy") as writer:
        sid = (await ok(writer, "create_session", title="live"))["session"]
        uri = sid["transcript_uri"]
        assert not feed.following
        events: list[Any] = []
        async with watcher.listen(resources_list_changed=True, resource_subscriptions=[uri]) as sub:
            assert feed.following
            started = time.monotonic()
            await ok(writer, "send_message", session_id=sid["id"], text="hello", wait=False)
            with anyio.fail_after(2):
                async for ev in sub:
                    events.append(ev)
                    if isinstance(ev, ResourceUpdated) and ev.uri == uri:
                        break
            latency = time.monotonic() - started
            # a session created now changes the list
            await ok(writer, "create_session", title="another")
            with anyio.fail_after(2):
                async for ev in sub:
                    events.append(ev)
                    if isinstance(ev, ResourcesListChanged):
                        break
        assert latency < 1.0
        assert any(isinstance(e, ResourceUpdated) and e.uri == uri for e in events)
        await wait_until(lambda: not feed.following and feed.interest == 0)
        assert rt.notifier.bus.listeners == 0


async def test_legacy_subscribe_and_unsubscribe(make_settings: Callable[..., Settings]) -> None:
    from sessions_mcp.server import Runtime

    rt = Runtime(make_settings())
    mcp = build_server(rt.settings, runtime=rt)
    got: list[Any] = []
    arrived = anyio.Event()

    async def on_message(msg: Any) -> None:
        if isinstance(msg, (ResourceUpdatedNotification, ResourceListChangedNotification)):
            got.append(msg)
            arrived.set()

    async with (
        Client(mcp, mode="legacy", message_handler=on_message) as watcher,
        client_for(mcp, "auto") as writer,
    ):
        assert watcher.server_capabilities is not None
        caps = watcher.server_capabilities.resources
        assert caps is not None and caps.subscribe and caps.list_changed
        a = (await ok(writer, "create_session", title="a"))["session"]
        b = (await ok(writer, "create_session", title="b"))["session"]
        await watcher.subscribe_resource(a["transcript_uri"])
        await watcher.subscribe_resource(b["messages_uri"])
        await ok(writer, "send_message", session_id=a["id"], text="to a", wait=False)
        with anyio.fail_after(2):
            while not any(getattr(m.params, "uri", None) == a["transcript_uri"] for m in got):
                await arrived.wait()
                arrived = anyio.Event()
        await watcher.unsubscribe_resource(a["transcript_uri"])
        got.clear()
        await ok(writer, "send_message", session_id=a["id"], text="to a again", wait=False)
        await ok(writer, "send_message", session_id=b["id"], text="to b", wait=False)
        with anyio.fail_after(2):
            while not any(getattr(m.params, "uri", None) == b["messages_uri"] for m in got):
                await arrived.wait()
                arrived = anyio.Event()
        uris = {str(getattr(m.params, "uri", "")) for m in got}
        assert a["transcript_uri"] not in uris  # unsubscribed: nothing for a
        await watcher.unsubscribe_resource(b["messages_uri"])
        assert rt.notifier.legacy_count == 0
        feed = rt.service.backends["local"].feed  # type: ignore[attr-defined]
        await wait_until(lambda: not feed.following)


async def test_change_made_by_another_process_is_notified(tmp_path: Path) -> None:
    """A modern client listening over stdio hears about a write made by a second server process."""
    db = tmp_path / "x.db"
    async with stdio_client(db, "auto") as listener, stdio_client(db, "legacy") as other:
        sid = (await ok(listener, "create_session", title="cross"))["session"]
        async with listener.listen(resource_subscriptions=[sid["messages_uri"]]) as sub:
            started = time.monotonic()
            await ok(other, "send_message", session_id=sid["id"], text="from elsewhere", role="assistant")
            with anyio.fail_after(3):
                async for ev in sub:
                    if isinstance(ev, ResourceUpdated) and ev.uri == sid["messages_uri"]:
                        break
            assert time.monotonic() - started < 2.0


async def test_legacy_subscription_over_stdio_sees_other_process(tmp_path: Path) -> None:
    db = tmp_path / "y.db"
    got = anyio.Event()

    async def on_message(msg: Any) -> None:
        if isinstance(msg, ResourceUpdatedNotification):
            got.set()

    from .conftest import server_command, server_env

    cmd = server_command()
    from mcp import StdioServerParameters

    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=server_env(db))
    async with Client(params, mode="legacy", message_handler=on_message) as listener, stdio_client(db, "auto") as other:
        sid = (await ok(listener, "create_session", title="cross legacy"))["session"]
        await listener.subscribe_resource(sid["transcript_uri"])
        await ok(other, "rename_session", session_id=sid["id"], title="renamed elsewhere")
        with anyio.fail_after(3):
            await got.wait()


async def test_progress_heartbeat_while_waiting(make_settings: Callable[..., Settings], monkeypatch: Any) -> None:
    monkeypatch.setattr(service_module, "HEARTBEAT_S", 0.1)
    mcp = build_server(make_settings())
    notes: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(message or "")

    for era in ("auto", "legacy"):
        notes.clear()
        async with client_for(mcp, era) as c:
            sid = (await ok(c, "create_session", title="p"))["session"]["id"]
            r = await c.call_tool(
                "send_message",
                {"session_id": sid, "text": "anyone?", "wait": True, "timeout_s": 0.6},
                progress_callback=on_progress,
            )
            assert not r.is_error
            assert r.structured_content is not None and r.structured_content["status"] == "awaiting_reply"
            r = await c.call_tool(
                "list_messages",
                {"session_id": sid, "after": r.structured_content["cursor"], "wait_s": 0.5},
                progress_callback=on_progress,
            )
            assert not r.is_error
        assert sum("waiting for a reply" in n for n in notes) >= 2, notes
        assert any("no new messages yet" in n for n in notes), notes


async def test_cancelled_wait_changes_nothing_and_loses_nothing(make_settings: Callable[..., Settings]) -> None:
    mcp = build_server(make_settings())
    async with client_for(mcp, "auto") as c:
        sid = (await ok(c, "create_session", title="cancel"))["session"]["id"]
        with anyio.move_on_after(0.3):
            await c.call_tool("send_message", {"session_id": sid, "text": "wait for me", "wait": True, "timeout_s": 30})
        s = await ok(c, "get_session", session_id=sid)
        assert s["status"] == "awaiting_reply" and s["message_count"] == 1
        page = await ok(c, "list_messages", session_id=sid)
        assert [m["text"] for m in page["messages"]] == ["wait for me"]
