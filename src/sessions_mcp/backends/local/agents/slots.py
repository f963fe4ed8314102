"""At most ``SESSIONS_MCP_LOCAL__MAX_AGENTS`` agent processes at once; more turns queue.

A slot is held by a running turn, and afterwards by an ACP agent's process that stays alive for
the session's next turn (an *idle* slot). A turn that finds no free slot first stops the least
recently used idle process; only when every slot runs a turn does it wait (and says it is queued).
An idle process is also stopped after :data:`IDLE_STOP_S` (its conversation is loaded again when
the session's next turn comes).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio

Closer = Callable[[], Awaitable[None]]

IDLE_STOP_S = 900.0
"""An agent process kept for a session's next turn is stopped after this long unused."""


class Slots:
    """The agent-process budget of one server (see the module docstring)."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.busy: set[str] = set()
        self.idle: OrderedDict[str, Closer] = OrderedDict()
        self.since: dict[str, float] = {}
        self._changed = anyio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def forget(self, session_id: str) -> None:
        """The idle process of this session is gone (closed or died): its slot is free."""
        if self.idle.pop(session_id, None) is not None:
            self._wake()

    @asynccontextmanager
    async def hold(
        self, session_id: str, agent: Any, *, on_queue: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncGenerator[None, None]:
        """Hold a slot for one turn of ``session_id``; afterwards keep it idle if ``agent`` keeps a process."""
        announced = False
        while True:
            if self.idle.pop(session_id, None) is not None:
                break  # this session's process is still alive: its slot carries over
            if len(self.busy) + len(self.idle) < self.limit:
                break
            if self.idle:
                _, close = self.idle.popitem(last=False)
                with anyio.CancelScope(shield=True):
                    await close()
                continue
            if not announced and on_queue is not None:
                announced = True
                await on_queue()
            await self._changed.wait()
        self.busy.add(session_id)
        try:
            yield
        finally:
            self.busy.discard(session_id)
            keeps = getattr(agent, "idle_closer", None)
            close = keeps(session_id) if keeps is not None else None
            if close is not None:
                self.idle[session_id] = close
                self.since[session_id] = time.monotonic()
            self._wake()

    async def reap(self, idle_s: float = IDLE_STOP_S) -> None:
        """Stop the processes that have been idle longer than ``idle_s``."""
        now = time.monotonic()
        for session_id in [s for s in self.idle if now - self.since.get(s, now) > idle_s]:
            close = self.idle.pop(session_id)
            self.since.pop(session_id, None)
            with anyio.CancelScope(shield=True):
                await close()
        self._wake()
