"""Streamable HTTP and SSE on one port, both protocol eras, stateless mode, health, lifecycle, shutdown."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from sessions_mcp.settings import Settings

from .conftest import ERAS
from .http_support import (
    ALICE,
    INIT,
    JSON_HEADERS,
    TOKENS,
    TRANSPORTS,
    ServerProcess,
    mcp_client,
    ok,
    serve,
)

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("authenticated", [False, True], ids=["open", "token"])
async def test_both_transports_both_eras_on_one_port(
    make_settings: Callable[..., Settings], transport: str, era: str, authenticated: bool
) -> None:
    settings = make_settings(http={"tokens": TOKENS} if authenticated else {})
    async with serve(settings) as served:
        token = ALICE if authenticated else None
        async with mcp_client(served.url, transport, era, token=token) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"create_session", "send_message", "list_messages"} <= names
            created = await ok(c, "create_session", prompt=f"task over {transport}/{era}", title="t")
            sid = created["session"]["id"]
            await ok(c, "send_message", session_id=sid, text="done", role="assistant")
            page = await ok(c, "list_messages", session_id=sid)
            assert [m["text"] for m in page["messages"]] == [f"task over {transport}/{era}", "done"]
            read = await c.read_resource(created["session"]["transcript_uri"])
            assert "done" in getattr(read.contents[0], "text", "")
            prompts = await c.list_prompts()
            assert any(p.name == "delegate" for p in prompts.prompts)
        # the principal is the token's, or "local" on an open loopback server
        owner = "alice" if authenticated else "local"
        sessions = await served.built.runtime.service.list_sessions(
            owner, backend=None, status=None, query=None, cursor=None, limit=10
        )
        assert [s.id for s in sessions.sessions] == [sid]


@pytest.mark.parametrize("era", ERAS)
async def test_stateless_mode_serves_both_eras_without_protocol_sessions(
    make_settings: Callable[..., Settings], era: str
) -> None:
    async with serve(make_settings(http={"stateless": True})) as served:
        async with mcp_client(served.url, "http", era) as c:
            sid = (await ok(c, "create_session", title="stateless"))["session"]["id"]
            assert (await ok(c, "get_session", session_id=sid))["id"] == sid
        async with httpx2.AsyncClient() as http:
            r = await http.post(f"{served.url}/mcp", json=INIT, headers=JSON_HEADERS)
            assert r.status_code == 200
            assert "mcp-session-id" not in r.headers


async def test_health_endpoint(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings(http={"tokens": TOKENS})) as served, httpx2.AsyncClient() as http:
        r = await http.get(f"{served.url}/healthz")
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["in_flight"] == 0
        # probes use the pod IP as Host and carry no token: health answers anyway, and says nothing secret
        r = await http.get(f"{served.url}/healthz", headers={"Host": "10.1.2.3:8765"})
        assert r.status_code == 200
        assert set(r.json()) == {
            "status", "version", "in_flight", "sessions", "subscriptions", "cancelled_for_departed_clients"
        }  # fmt: skip
        assert "alice" not in r.text and "bob" not in r.text  # counts only, never principals


async def test_session_lifecycle_delete_then_404(make_settings: Callable[..., Settings]) -> None:
    async with serve(make_settings()) as served, httpx2.AsyncClient() as http:
        r = await http.post(f"{served.url}/mcp", json=INIT, headers=JSON_HEADERS)
        assert r.status_code == 200
        session = r.headers["mcp-session-id"]
        headers = JSON_HEADERS | {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
        r = await http.post(
            f"{served.url}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers
        )
        assert r.status_code == 202
        r = await http.delete(f"{served.url}/mcp", headers=headers)
        assert r.status_code in (200, 204)
        r = await http.post(f"{served.url}/mcp", json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers=headers)
        assert r.status_code == 404


async def test_runtime_started_once_for_many_sse_connections(make_settings: Callable[..., Settings]) -> None:
    """The SDK enters the MCP lifespan per SSE connection; the store must still be opened once."""
    from sessions_mcp.server import Runtime

    rt = Runtime(make_settings())
    starts = 0
    original = rt.service.start

    async def counting_start(tg: Any) -> None:
        nonlocal starts
        starts += 1
        await original(tg)

    rt.service.start = counting_start  # type: ignore[method-assign]
    async with (
        serve(rt.settings, runtime=rt) as served,
        mcp_client(served.url, "sse", "legacy") as a,
        mcp_client(served.url, "sse", "auto") as b,
        mcp_client(served.url, "http", "legacy") as c,
    ):
        for client in (a, b, c):
            await ok(client, "list_sessions")
    assert starts == 1


@pytest.mark.parametrize(("transport", "era"), [("http", "legacy"), ("http", "auto"), ("sse", "legacy")])
async def test_graceful_shutdown_finishes_requests_in_flight(tmp_path: Path, transport: str, era: str) -> None:
    """SIGTERM while list_messages waits: the answer still arrives, new connections are refused, exit 0."""
    with ServerProcess(tmp_path / "s.db") as server:
        url = server.started()
        async with mcp_client(url, transport, era) as c, mcp_client(url, "sse", "legacy") as idle:
            await idle.list_tools()  # an idle SSE connection must not hold the shutdown up
            sid = (await ok(c, "create_session", title="slow"))["session"]["id"]
            result: dict[str, Any] = {}

            async def slow_call() -> None:
                started = anyio.current_time()
                result.update(await ok(c, "list_messages", session_id=sid, wait_s=3))
                result["took"] = anyio.current_time() - started

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                async with httpx2.AsyncClient() as http:
                    with anyio.fail_after(10):
                        while (await http.get(f"{url}/healthz")).json()["in_flight"] == 0:
                            await anyio.sleep(0.02)
                with anyio.fail_after(5):
                    await anyio.to_thread.run_sync(server.proc.send_signal, 15)
                # the in-flight call completes normally after its wait
        assert result["messages"] == [] and result["status"] == "idle"
        assert result["took"] >= 2.5  # it really waited out its time while the server was draining
        async with httpx2.AsyncClient() as http:
            with pytest.raises(httpx2.TransportError):
                await http.get(f"{url}/healthz")
        rc = await anyio.to_thread.run_sync(lambda: server.terminate(15, signalled=True))  # idle streams end too
        assert rc == 0, server.stderr
        assert "Traceback" not in server.stderr, server.stderr


async def test_cli_http_serves_and_writes_audit_lines(tmp_path: Path) -> None:
    """`sessions-mcp --transport http` with tokens: one JSON audit line per tool call on stderr."""
    with ServerProcess(tmp_path / "s.db", env={"SESSIONS_MCP_HTTP__TOKENS": TOKENS}) as server:
        url = server.started()
        async with mcp_client(url, "http", "auto", token=ALICE) as c:
            sid = (await ok(c, "create_session", prompt="audited", title="a"))["session"]["id"]
            await ok(c, "list_messages", session_id=sid)
            bad = await c.call_tool("get_session", {"session_id": "local:doesnotexist000000000000"})
            assert bad.is_error
        assert await anyio.to_thread.run_sync(server.terminate) == 0
    records = [json.loads(ln) for ln in server.stderr.splitlines() if ln.startswith('{"event": "tool_call"')]
    assert [r["tool"] for r in records] == ["create_session", "list_messages", "get_session"]
    for r in records:
        assert set(r) >= {"time", "principal", "tool", "session", "outcome", "latency_ms"}
        assert r["principal"] == "alice"
    # the session id is recorded as a digest (SECURITY-AND-PERF E8), never in the clear
    assert records[0]["outcome"] == "ok" and records[1]["session"] == hashlib.sha256(sid.encode()).hexdigest()[:16]
    assert records[0]["session"] is None  # create_session names no session
    assert sid not in server.stderr
    assert records[2]["outcome"] == "UnknownSession"
    assert ALICE not in server.stderr and server.stdout == ""
