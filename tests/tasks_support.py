"""Raw JSON-RPC peers for the MCP tasks tests: stdio and streamable HTTP, both protocol eras.

No SDK client here on purpose: these tests check what goes over the wire.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from anyio.abc import Process

from .conftest import server_command, server_env

MODERN = "2026-07-28"
LEGACY = "2025-11-25"
EXT = "io.modelcontextprotocol/tasks"
SESSION_META = "io.github.sessions-mcp/session_id"

AGENT = r"""
import os, sys, time
prompt = sys.argv[-1]
verb, _, name = prompt.partition(":")
box = os.environ["TASK_BOX"]
if verb in ("wait", "fail"):
    open(os.path.join(box, name + ".started"), "w").write(str(os.getpid()) + "\n")
    while not os.path.exists(os.path.join(box, name + ".go")):
        time.sleep(0.02)
    if verb == "fail":
        sys.stderr.write("the agent gave up on " + name + "\n")
        sys.exit(3)
print("reply to " + name)
"""
"""The slow local agent: ``wait:NAME`` writes NAME.started, waits for NAME.go, answers;
``fail:NAME`` does the same and fails; anything else answers at once."""


def agent_env(box: Path) -> dict[str, str]:
    """Server environment for the slow command agent whose files live in ``box``."""
    script = box / "agent.py"
    script.write_text(AGENT)
    return {
        "SESSIONS_MCP_LOCAL__AGENT": "command",
        "SESSIONS_MCP_LOCAL__AGENT_COMMAND": f"{sys.executable} {script}",
        "SESSIONS_MCP_LOCAL__AGENT_INPUT": "none",
        "TASK_BOX": str(box),
    }


async def started(box: Path, name: str, timeout: float = 30) -> int:
    """Wait until the agent began the turn NAME; its process id."""
    path = box / f"{name}.started"
    with anyio.fail_after(timeout):
        while not path.exists() or not path.read_text().endswith("\n"):
            await anyio.sleep(0.02)
    return int(path.read_text())


def release(box: Path, name: str) -> None:
    """Let the agent finish the turn NAME."""
    (box / f"{name}.go").write_text("go\n")


def meta(tasks: bool) -> dict[str, Any]:
    """The 2026-07-28 request envelope, declaring the tasks extension or not."""
    caps: dict[str, Any] = {"extensions": {EXT: {}}} if tasks else {}
    return {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "raw-tasks-test", "version": "0"},
    }


class RpcError(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code: int = error.get("code", 0)
        self.message: str = error.get("message", "")
        self.data: Any = error.get("data")


class Peer:
    """One client of one server: ``era`` is ``MODERN`` or ``LEGACY``; ``tasks`` declares task support."""

    era: str
    tasks: bool

    async def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """The raw JSON-RPC response message."""
        raise NotImplementedError

    async def call(self, method: str, params: dict[str, Any] | None = None, *, tasks: bool | None = None) -> Any:
        """Send a request and return its result (raise :class:`RpcError` for an error)."""
        p = dict(params or {})
        if self.era == MODERN:
            p["_meta"] = {**meta(self.tasks if tasks is None else tasks), **p.get("_meta", {})}
        answer = await self.send(method, p)
        if "error" in answer:
            raise RpcError(answer["error"])
        return answer["result"]

    async def tool(self, name: str, task: dict[str, Any] | None = None, **arguments: Any) -> Any:
        """``tools/call``; ``task`` is the 2025-11-25 ``params.task``."""
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if task is not None:
            params["task"] = task
        return await self.call("tools/call", params)

    async def poll(
        self, task_id: str, until: tuple[str, ...] = ("completed", "failed", "cancelled"), timeout: float = 30
    ) -> dict[str, Any]:
        """``tasks/get`` until the status is one of ``until``, honouring ``pollIntervalMs`` loosely (50 ms)."""
        with anyio.fail_after(timeout):
            while True:
                got = await self.call("tasks/get", {"taskId": task_id})
                if got["status"] in until:
                    return got
                await anyio.sleep(0.05)


class StdioPeer(Peer):
    """``sessions-mcp`` over stdio, raw lines."""

    def __init__(self, proc: Process, era: str, tasks: bool) -> None:
        self.proc = proc
        self.era = era
        self.tasks = tasks
        self.ids = itertools.count(1)
        self.waiting: dict[int, anyio.Event] = {}
        self.answers: dict[int, dict[str, Any]] = {}
        self.notes: list[dict[str, Any]] = []
        self.noted = anyio.Event()
        self.requests: list[dict[str, Any]] = []
        self.on_request: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]] | None = None
        """Answers requests from the server (None: a -32601 error)."""

    async def read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                if "method" in msg and "id" in msg:  # a request from the server (elicitation)
                    self.requests.append(msg)
                    answer = await self.on_request(msg) if self.on_request else None
                    reply = {"result": answer} if answer is not None else {"error": {"code": -32601, "message": "no"}}
                    await self.write({"jsonrpc": "2.0", "id": msg["id"], **reply})
                elif "id" in msg and ("result" in msg or "error" in msg):
                    self.answers[msg["id"]] = msg
                    if (ev := self.waiting.pop(msg["id"], None)) is not None:
                        ev.set()
                else:
                    self.notes.append(msg)
                    self.noted.set()
                    self.noted = anyio.Event()

    async def write(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send((json.dumps(msg) + "\n").encode())

    async def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = next(self.ids)
        done = self.waiting[rid] = anyio.Event()
        await self.write({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        await done.wait()
        return self.answers.pop(rid)

    async def note(self, method: str, predicate: Any = None, timeout: float = 30) -> dict[str, Any]:
        """The first notification of ``method`` (matching ``predicate(params)``), waiting for it."""
        with anyio.fail_after(timeout):
            while True:
                for n in self.notes:
                    if n.get("method") == method and (predicate is None or predicate(n.get("params", {}))):
                        return n
                await self.noted.wait()


@asynccontextmanager
async def stdio_peer(
    db: Path, era: str, *, tasks: bool = True, env: dict[str, str] | None = None, elicitation: bool = False
) -> AsyncIterator[StdioPeer]:
    """Start the real server over stdio; for ``LEGACY`` do the handshake (declaring tasks when ``tasks``,
    elicitation when ``elicitation``)."""
    proc = await anyio.open_process(server_command(), env=server_env(db, **(env or {})), stderr=None)
    peer = StdioPeer(proc, era, tasks)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(peer.read)
            if era == LEGACY:
                caps: dict[str, Any] = {"tasks": {"list": {}, "cancel": {}}} if tasks else {}
                if elicitation:
                    caps["elicitation"] = {"form": {}}
                init = await peer.call(
                    "initialize",
                    {"protocolVersion": LEGACY, "capabilities": caps, "clientInfo": {"name": "raw", "version": "0"}},
                )
                peer.initialize = init  # type: ignore[attr-defined]
                await peer.write({"jsonrpc": "2.0", "method": "notifications/initialized"})
            try:
                yield peer
            finally:
                tg.cancel_scope.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
        with anyio.CancelScope(shield=True):
            await proc.wait()
            await proc.aclose()


def sse_messages(body: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE body."""
    out: list[dict[str, Any]] = []
    for event in body.split("\n\n"):
        data = "\n".join(line[5:].lstrip() for line in event.splitlines() if line.startswith("data:"))
        if data.strip():
            out.append(json.loads(data))
    return out


class HttpPeer(Peer):
    """Streamable HTTP at ``url`` (``.../mcp``), raw POSTs."""

    def __init__(self, http: httpx2.AsyncClient, url: str, era: str, tasks: bool, token: str | None) -> None:
        self.http = http
        self.url = url
        self.era = era
        self.tasks = tasks
        self.ids = itertools.count(1)
        self.session_id: str | None = None
        self.headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def _headers(self, method: str, params: dict[str, Any]) -> dict[str, str]:
        h = dict(self.headers)
        if self.era == MODERN:
            h["MCP-Protocol-Version"] = MODERN
            h["Mcp-Method"] = method
            name = params.get("name") if method == "tools/call" else params.get("taskId")
            if isinstance(name, str):
                h["Mcp-Name"] = name
        else:
            h["MCP-Protocol-Version"] = LEGACY
            if self.session_id:
                h["Mcp-Session-Id"] = self.session_id
        return h

    async def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        rid = next(self.ids)
        body = {"jsonrpc": "2.0", "id": rid, "method": method, "params": params}
        r = await self.http.post(self.url, json=body, headers=self._headers(method, params))
        if sid := r.headers.get("mcp-session-id"):
            self.session_id = sid
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            msgs = [m for m in sse_messages(r.text) if m.get("id") == rid]
            assert msgs, r.text
            return msgs[-1]
        assert r.status_code in (200, 400, 404), (r.status_code, r.text)
        return r.json()


@asynccontextmanager
async def http_peer(url: str, era: str, *, tasks: bool = True, token: str | None = None) -> AsyncIterator[HttpPeer]:
    """A raw streamable-HTTP client; for ``LEGACY`` do the handshake first."""
    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as http:
        peer = HttpPeer(http, url, era, tasks, token)
        if era == LEGACY:
            caps: dict[str, Any] = {"tasks": {"list": {}, "cancel": {}}} if tasks else {}
            await peer.call(
                "initialize",
                {"protocolVersion": LEGACY, "capabilities": caps, "clientInfo": {"name": "raw", "version": "0"}},
            )
            h = peer._headers("notifications/initialized", {})  # pyright: ignore[reportPrivateUsage]
            await http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
        yield peer


async def start_task(peer: Peer, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a waiting tool as a task in the peer's era; the task (2026 flat ``Task`` / 2025 ``task``)."""
    if peer.era == MODERN:
        got = await peer.tool(tool, **arguments)
        assert got.get("resultType") == "task", got
        return got
    got = await peer.tool(tool, task={"ttl": 3_600_000}, **arguments)
    assert set(got) >= {"task"}, got
    return got["task"]


async def final_result(peer: Peer, task_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Poll to the end; (the task, the CallToolResult): inlined in 2026, ``tasks/result`` in 2025."""
    task = await peer.poll(task_id)
    if peer.era == MODERN:
        return task, task.get("result", {})
    return task, await peer.call("tasks/result", {"taskId": task_id})
