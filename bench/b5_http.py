"""Budget 5: streamable HTTP throughput with 16 concurrent clients against the bare SDK HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
    cpu_s,
    free_port,
    ours_argv,
    ours_stats_argv,
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


def call_headers(name: str) -> dict[str, str]:
    """The HTTP headers of a 2026-07-28 ``tools/call`` of ``name``."""
    return {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": name,
    }


class RawHttp:
    """One keep-alive HTTP/1.1 connection with hand-written requests: a client far cheaper than the
    server it measures (an ``httpx2`` client in one process saturated its core before the server)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def connect(cls, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", f"Content-Length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = None
        chunked = False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if not chunked:
            return status, await self.reader.readexactly(length or 0)
        parts: list[bytes] = []
        while size := int((await self.reader.readline()).strip(), 16):
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)
        await self.reader.readline()
        return status, b"".join(parts)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def throughput(
    port: int, name: str, arguments: dict[str, Any], seconds: float, warm: float, pid: int
) -> tuple[float, float]:
    """Calls per second completed by ``CLIENTS`` concurrent clients, each with its own connection,
    and the server's CPU use meanwhile (percent of one core: ~100 means the server is the bottleneck)."""
    headers = call_headers(name)
    done = 0
    end = 0.0

    async def client() -> None:
        nonlocal done
        conn = await RawHttp.connect(port)
        try:
            rid = 0
            while time.perf_counter() < end:
                rid += 1
                status, raw = await conn.post("/mcp", headers, json.dumps(envelope(rid, name, arguments)).encode())
                body = json.loads(raw) if status == 200 else {}
                if "result" not in body or body["result"].get("isError"):
                    raise RuntimeError(f"{name} failed over HTTP ({status}): {raw[:300]!r}")
                done += 1
        finally:
            await conn.close()

    end = time.perf_counter() + warm
    await asyncio.gather(*(client() for _ in range(CLIENTS)))  # warm-up: connections, caches
    done = 0
    c0 = cpu_s(pid)
    t0 = time.perf_counter()
    end = t0 + seconds
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    elapsed = time.perf_counter() - t0
    return done / elapsed, 100 * (cpu_s(pid) - c0) / elapsed


async def run(report: Report, smoke: bool) -> None:
    if not (ROOT / "src" / "sessions_mcp" / "http_app.py").is_file():
        raise Unavailable("src/sessions_mcp/http_app.py is not in this checkout")
    # short windows, paired and alternating in order: this machine's speed drifts by 20-30% from one
    # 5 s window to the next, so only measurements close in time compare (median of pair ratios)
    rounds, seconds, warm = (1, 0.5, 0.1) if smoke else (11, 1.5, 0.25)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        db = Path(tmp) / "sessions.db"
        sid = "local:" + await seed_session(db, 10)
        p_ours, p_bare, p_stack = free_port(), free_port(), free_port()
        procs = [
            subprocess.Popen([*ours_argv(), "--transport", "http", "--port", str(p_ours)], env=server_env(db),
                             stderr=subprocess.DEVNULL),
            subprocess.Popen([*bare_server_argv(), "http", str(p_bare)], env=server_env(), stderr=subprocess.DEVNULL),
            # sessions-mcp's HTTP app with the bare server's echo tool: the HTTP stack alone
            subprocess.Popen([*ours_stats_argv(), "http", str(p_stack)], env=server_env(db),
                             stderr=subprocess.DEVNULL),
        ]  # fmt: skip
        targets = {
            "bare": (p_bare, "echo", {"text": "hi"}, procs[1].pid),
            "ours": (p_ours, "get_session", {"session_id": sid}, procs[0].pid),
            "stack": (p_stack, "echo", {"text": "hi"}, procs[2].pid),
        }
        rates: dict[str, list[float]] = {k: [] for k in targets}
        cpus: dict[str, list[float]] = {k: [] for k in targets}
        try:
            for port in (p_ours, p_bare, p_stack):
                wait_for_port("127.0.0.1", port)
            for i in range(rounds):
                order = list(targets) if i % 2 == 0 else list(reversed(targets))
                for key in order:
                    port, name, arguments, pid = targets[key]
                    rate, cpu = await throughput(port, name, arguments, seconds, warm, pid)
                    rates[key].append(rate)
                    cpus[key].append(cpu)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    ours, bare, cpu_ours, cpu_bare = rates["ours"], rates["bare"], cpus["ours"], cpus["bare"]
    report.figure(
        Figure(
            "5.http_stack",
            "streamable HTTP `echo` calls/s through sessions-mcp's own HTTP app (Host/Origin guard, body "
            "limit, in-flight counter, SSE routes) with the bare server's echo tool added: "
            "what the HTTP stack costs without any session work",
            Spread.of(rates["stack"], "/s"),
            Spread.of(bare, "/s"),
            "bare SDK `streamable_http_app()`, same echo tool, same client",
            ratios(rates["stack"], bare),
        )
    )
    r = ratios(ours, bare)
    report.figure(
        Figure(
            "5.http",
            f"streamable HTTP `get_session` calls/s, {CLIENTS} concurrent clients (stateless 2026-07-28 requests, "
            f"one keep-alive connection each), {rounds} pairs of {seconds:g} s windows in alternating order, server under uvicorn on 127.0.0.1; server CPU "
            f"{Spread.of(cpu_ours).median:.0f}% of a core (bare {Spread.of(cpu_bare).median:.0f}%)",
            Spread.of(ours, "/s"),
            Spread.of(bare, "/s"),
            "bare SDK `streamable_http_app()` with one echo tool, same client",
            r,
        )
    )
    report.budget(
        Budget("5", f"streamable HTTP calls/s with {CLIENTS} clients vs bare SDK app", r.median, 0.85, ">=", "×")
    )
