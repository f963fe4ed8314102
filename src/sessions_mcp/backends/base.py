"""The one interface every backend implements.

A backend speaks to one place where sessions live (the embedded store, Factory, Fabro) and
returns only neutral models (:mod:`sessions_mcp.models`). Positions (``StoredMessage.position``,
``after``) are backend-native strings; the service wraps them into opaque, session-bound cursors.

Principals: every call names the principal (``"local"`` over stdio, the token's subject over
HTTP). A backend that stores sessions itself (local) enforces ownership; a remote backend uses
the server's configured credentials and may ignore it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import ClassVar

import anyio
from anyio.abc import TaskGroup

from ..diagnostics import Check
from ..models import (
    BackendInfo,
    Capabilities,
    MessagePage,
    Role,
    SessionPage,
    SessionRecord,
    Status,
    StoredMessage,
)

ProgressFn = Callable[[str], Awaitable[None]]
"""Called with human-readable text while a wait is in progress (streamed reply text or status)."""


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """What ``create_session`` asks of a backend."""

    principal: str
    prompt: str | None = None
    title: str | None = None
    model: str | None = None
    system: str | None = None
    agent: str | None = None
    workdir: str | None = None
    """The folder the session's agent works in (local named agents)."""
    dedupe_key: str | None = None
    """Stable key of the caller's idempotency key; backends that can, dedupe on it."""


@dataclass(frozen=True, slots=True)
class CreateResult:
    """The new session and the message(s) the create wrote."""

    session: SessionRecord
    written: list[StoredMessage] = field(default_factory=list[StoredMessage])


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """Filters for ``list_sessions``."""

    principal: str
    statuses: frozenset[Status] | None = None
    query: str | None = None
    cursor: str | None = None
    limit: int = 20


class SessionBackend(ABC):
    """An async backend. Instances are created once per server process and closed on exit."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def info(self, *, default: bool) -> BackendInfo:
        """Describe this backend for the index and the server instructions."""
        caps = self.capabilities
        cannot = [
            what
            for what, ok in (
                ("rename sessions", caps.rename),
                ("delete sessions", caps.delete),
                ("interrupt a running turn", caps.interrupt),
            )
            if not ok
        ]
        return BackendInfo(name=self.name, default=default, capabilities=caps, cannot=cannot)

    async def start(self, tg: TaskGroup) -> None:  # noqa: B027 - optional hook
        """Open connections; background work goes in ``tg`` (lives as long as the server)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release everything :meth:`start` acquired."""

    async def diagnose(self) -> list[Check]:
        """Checks for ``sessions-mcp doctor``: configuration, credentials, reachability.

        Must not raise; a failure is a ``Check`` with level ``"fail"`` and a fix.
        """
        return [Check(self.name, "ok", "no checks implemented")]

    def agent_attached(self, session: SessionRecord) -> bool:
        """Whether something is bound to answer user turns in this session (``wait`` defaults on)."""
        return True

    @abstractmethod
    async def create_session(self, req: CreateRequest) -> CreateResult:
        """Create a session; when ``req.prompt`` is set, also send it as the first user message."""

    @abstractmethod
    async def send_message(
        self,
        principal: str,
        native_id: str,
        text: str,
        role: Role,
        *,
        dedupe_key: str | None = None,
        in_reply_to: str | None = None,
    ) -> StoredMessage:
        """Append a message; a user message starts a turn where an agent is attached.

        ``in_reply_to`` (an assistant message only) is the position of the last message the
        answerer read: a user message after it keeps the session waiting for a reply.
        """

    @abstractmethod
    async def get_session(self, principal: str, native_id: str) -> SessionRecord:
        """One session; raises :class:`~sessions_mcp.errors.UnknownSession`."""

    @abstractmethod
    async def list_sessions(self, q: SessionQuery) -> SessionPage:
        """Sessions visible to the principal, most recently updated first."""

    @abstractmethod
    async def list_messages(
        self,
        principal: str,
        native_id: str,
        *,
        after: str | None,
        limit: int,
        roles: Sequence[Role] | None = None,
    ) -> MessagePage:
        """Messages strictly after position ``after`` (from the start when None), oldest first."""

    @abstractmethod
    async def rename_session(self, principal: str, native_id: str, title: str) -> SessionRecord:
        """Set the title."""

    @abstractmethod
    async def interrupt_session(self, principal: str, native_id: str) -> SessionRecord:
        """Stop the current turn, if any (idempotent)."""

    @abstractmethod
    async def delete_session(self, principal: str, native_id: str) -> None:
        """Delete; afterwards the session is unknown everywhere."""

    def watch(
        self, principal: str, native_id: str, *, progress: ProgressFn | None = None
    ) -> AbstractAsyncContextManager[Watch]:
        """Follow one session while a caller waits on it.

        Inside the context, :meth:`Watch.next` returns True as soon as the session may have
        changed since the context was entered or since the previous ``next`` returned, so a
        caller that re-reads after each ``next`` misses nothing. Backends that stream a reply
        call ``progress`` with the text as it arrives. The default polls with backoff.
        """
        return _PollingWatch(self.poll_interval)

    poll_interval: float = 1.0
    """Seconds between polls for backends without a change feed."""


class Watch(ABC):
    """See :meth:`SessionBackend.watch`."""

    @abstractmethod
    async def next(self, timeout: float) -> bool:
        """True when something may have changed; False after ``timeout`` seconds of nothing."""

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class _PollingWatch(Watch):
    def __init__(self, interval: float) -> None:
        self.interval = interval

    async def next(self, timeout: float) -> bool:
        await anyio.sleep(max(min(timeout, self.interval), 0))
        return True  # the caller re-reads; a poll cannot know whether anything changed
