"""One ACP agent process: spawned in its own process group (under the guardian on Linux, so it
never outlives the server), connected with the ``acp`` SDK's client side, stopped by group.

The ``acp`` SDK's own ``spawn_agent_process`` does not start a new process group, and an adapter
(claude-agent-acp, codex-acp) starts children of its own, so the process is spawned here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import acp
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    DeniedOutcome,
    FileSystemCapabilities,
    Implementation,
    InitializeResponse,
    RequestPermissionResponse,
)

from ....._http import Redactor
from ..command import TERM_GRACE_S, guarded

log = logging.getLogger(__name__)

STDERR_KEEP = 16 * 1024
STDIO_LIMIT = 50 * 1024 * 1024
"""Largest JSON-RPC line accepted from an agent (images, long tool output)."""

UpdateFn = Callable[[str, Any], Awaitable[None]]
PermissionFn = Callable[[str, Any, list[Any]], Awaitable[str | None]]


class _QuietUnknownMethods(logging.Filter):
    """The SDK logs, on the root logger, every notification the client does not handle; Qwen sends
    two non-standard ones per turn (``qwen/notify/...``) that need no answer: keep them at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Unhandled error while handling notification"):
            exc = record.exc_info[1] if record.exc_info else None
            if isinstance(exc, acp.RequestError) and getattr(exc, "code", None) == -32601:
                log.debug("ACP agent sent a notification this client ignores: %s", record.getMessage())
                return False
        return True


logging.getLogger().addFilter(_QuietUnknownMethods())


class _Client:
    """The client side the agent talks to: updates and permission requests go to the current turn."""

    def __init__(self, proc: AcpProcess) -> None:
        self.proc = proc

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        fn = self.proc.on_update
        if fn is not None:
            await fn(session_id, update)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> RequestPermissionResponse:
        fn = self.proc.on_permission
        chosen = await fn(session_id, tool_call, options) if fn is not None else None
        if chosen is None:
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=chosen))

    # the client declares no file system and no terminal: agents use their own tools
    async def write_text_file(self, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("fs/write_text_file")

    async def read_text_file(self, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("fs/read_text_file")

    async def create_terminal(self, **kwargs: Any) -> Any:
        raise acp.RequestError.method_not_found("terminal/create")

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise acp.RequestError.method_not_found(method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None

    def on_connect(self, conn: Any) -> None:
        return None


class AcpProcess:
    """A running ACP agent and its connection."""

    def __init__(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.conn: Any = None
        self.init: InitializeResponse | None = None
        self.on_update: UpdateFn | None = None
        self.on_permission: PermissionFn | None = None
        self.stderr = bytearray()
        self._stderr_task: asyncio.Task[None] | None = None
        self.redact = Redactor()
        self.loaded: str | None = None
        """The ACP session id this process has open (new or loaded)."""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def stderr_tail(self, n: int = 1500) -> str:
        return self.redact(bytes(self.stderr).decode("utf-8", "replace").strip())[-n:]

    async def start(self) -> InitializeResponse:
        """Spawn the agent and run ``initialize``."""
        self.proc = await asyncio.create_subprocess_exec(
            *guarded(self.argv),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            env=self.env,
            start_new_session=True,
            limit=STDIO_LIMIT,
        )
        self._stderr_task = asyncio.ensure_future(self._keep_stderr())
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.conn = acp.connect_to_agent(
            _Client(self),  # pyright: ignore[reportArgumentType] - implements the methods it declares
            self.proc.stdin,
            self.proc.stdout,
        )
        from ..... import __version__

        init: InitializeResponse = await self.conn.initialize(
            protocol_version=acp.PROTOCOL_VERSION,
            client_capabilities=ClientCapabilities(
                fs=FileSystemCapabilities(read_text_file=False, write_text_file=False), terminal=False
            ),
            client_info=Implementation(name="sessions-mcp", title="sessions-mcp", version=__version__),
        )
        self.init = init
        return init

    async def _keep_stderr(self) -> None:
        stream = self.proc.stderr if self.proc is not None else None
        if stream is None:
            return
        with contextlib.suppress(Exception):
            while chunk := await stream.read(4096):
                self.stderr.extend(chunk)
                if len(self.stderr) > STDERR_KEEP:
                    del self.stderr[: len(self.stderr) - STDERR_KEEP]

    async def wait_exit(self) -> int:
        assert self.proc is not None
        return await self.proc.wait()

    async def stop(self) -> None:
        """Close the connection and stop the whole process group (SIGTERM, grace, SIGKILL)."""
        proc = self.proc
        if proc is None:
            return
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 2.0)
        pgid = proc.pid
        if proc.returncode is None:
            _signal(pgid, signal.SIGTERM)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), TERM_GRACE_S + 1.0)
        _signal(pgid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()
        if self._stderr_task is not None:
            self._stderr_task.cancel()
            with contextlib.suppress(BaseException):
                await self._stderr_task
        log.debug("ACP agent %s (pid %d) stopped", os.path.basename(self.argv[0]), pgid)


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
