"""Several server replicas on one PostgreSQL database: waits, notifications and writers across them.

In-process replicas are full servers (own Runtime, store, pool, LISTEN connection and
writer id) that share nothing but the database; the stdio test runs real processes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.client.subscriptions import ResourceUpdated
from mcp.types import ResourceUpdatedNotification

from sessions_mcp.server import Runtime, build_server
from sessions_mcp.settings import Settings

from ..conftest import ERAS, client_for
from ..test_stdio import ok, stdio_client

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def replicas(settings: Settings, eras: list[str]) -> AsyncIterator[list[tuple[Runtime, Client]]]:
    """One server replica per era given, each with a connected client."""
    async with AsyncExitStack() as stack:
        out: list[tuple[Runtime, Client]] = []
        for era in eras:
            rt = Runtime(settings)
            client = await stack.enter_async_context(client_for(build_server(settings, runtime=rt), era))
            out.append((rt, client))
        yield out


def feed_of(rt: Runtime) -> Any:
    return rt.service.backends["local"].feed  # type: ignore[attr-defined]


@pytest.mark.parametrize("era", ERAS)
async def test_wait_on_one_replica_wakes_when_another_writes(pg_settings: Callable[..., Settings], era: str) -> None:
    async with replicas(pg_settings(), [era, "auto", "legacy"]) as reps:
        (rt_a, a), (_, b), (_, c) = reps
        created = await ok(a, "create_session", prompt="who answers?", title="cross")
        sid, cursor = created["session"]["id"], created["cursor"]
        latencies: list[float] = []
        for i, writer in enumerate((b, c, b)):
            page: dict[str, Any] = {}

            async def wait_on_a(cursor: str = cursor, page: dict[str, Any] = page) -> None:
                page.update(await ok(a, "list_messages", session_id=sid, after=cursor, wait_s=10))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_on_a)
                with anyio.fail_after(5):
                    while feed_of(rt_a).interest == 0:  # A is waiting now
                        await anyio.sleep(0.005)
                await ok(writer, "send_message", session_id=sid, text=f"answer {i}", role="assistant")
                written = time.monotonic()
            latencies.append(time.monotonic() - written)
            assert [m["text"] for m in page["messages"]] == [f"answer {i}"]
            assert page["status"] == "idle"
            cursor = page["next_cursor"]
            await ok(c if writer is b else b, "send_message", session_id=sid, text=f"question {i + 1}")
            cursor = (await ok(a, "list_messages", session_id=sid, after=cursor))["next_cursor"]
        assert max(latencies) < 0.5, latencies
        print(f"\ncross-replica wake-up ({era}): {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")


async def test_modern_listener_on_one_replica_hears_writes_on_another(pg_settings: Callable[..., Settings]) -> None:
    async with replicas(pg_settings(), ["auto", "legacy", "auto"]) as reps:
        (_, a), (_, b), (_, c) = reps
        sid = (await ok(b, "create_session", title="live"))["session"]
        async with a.listen(resource_subscriptions=[sid["messages_uri"]]) as sub:
            for writer in (b, c):
                started = time.monotonic()
                await ok(writer, "send_message", session_id=sid["id"], text="hello", role="assistant")
                with anyio.fail_after(2):
                    async for ev in sub:
                        if isinstance(ev, ResourceUpdated) and ev.uri == sid["messages_uri"]:
                            break
                assert time.monotonic() - started < 0.5


async def test_legacy_subscriber_on_one_replica_hears_writes_on_another(
    pg_settings: Callable[..., Settings],
) -> None:
    settings = pg_settings()
    got = anyio.Event()

    async def on_message(msg: Any) -> None:
        if isinstance(msg, ResourceUpdatedNotification):
            got.set()

    async with (
        Client(build_server(settings), mode="legacy", message_handler=on_message) as a,
        client_for(build_server(settings), "auto") as b,
    ):
        sid = (await ok(a, "create_session", title="legacy live"))["session"]
        await a.subscribe_resource(sid["transcript_uri"])
        started = time.monotonic()
        await ok(b, "rename_session", session_id=sid["id"], title="renamed on replica b")
        with anyio.fail_after(2):
            await got.wait()
        assert time.monotonic() - started < 0.5


async def test_concurrent_writers_on_all_replicas_lose_nothing(pg_settings: Callable[..., Settings]) -> None:
    async with replicas(pg_settings(), ["auto", "legacy", "auto"]) as reps:
        clients = [c for _, c in reps]
        sid = (await ok(clients[0], "create_session", title="busy"))["session"]["id"]
        per_client = 12

        async def write(r: int) -> None:
            for n in range(per_client):
                role = "user" if n % 2 == 0 else "assistant"
                await ok(clients[r], "send_message", session_id=sid, text=f"r{r}-n{n}", role=role)

        async with anyio.create_task_group() as tg:
            for r in range(3):
                tg.start_soon(write, r)
        views = []
        for c in clients:  # every replica pages through the same, complete transcript
            texts: list[str] = []
            cursor = None
            while True:
                args: dict[str, Any] = {"session_id": sid, "limit": 7}
                if cursor:
                    args["after"] = cursor
                page = await ok(c, "list_messages", **args)
                texts += [m["text"] for m in page["messages"]]
                cursor = page["next_cursor"]
                if not page["has_more"]:
                    break
            views.append(texts)
        assert views[0] == views[1] == views[2]
        assert sorted(views[0]) == sorted(f"r{r}-n{n}" for r in range(3) for n in range(per_client))
        for r in range(3):  # each writer's own messages keep their order
            mine = [t for t in views[0] if t.startswith(f"r{r}-")]
            assert mine == [f"r{r}-n{n}" for n in range(per_client)]
        got = await ok(clients[1], "get_session", session_id=sid)
        assert got["message_count"] == 3 * per_client


async def test_idempotency_key_is_honoured_across_replicas(pg_settings: Callable[..., Settings]) -> None:
    async with replicas(pg_settings(), ["auto", "legacy", "auto"]) as reps:
        clients = [c for _, c in reps]
        sid = (await ok(clients[0], "create_session", title="retry"))["session"]["id"]
        results: list[dict[str, Any]] = []

        async def send(c: Client) -> None:
            r = await c.call_tool("send_message", {"session_id": sid, "text": "once", "idempotency_key": "retry-1"})
            if not r.is_error:
                assert r.structured_content is not None
                results.append(r.structured_content)

        async with anyio.create_task_group() as tg:
            for c in clients:
                tg.start_soon(send, c)
        # a retry on yet another replica after the first finished replays it
        results.append(await ok(clients[2], "send_message", session_id=sid, text="once", idempotency_key="retry-1"))
        assert len({r["message_id"] for r in results}) == 1
        assert sum(not r["replayed"] for r in results) == 1
        page = await ok(clients[1], "list_messages", session_id=sid)
        assert [m["text"] for m in page["messages"]] == ["once"]


async def test_two_server_processes_on_postgres(pg_url: str) -> None:
    """Real `sessions-mcp` processes: one waits on its question, the other answers it."""
    async with stdio_client(pg_url, "auto") as asker, stdio_client(pg_url, "legacy") as answerer:  # type: ignore[arg-type]
        created = await ok(asker, "create_session", prompt="please review PR 9", title="review")
        sid = created["session"]["id"]

        async def answer() -> None:
            with anyio.fail_after(20):
                while not any(
                    s["id"] == sid for s in (await ok(answerer, "list_sessions", status="awaiting_reply"))["sessions"]
                ):
                    await anyio.sleep(0.05)
            await ok(answerer, "send_message", session_id=sid, text="LGTM", role="assistant")

        async with anyio.create_task_group() as tg:
            tg.start_soon(answer)
            with anyio.fail_after(25):
                got = await ok(asker, "list_messages", session_id=sid, after=created["cursor"], wait_s=20)
        assert [m["text"] for m in got["messages"]] == ["LGTM"]


async def test_nul_character_is_refused_with_advice(pg_settings: Callable[..., Settings]) -> None:
    async with replicas(pg_settings(), ["auto"]) as reps:
        (_, a) = reps[0]
        sid = (await ok(a, "create_session", title="nul"))["session"]["id"]
        r = await a.call_tool("send_message", {"session_id": sid, "text": "a\x00b"})
        assert r.is_error and "NUL" in r.content[0].text  # type: ignore[union-attr]
        assert (await ok(a, "get_session", session_id=sid))["message_count"] == 0
