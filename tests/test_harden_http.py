"""HTTP abuse against the real server process (issue 19 items 1, 2 and 5).

Slow and silent connections are closed, descriptors never run out (the server runs with a
lowered RLIMIT_NOFILE so exhaustion is quick to reach), repeated log lines are rate-limited, one
principal cannot take every protocol session, and departed legacy subscribers are released.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from sessions_mcp.settings import HttpSettings

from .http_support import ALICE, BOB, INIT, JSON_HEADERS, TOKENS, ServerProcess, auth_headers, mcp_client

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def health(url: str, timeout: float = 3.0) -> dict[str, Any]:
    r = httpx2.get(url + "/healthz", timeout=timeout)
    assert r.status_code == 200
    return r.json()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.setblocking(False)
    return s


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@contextlib.contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def test_slow_half_sent_and_silent_connections_are_closed(tmp_path: Path) -> None:
    env = {"SESSIONS_MCP_HTTP__REQUEST_TIMEOUT_S": "2"}
    with ServerProcess(tmp_path / "s.db", env=env) as server, sockets() as held:
        url = server.started()
        port = int(url.rsplit(":", 1)[1])
        health(url)
        before = fds(server.proc.pid)
        trickle, half, silent = [], [], []
        for _ in range(20):
            s = connect(port)
            s.sendall(
                b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{"
            )
            trickle.append(s)
            s = connect(port)
            s.sendall(b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            half.append(s)
            silent.append(connect(port))
        held += trickle + half + silent
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and not all(closed_by_server(s) for s in held):
            for s in trickle:  # a byte every 0.2 s keeps the connection busy, never finishing the body
                with contextlib.suppress(OSError):
                    s.send(b" ")
            time.sleep(0.2)
        still_open = sum(not closed_by_server(s) for s in held)
        assert still_open == 0, f"{still_open} of 60 slow or silent connections are still open"
        wait_for(lambda: fds(server.proc.pid) <= before + 2, 5, "the server's descriptors to be released")
        report = health(url)["connections"]
        assert report["closed_slow"] >= 60, report
        logged = server.stderr.count("closed a connection that sent no whole request")
        assert 1 <= logged <= 5, f"{logged} copies of one warning: repeated log lines are not rate-limited"
        # a healthy request is unaffected, and a long wait after a complete request is not cut short
        r = httpx2.post(url + "/mcp", json=INIT, headers=JSON_HEADERS, timeout=10)
        assert r.status_code == 200


def test_a_connection_flood_past_the_descriptor_limit_leaves_healthz_answering(tmp_path: Path) -> None:
    nofile = 256
    env = {"SESSIONS_MCP_HTTP__REQUEST_TIMEOUT_S": "30"}
    with ServerProcess(tmp_path / "s.db", env=env, nofile=nofile) as server, sockets() as held:
        url = server.started()
        port = int(url.rsplit(":", 1)[1])
        health(url)
        base_fds, base_rss = fds(server.proc.pid), rss_kb(server.proc.pid)
        log_before = len(server.stderr)
        for _ in range(nofile + 150):  # more silent connections than the server has descriptors
            held.append(connect(port))
        peak = fds(server.proc.pid)
        assert peak < nofile, f"the server holds {peak} descriptors of {nofile}"
        started = time.monotonic()
        body = health(url, timeout=5)
        assert time.monotonic() - started < 5
        assert body["status"] == "near_limit" and "connections" in body["near_limit"], body
        conn = body["connections"]
        assert conn["limit"] < nofile and conn["open"] <= conn["limit"], conn
        assert conn["evicted"] + conn["refused"] > 0, conn
        for s in held:
            s.close()
        held.clear()
        wait_for(lambda: health(url)["connections"]["open"] <= 2, 10, "the flood's connections to be closed")
        wait_for(lambda: fds(server.proc.pid) <= base_fds + 2, 10, "descriptors back to the baseline")
        assert rss_kb(server.proc.pid) < base_rss + 30_000
        log = server.stderr[log_before:]
        assert "out of system resource" not in log and "Too many open files" not in log, log[-2000:]
        assert len(log) < 5_000, f"{len(log)} bytes of log for one flood: repeated lines are not rate-limited"


def test_one_principal_cannot_take_every_protocol_session(tmp_path: Path) -> None:
    assert HttpSettings().max_sessions_per_principal <= 1000
    env = {
        "SESSIONS_MCP_HTTP__TOKENS": TOKENS,
        "SESSIONS_MCP_HTTP__MAX_SESSIONS_PER_PRINCIPAL": "20",
        "SESSIONS_MCP_HTTP__SESSION_IDLE_TIMEOUT_S": "3",
    }
    with ServerProcess(tmp_path / "s.db", env=env) as server:
        url = server.started()
        with httpx2.Client(timeout=10) as http:

            def initialize(token: str) -> httpx2.Response:
                return http.post(url + "/mcp", json=INIT, headers=JSON_HEADERS | auth_headers(token))

            alice = [initialize(ALICE) for _ in range(25)]
            assert [r.status_code for r in alice] == [200] * 20 + [429] * 5
            refused = alice[-1].json()
            assert refused["id"] is None and "too many open protocol sessions" in refused["error"]["message"]
            assert alice[-1].headers["retry-after"] == "3"
            assert initialize(BOB).status_code == 200, "another principal was locked out"
            body = http.get(url + "/healthz").json()
            assert body["status"] == "near_limit" and body["sessions"]["saturated"], body
            assert "alice" not in json.dumps(body), "healthz (no auth) must not name principals"
            # ending a session makes room at once; idle ones expire after session_idle_timeout_s
            sid = alice[0].headers["mcp-session-id"]
            assert http.delete(url + "/mcp", headers=auth_headers(ALICE) | {"mcp-session-id": sid}).status_code < 300
            assert initialize(ALICE).status_code == 200
            time.sleep(3.5)  # the configured idle timeout: the manager reaps on its own timer
            wait_for(lambda: http.get(url + "/healthz").json()["sessions"]["open"] == 0, 10, "idle sessions to expire")
            assert initialize(ALICE).status_code == 200


async def test_departed_legacy_subscribers_are_released(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "s.db") as server:
        url = server.started()
        async with mcp_client(url, "http", "legacy") as writer:
            created = await writer.call_tool("create_session", {"title": "watched"})
            uri = created.structured_content["session"]["transcript_uri"]  # type: ignore[index]
            for transport in ("sse", "http"):
                for _ in range(10):
                    async with mcp_client(url, transport, "legacy") as sub:
                        await sub.subscribe_resource(uri)
                    # left without unsubscribing
            with anyio.fail_after(10):
                while (await anyio.to_thread.run_sync(health, url))["subscriptions"]["legacy"]:
                    await anyio.sleep(0.1)


def test_doctor_says_when_the_descriptor_limit_squeezes_the_connection_cap(tmp_path: Path) -> None:
    import resource
    import subprocess

    from .conftest import server_command, server_env

    def run(nofile: int) -> str:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        env = server_env(tmp_path / "s.db", SESSIONS_MCP_HTTP__TOKENS=TOKENS)
        done = subprocess.run(
            [*server_command(), "doctor"], env=env, capture_output=True, text=True, timeout=60, preexec_fn=limit
        )
        return done.stdout

    squeezed = run(300)
    assert "warn  http: connections" in squeezed and "ulimit -n" in squeezed, squeezed
    roomy = run(4096)
    assert "ok    http: connections" in roomy, roomy


async def test_long_polls_of_departed_http_clients_are_cancelled(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "s.db") as server:
        url = server.started()
        port = int(url.rsplit(":", 1)[1])
        async with mcp_client(url, "http", "legacy") as c:  # ordinary calls never count as departed
            created = await c.call_tool("create_session", {"title": "polled"})
            sid = created.structured_content["session"]["id"]  # type: ignore[index]
            for _ in range(5):
                await c.call_tool("get_session", {"session_id": sid})
        assert health(url).get("cancelled_for_departed_clients", 0) == 0
        with httpx2.Client(timeout=10) as http:
            r = http.post(url + "/mcp", json=INIT, headers=JSON_HEADERS)
            headers = JSON_HEADERS | {
                "mcp-session-id": r.headers["mcp-session-id"],
                "mcp-protocol-version": "2025-11-25",
            }
            http.post(url + "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        base_rss = rss_kb(server.proc.pid)
        with sockets() as held:
            for n in range(50):
                body = json.dumps({
                    "jsonrpc": "2.0", "id": 100 + n, "method": "tools/call",
                    "params": {"name": "list_messages", "arguments": {"session_id": sid, "wait_s": 300}},
                }).encode()  # fmt: skip
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(
                    f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                held.append(s)
            wait_for(lambda: health(url)["in_flight"] == 50, 10, "50 long-polls in flight")
        # the clients are gone (sockets closed): their waits end now, not in 300 s
        wait_for(lambda: health(url)["in_flight"] == 0, 10, "the departed clients' long-polls to be cancelled")
        assert health(url)["cancelled_for_departed_clients"] == 50
        assert rss_kb(server.proc.pid) < base_rss + 30_000
        assert "Traceback" not in server.stderr
