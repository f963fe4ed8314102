"""Real-browser tests of the live session view: a test MCP Apps host, the server and chromium.

- The host page (``tests/browser/host.js``, bundled by esbuild from ``web/node_modules`` with the
  official ``AppBridge`` and the TypeScript SDK client) is served on the server's own origin, next
  to ``/mcp``; the sandbox proxy on a second port, i.e. another origin, with the view's declared
  CSP as an HTTP header. One uvicorn on 127.0.0.1 serves both sockets.
- ``tests/browser/driver.mjs`` runs Debian's chromium through playwright-core (``.tools/browser``)
  and answers JSON commands on stdin, so each test states its steps in Python.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
import uvicorn
from anyio.abc import Process
from starlette.types import Receive, Scope, Send

from sessions_mcp.http_app import create_app
from sessions_mcp.settings import Settings

from .conftest import ROOT

HERE = ROOT / "tests" / "browser"
WEB = ROOT / "web"
TOOLS = ROOT / ".tools" / "browser"
CHROMIUM = "/usr/lib/chromium/chromium"
ARTIFACTS = ROOT / ".tools" / "artifacts" / "view"
"""Screenshots land here (git-ignored)."""

STOP_S = 60
"""How long the server may take to stop (the agents' turns end first: up to 15 s each)."""
SETUP_HINT = "run `bash scripts/setup-browser.sh` (chromium, playwright-core, web/node_modules)"


def node() -> str:
    found = shutil.which("node")
    assert found, "node is not installed; " + SETUP_HINT
    return found


def check_installed() -> None:
    """Fail (never skip) with what to run when the browser tooling is missing."""
    missing = [
        p
        for p in (Path(CHROMIUM), TOOLS / "node_modules" / "playwright-core", WEB / "node_modules" / "esbuild")
        if not p.exists()
    ]
    assert not missing, f"missing {', '.join(map(str, missing))}: {SETUP_HINT}"


def build_host(out: Path) -> Path:
    """Bundle the test host page (AppBridge + TS SDK client) into ``out``/host.js."""
    target = out / "host.js"
    subprocess.run(
        [
            str(WEB / "node_modules" / ".bin" / "esbuild"),
            str(HERE / "host.js"),
            "--bundle",
            "--format=iife",
            "--platform=browser",
            "--log-level=warning",
            f"--outfile={target}",
        ],
        check=True,
        env={**os.environ, "NODE_PATH": str(WEB / "node_modules")},
        timeout=120,
    )
    return target


def sandbox_csp(declared: dict[str, Any]) -> str:
    """The CSP a host applies to the view: nothing beyond its own inline code and what it declares."""

    def extra(key: str) -> str:
        return "".join(
            f" {d}" for d in declared.get(key) or [] if isinstance(d, str) and d.isprintable() and ";" not in d
        )

    def only(key: str) -> str:
        return extra(key).strip() or "'none'"

    resource = extra("resourceDomains")
    return "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' 'unsafe-inline'{resource}",
            f"style-src 'self' 'unsafe-inline'{resource}",
            f"img-src 'self' data:{resource}",
            f"font-src 'self' data:{resource}",
            f"media-src 'self' data:{resource}",
            f"connect-src {only('connectDomains')}",
            f"frame-src {only('frameDomains')}",
            f"base-uri {only('baseUriDomains')}",
            "object-src 'none'",
            "form-action 'none'",
        ]
    )


class Served:
    def __init__(self, port: int, sandbox_port: int, runtime: Any) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.sandbox = f"http://127.0.0.1:{sandbox_port}"
        self.runtime = runtime

    def page(
        self,
        tool: str,
        args: dict[str, Any],
        theme: str = "light",
        era: str = "legacy",
    ) -> str:
        from urllib.parse import urlencode

        q = urlencode(
            {
                "tool": tool,
                "args": json.dumps(args),
                "theme": theme,
                "sandbox": self.sandbox,
                "era": era,
            }
        )
        return f"{self.url}/host.html?{q}"


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def serve_with_host(settings: Settings, host_js: Path) -> AsyncIterator[Served]:
    """The real sessions-mcp HTTP app plus the host page (port 1) and the sandbox proxy (port 2)."""
    built = create_app(settings)
    main_sock, sandbox_sock = _socket(), _socket()
    sandbox_port = sandbox_sock.getsockname()[1]
    files = {
        "/host.html": (HERE / "host.html", "text/html"),
        "/host.js": (host_js, "text/javascript"),
        "/sandbox.html": (HERE / "sandbox.html", "text/html"),
        "/sandbox.js": (HERE / "sandbox.js", "text/javascript"),
    }

    async def static(scope: Scope, send: Send, path: str) -> None:
        file, ctype = files[path]
        headers = [(b"content-type", f"{ctype}; charset=utf-8".encode()), (b"cache-control", b"no-store")]
        if path == "/sandbox.html":
            query = parse_qs(scope.get("query_string", b"").decode())
            declared = json.loads(query.get("csp", ["{}"])[0])
            headers.append((b"content-security-policy", sandbox_csp(declared).encode()))
        body = file.read_bytes()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            port = scope["server"][1]
            path = scope["path"]
            on_sandbox = port == sandbox_port
            if path in files and on_sandbox == path.startswith("/sandbox"):
                await static(scope, send, path)
                return
            if on_sandbox:
                await send({"type": "http.response.start", "status": 404, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        await built.app(scope, receive, send)

    started = anyio.Event()

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            started.set()

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    server = Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=3)
    )
    stopped = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve([main_sock, sandbox_sock])
        finally:
            stopped.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            with anyio.fail_after(15):
                await started.wait()
            try:
                yield Served(main_sock.getsockname()[1], sandbox_port, built.runtime)
            finally:
                # a graceful stop even when the block failed: a task group cancelling serve() would
                # orphan uvicorn's lifespan task, and with it the runtime and its agent processes
                server.should_exit = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_S):
                    await stopped.wait()
    finally:
        main_sock.close()
        sandbox_sock.close()


class Browser:
    """The chromium driver process; ``await browser.do("op", ...)`` runs one command."""

    def __init__(self, proc: Process) -> None:
        self.proc = proc
        self._buf = b""
        self._next = 0

    async def _line(self) -> bytes:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            chunk = await self.proc.stdout.receive()
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    async def do(self, op: str, timeout: float = 60, **args: Any) -> Any:
        assert self.proc.stdin is not None
        self._next += 1
        await self.proc.stdin.send((json.dumps({"id": self._next, "op": op, **args}) + "\n").encode())
        with anyio.fail_after(timeout):
            while True:
                answer = json.loads(await self._line())
                if answer.get("id") == self._next:
                    break
        if not answer["ok"]:
            raise AssertionError(f"browser {op} {args}: {answer['error']}")
        return answer["value"]

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        await self.do("screenshot", path=str(path))
        return path


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """chromium under playwright-core, stopped (by its own PID) when the block ends."""
    proc = await anyio.open_process(
        [node(), str(HERE / "driver.mjs"), str(TOOLS), CHROMIUM],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
    )
    try:
        yield Browser(proc)
    finally:
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            await proc.stdin.send(b"quit\n")
        with anyio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
