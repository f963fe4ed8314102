"""Subscriptions to remote (Factory, Fabro, A2A) sessions: a watcher follows the session while somebody
listens, notices the agent's reply made outside this server, and stops when the last one leaves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated
from mcp.types import ResourceUpdatedNotification

from sessions_mcp.server import Runtime, build_server

from .conftest import client_for
from .harnesses import discover
from .test_stdio import ok

pytestmark = pytest.mark.anyio
REMOTE = [name for name in sorted(discover()) if name in ("factory", "fabro", "a2a")]


@pytest.fixture(params=REMOTE)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    async with discover()[request.param]() as h:
        yield h


@asynccontextmanager
async def agent_held(h: Any) -> AsyncIterator[None]:
    """Inside, the agent does not answer; on exit it answers (outside any MCP call)."""
    emulator = h.emulator
    if hasattr(emulator, "reply_delay_s"):  # factory: the reply is scheduled with a delay
        before = emulator.reply_delay_s
        emulator.reply_delay_s = 1.0
        try:
            yield
        finally:
            emulator.reply_delay_s = before
    else:  # fabro, a2a: the agent waits until released
        async with h.slow():
            yield


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def test_modern_listen_starts_and_stops_a_remote_watcher(harness: Any, tmp_path: Path) -> None:
    rt = Runtime(harness.settings(tmp_path))
    mcp = build_server(rt.settings, runtime=rt)
    async with client_for(mcp, "auto") as c:
        async with AsyncExitStack() as held:
            await held.enter_async_context(agent_held(harness))
            created = await ok(c, "create_session", prompt="notify me", wait=False)
            uri = created["session"]["transcript_uri"]
            native = created["session"]["id"].split(":", 1)[1]
            assert rt.notifier.watchers == {}
            async with c.listen(resource_subscriptions=[uri]) as sub:
                await wait_until(lambda: (harness.name, native) in rt.notifier.watchers)
                await held.aclose()  # let the agent answer, outside any MCP call of ours
                with anyio.fail_after(20):
                    async for ev in sub:
                        if isinstance(ev, ResourceUpdated) and ev.uri == uri:
                            break
            await wait_until(lambda: rt.notifier.watchers == {})
        page = await ok(c, "list_messages", session_id=created["session"]["id"], wait_s=10)
        assert any("echo: notify me" in m["text"] for m in page["messages"])


async def test_legacy_subscribe_starts_and_unsubscribe_stops_a_remote_watcher(harness: Any, tmp_path: Path) -> None:
    rt = Runtime(harness.settings(tmp_path))
    mcp = build_server(rt.settings, runtime=rt)
    got = anyio.Event()
    uri_box: dict[str, str] = {}

    async def on_message(msg: Any) -> None:
        if isinstance(msg, ResourceUpdatedNotification) and str(msg.params.uri) == uri_box.get("uri"):
            got.set()

    async with Client(mcp, mode="legacy", message_handler=on_message) as c, AsyncExitStack() as held:
        await held.enter_async_context(agent_held(harness))
        created = await ok(c, "create_session", prompt="notify me too", wait=False)
        uri_box["uri"] = uri = created["session"]["messages_uri"]
        native = created["session"]["id"].split(":", 1)[1]
        await c.subscribe_resource(uri)
        assert (harness.name, native) in rt.notifier.watchers
        await held.aclose()
        with anyio.fail_after(20):
            await got.wait()
        await c.unsubscribe_resource(uri)
        await wait_until(lambda: rt.notifier.watchers == {})
