"""Build the MCP server: settings -> store -> backends -> service -> MCPServer.

The :class:`Runtime` owns the store, the backends and one task group for background work.
It is entered once per process (stdio), per app (HTTP, from the ASGI lifespan) and, because
the SDK enters the MCP lifespan once per SSE connection, it is reference-counted so the
first entry starts it and the last one stops it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup
from mcp.server.mcpserver import MCPServer

from . import __version__
from .backends import create_backend
from .backends.base import SessionBackend
from .service import SessionService
from .settings import Settings
from .store import create_store
from .store.base import Store

log = logging.getLogger(__name__)

REMOTE = {"factory", "fabro"}


class Runtime:
    """Everything the server needs while it runs."""

    def __init__(self, settings: Settings, *, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or create_store(settings.local)
        backends: dict[str, SessionBackend] = {
            name: create_backend(name, settings, self.store) for name in settings.backends
        }
        self.service = SessionService(backends, self.store)
        self.notifier: Any = None
        self.tasks: Any = None
        """The :class:`~sessions_mcp.tasks.manager.TaskManager` once the MCP server is built."""
        self._users = 0
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    @property
    def task_group(self) -> TaskGroup:
        """The long-lived task group (only while running)."""
        if self._tg is None:
            raise RuntimeError("runtime is not running")
        return self._tg

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[Runtime, None]:
        """Start on first entry, stop on last exit."""
        async with self._lock:
            self._users += 1
            first = self._users == 1
        if not first:
            try:
                yield self
            finally:
                async with self._lock:
                    self._users -= 1
            return
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self.service.start(tg)
                if self.tasks is not None:
                    await self.tasks.start(tg)
                try:
                    yield self
                finally:
                    with anyio.CancelScope(shield=True):
                        await self.service.aclose()
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None
            async with self._lock:
                self._users -= 1


def instructions(service: SessionService) -> str:
    """Server instructions: what this server is and which backends it has."""
    lines = [
        "Agent sessions as tools. Hand a task to an agent with create_session(prompt=...), follow it with",
        "list_messages(after=cursor, wait_s=...), reply with send_message. Waiting never stops an agent;",
        "only interrupt_session does. Status: idle, running, awaiting_reply (no agent attached: another",
        "client answers with send_message(role='assistant'); list_sessions(status='awaiting_reply') is the",
        "inbox), failed (see error), needs_input (the agent asks; see pending).",
        f"Backends: {', '.join(service.backends)}; default for new sessions: {service.default_backend}.",
    ]
    for info in service.infos():
        if info.cannot:
            lines.append(f"The {info.name} backend cannot {', '.join(info.cannot)}.")
        if info.agents:
            lines.append(
                f"The {info.name} backend's agents (create_session(backend={info.name!r}, agent=...)): "
                f"{', '.join(info.agents)}; default {info.agents[0]}."
            )
    agents = service.agents()
    if agents:
        ready = [a["name"] for a in agents if a["available"] and a["name"] != "none"]
        default = next((a["name"] for a in agents if a["default"]), "none")
        lines.append(
            f"Local agents (create_session(agent=...)): {', '.join(ready) or 'none installed'}; default: {default}. "
            "Status needs_input: the agent asks for a permission or an answer (see `pending`); answer with "
            "send_message."
        )
    return "\n".join(lines)


def build_server(settings: Settings, *, runtime: Runtime | None = None, **mcp_kwargs: Any) -> MCPServer:
    """The MCP server for these settings (not yet running)."""
    from .apps import session_view
    from .prompts import register_prompts
    from .resources import register_resources
    from .subscriptions import Notifier
    from .tasks import build_tasks, install_tasks
    from .tools import register_tools

    rt = runtime or Runtime(settings)
    notifier = Notifier(rt)
    tasks, tasks_extension = build_tasks(rt)
    extensions = [tasks_extension, session_view(), *mcp_kwargs.pop("extensions", ())]

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncGenerator[Runtime, None]:
        async with rt.running():
            yield rt

    mcp = MCPServer(
        "sessions-mcp",
        title="Agent sessions",
        version=__version__,
        instructions=instructions(rt.service),
        website_url="https://github.com/sessions-mcp/sessions-mcp",
        lifespan=lifespan,
        subscriptions=notifier.bus,
        log_level=cast(Any, settings.log_level.upper()),
        extensions=extensions,
        **mcp_kwargs,
    )
    open_world = bool(REMOTE & set(rt.service.backends))
    register_tools(mcp, rt.service, open_world=open_world)
    register_resources(mcp, rt.service)
    register_prompts(mcp, rt.service)
    notifier.install(mcp)
    install_tasks(mcp, tasks, notifier.bus)
    rt.tasks = tasks
    _accept_log_level(mcp)
    rt.notifier = notifier
    rt.service.on_remote_change = notifier.publish_session
    return mcp


def _accept_log_level(mcp: MCPServer) -> None:
    """Answer 2025-era ``logging/setLevel`` (and so advertise the logging capability).

    ``MCPServer`` has no public hook for it; without one, clients that set a level first
    (the Inspector, the conformance suite) get -32601. We send no log notifications, so
    the level needs no storing.
    """
    from mcp.server import ServerRequestContext
    from mcp.types import EmptyResult, SetLevelRequestParams

    async def on_set_level(ctx: ServerRequestContext[Any, Any], params: SetLevelRequestParams) -> EmptyResult:
        del ctx, params
        return EmptyResult()

    low = mcp._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    low.add_request_handler("logging/setLevel", SetLevelRequestParams, on_set_level)
