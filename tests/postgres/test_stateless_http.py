"""Stateless replicas behind a round-robin load balancer: real `sessions-mcp --stateless` processes.

Every HTTP request of a client goes to the next replica in turn (the rotation lives in the
client's transport, which is what a layer-7 round-robin balancer does), so one tool call
is served by one replica and the next call by another. The legacy SSE transport is shown
to need sticky routing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ResourceUpdated

from ..conftest import ERAS
from ..http_support import ServerProcess, ok

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


class RoundRobin(httpx2.AsyncBaseTransport):
    """Sends each request to the next replica (keeps the Host header the client chose, like a proxy)."""

    def __init__(self, ports: list[int], start: int = 0) -> None:
        self.ports = ports
        self.next = start
        self.hits: Counter[int] = Counter()
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.next % len(self.ports)]
        self.next += 1
        self.hits[port] += 1
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextmanager
def stateless_replicas(pg_url: str, n: int = 3) -> Iterator[list[ServerProcess]]:
    with ExitStack() as stack:
        procs = [stack.enter_context(ServerProcess(pg_url, "--stateless")) for _ in range(n)]  # type: ignore[arg-type]
        for p in procs:
            p.started()
        try:
            yield procs
        finally:
            for p in procs:
                p.terminate()


@asynccontextmanager
async def balanced_client(
    procs: list[ServerProcess], era: str, start: int = 0
) -> AsyncIterator[tuple[Client, RoundRobin]]:
    ports = [int(p.url.rsplit(":", 1)[1]) for p in procs]
    lb = RoundRobin(ports, start)
    async with (
        httpx2.AsyncClient(transport=lb, timeout=httpx2.Timeout(30, read=120)) as http,
        Client(streamable_http_client(f"http://127.0.0.1:{ports[0]}/mcp", http_client=http), mode=era) as client,
    ):
        yield client, lb


@pytest.fixture(scope="module")
def replicas3() -> Iterator[list[ServerProcess]]:
    from .. import pg

    url = pg.new_schema_url()
    try:
        with stateless_replicas(url) as procs:
            yield procs
    finally:
        pg.drop_schema_url(url)


@pytest.mark.parametrize("era", ERAS)
async def test_one_client_round_robin_over_three_stateless_replicas(replicas3: list[ServerProcess], era: str) -> None:
    async with balanced_client(replicas3, era) as (asker, lb_a), balanced_client(replicas3, "auto", 1) as (answerer, _):
        created = await ok(asker, "create_session", prompt="spread me", title=f"rr {era}")
        sid, cursor = created["session"]["id"], created["cursor"]
        latencies: list[float] = []
        for i in range(3):
            got: dict[str, Any] = {}

            async def wait(cursor: str = cursor, got: dict[str, Any] = got) -> None:
                got.update(await ok(asker, "list_messages", session_id=sid, after=cursor, wait_s=15))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                # the waiting request sits on one replica; the answer lands on another
                page = await ok(answerer, "get_session", session_id=sid)
                assert page["status"] == "awaiting_reply"
                await ok(answerer, "send_message", session_id=sid, text=f"reply {i}", role="assistant")
                written = time.monotonic()
            assert [m["text"] for m in got["messages"]] == [f"reply {i}"]
            latencies.append(time.monotonic() - written)
            cursor = got["next_cursor"]
            sent = await ok(asker, "send_message", session_id=sid, text=f"question {i + 1}")
            assert sent["status"] == "awaiting_reply"
            cursor = sent["cursor"]
        page = await ok(asker, "list_messages", session_id=sid)
        texts = [m["text"] for m in page["messages"]]
        assert texts == ["spread me", "reply 0", "question 1", "reply 1", "question 2", "reply 2", "question 3"]
        assert len(lb_a.hits) == 3 and min(lb_a.hits.values()) >= 3, lb_a.hits  # every replica served this client
        # write acknowledged -> the wait on another replica returned to its client (over loaded CI: generous)
        assert max(latencies) < 1.5, latencies
        print(f"\nround-robin {era}: wake-up after the write {', '.join(f'{x * 1000:.0f} ms' for x in latencies)}")


async def test_listener_on_one_replica_hears_writes_through_the_others(replicas3: list[ServerProcess]) -> None:
    async with balanced_client(replicas3, "auto") as (listener, _), balanced_client(replicas3, "legacy", 2) as (w, lb):
        sid = (await ok(w, "create_session", title="listen across"))["session"]
        async with listener.listen(resource_subscriptions=[sid["messages_uri"]]) as sub:
            for i in range(3):  # three writes, one through each replica in turn
                before = dict(lb.hits)
                await ok(w, "send_message", session_id=sid["id"], text=f"w{i}", role="assistant")
                assert dict(lb.hits) != before
                with anyio.fail_after(3):
                    async for ev in sub:
                        if isinstance(ev, ResourceUpdated) and ev.uri == sid["messages_uri"]:
                            break


async def test_legacy_sse_needs_sticky_routing(replicas3: list[ServerProcess]) -> None:
    """The SSE transport keeps its session in the replica that holds the stream: another replica 404s."""
    a, b = replicas3[0].url, replicas3[1].url
    async with httpx2.AsyncClient(timeout=10) as http, http.stream("GET", f"{a}/sse") as stream:
        endpoint = ""
        lines = stream.aiter_lines()  # keep a reference: a dropped iterator would close the stream
        while not endpoint:
            line = await lines.__anext__()
            if line.startswith("data:"):
                endpoint = line.split(":", 1)[1].strip()
        assert "session_id=" in endpoint
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        elsewhere = await http.post(f"{b}{endpoint}", json=body)
        assert elsewhere.status_code == 404
        same = await http.post(f"{a}{endpoint}", json=body)
        assert same.status_code == 202, (endpoint, same.text)
