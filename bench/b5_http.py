"""Budget 5: streamable HTTP throughput with 16 concurrent clients against the bare SDK HTTP app."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import (
    ROOT,
    Budget,
    Figure,
    Report,
    Spread,
    Unavailable,
    bare_server_argv,
    free_port,
    ours_argv,
    ratios,
    seed_session,
    server_env,
    wait_for_port,
)

CLIENTS = 16
MODERN = "2026-07-28"


def envelope(rid: int, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A stateless 2026-07-28 ``tools/call`` (no handshake, no protocol session)."""
    return {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {
            "name": name,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "0"},
            },
        },
    }


async def throughput(url: str, name: str, arguments: dict[str, Any], seconds: float, warm: float) -> float:
    """Calls per second completed by ``CLIENTS`` concurrent clients, each with its own connection."""
    import httpx2

    headers = {
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }
    done = 0
    end = 0.0

    async def client() -> None:
        nonlocal done
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            rid = 0
            while time.perf_counter() < end:
                rid += 1
                r = await http.post(url, json=envelope(rid, name, arguments))
                r.raise_for_status()
                body = r.json()
                if "result" not in body or body["result"].get("isError"):
                    raise RuntimeError(f"{name} failed over HTTP: {r.text[:300]}")
                done += 1

    end = time.perf_counter() + warm
    await asyncio.gather(*(client() for _ in range(CLIENTS)))  # warm-up: connections, caches
    done = 0
    t0 = time.perf_counter()
    end = t0 + seconds
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return done / (time.perf_counter() - t0)


async def run(report: Report, smoke: bool) -> None:
    if not (ROOT / "src" / "sessions_mcp" / "http_app.py").is_file():
        raise Unavailable("src/sessions_mcp/http_app.py is not in this checkout")
    rounds, seconds, warm = (1, 0.5, 0.1) if smoke else (3, 5.0, 0.5)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        db = Path(tmp) / "sessions.db"
        sid = "local:" + await seed_session(db, 10)
        p_ours, p_bare = free_port(), free_port()
        procs = [
            subprocess.Popen([*ours_argv(), "--transport", "http", "--port", str(p_ours)], env=server_env(db),
                             stderr=subprocess.DEVNULL),
            subprocess.Popen([*bare_server_argv(), "http", str(p_bare)], env=server_env(), stderr=subprocess.DEVNULL),
        ]  # fmt: skip
        try:
            wait_for_port("127.0.0.1", p_ours)
            wait_for_port("127.0.0.1", p_bare)
            ours: list[float] = []
            bare: list[float] = []
            for _ in range(rounds):
                bare.append(await throughput(f"http://127.0.0.1:{p_bare}/mcp", "echo", {"text": "hi"}, seconds, warm))
                ours.append(
                    await throughput(
                        f"http://127.0.0.1:{p_ours}/mcp", "get_session", {"session_id": sid}, seconds, warm
                    )
                )
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    r = ratios(ours, bare)
    report.figure(
        Figure(
            "5.http",
            f"streamable HTTP `get_session` calls/s, {CLIENTS} concurrent clients (stateless 2026-07-28 requests, "
            f"one connection each), {seconds:g} s per round, server under uvicorn on 127.0.0.1",
            Spread.of(ours, "/s"),
            Spread.of(bare, "/s"),
            "bare SDK `streamable_http_app()` with one echo tool, same client",
            r,
        )
    )
    report.budget(
        Budget("5", f"streamable HTTP calls/s with {CLIENTS} clients vs bare SDK app", r.median, 0.9, ">=", "×")
    )
