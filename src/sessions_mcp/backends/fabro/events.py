"""Live replies from Fabro's event stream, shaped by how the real server behaves.

``GET /sessions/{id}/events`` only delivers events emitted after the subscriber connected: the
real server sets no event ids (``Last-Event-ID`` is ignored), replays nothing and never closes the
stream after ``done``. So:

- one shared, reference-counted subscription per session (:class:`SessionStream`), held while
  someone waits and for a short *linger* after, so a stream opened by ``send_message`` before
  its POST is adopted by the service's ``watch()`` that follows (nothing emitted in between is lost);
- a waiter is woken on ``assistant_turn``/``tool_turn``/``done``/``error`` and on every
  (re)connect or failure, and then re-reads the session: turns are the truth, events are hints,
  so a dropped stream, a malformed frame or a missed ``done`` costs a re-read, never a reply;
- ``content_delta`` text goes to progress callbacks (and is kept since the last turn, so a
  callback that attaches late still gets the reply from its start);
- an ``error`` event is remembered per session until a new message is sent: Fabro has no status
  field, and the error is visible nowhere else.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import httpx2
from anyio.abc import TaskGroup

from ...errors import SessionsError, UnknownSession
from ..base import ProgressFn, Watch
from .client import FabroClient

log = logging.getLogger(__name__)

MAX_BUFFERED_DELTA_CHARS = 20_000


@dataclass
class FabroFailure:
    """An ``error`` event, bound to the number of turns it ended (known at the next read)."""

    message: str
    turns: int | None = None


@dataclass
class SessionStream:
    """One subscription to one session's events; see the module docstring."""

    fabro_id: str
    refs: int = 0
    version: int = 0
    generating: bool | None = None
    """True: a reply is in flight (posted, or deltas seen) and no done/error yet; False: ended; None: unknown."""
    connected: anyio.Event = field(default_factory=anyio.Event)
    connects: int = 0
    failure: SessionsError | None = None
    deltas: list[str] = field(default_factory=list[str])
    listeners: list[ProgressFn] = field(default_factory=list[ProgressFn])
    linger_until: float = 0.0
    closed: bool = False
    events_seen: int = 0
    _changed: anyio.Event = field(default_factory=anyio.Event)
    _refs_changed: anyio.Event = field(default_factory=anyio.Event)

    def bump(self) -> None:
        """Something may have changed: wake every waiter."""
        self.version += 1
        self._changed.set()
        self._changed = anyio.Event()

    def refs_changed(self) -> None:
        """A holder came or went."""
        self._refs_changed.set()
        self._refs_changed = anyio.Event()

    async def wait_changed(self, since: int, timeout: float) -> bool:
        """True once ``version`` differs from ``since``; False after ``timeout`` seconds."""
        if self.version != since:
            return True
        if self.closed:  # nothing will wake us: poll instead of spinning
            await anyio.sleep(min(max(timeout, 0), 1.0))
            return True
        with anyio.move_on_after(max(timeout, 0)):
            while self.version == since and not self.closed:
                await self._changed.wait()
        return self.version != since

    async def wait_connected(self, timeout: float) -> bool:
        """True once the stream is open (so later events will be seen)."""
        with anyio.move_on_after(max(timeout, 0)):
            while not self.connected.is_set() and self.failure is None and not self.closed:
                await self._changed.wait()
        return self.connected.is_set()

    def mark_posted(self) -> None:
        """A user message is about to be posted: a new reply starts.

        ``generating`` becomes unknown rather than True: the stream may have opened after this
        reply ended (create answers before we can subscribe), and then no ``done`` would ever
        clear it. The last turn being the user's already says ``running`` until a reply lands.
        """
        self.deltas.clear()
        self.generating = None


class LiveStreams:
    """Every open subscription of one backend (they run in the backend's task group)."""

    def __init__(self, client: FabroClient, *, linger_s: float = 5.0, reconnect_max_s: float = 2.0) -> None:
        self.client = client
        self.linger_s = linger_s
        self.reconnect_max_s = reconnect_max_s
        self.streams: dict[str, SessionStream] = {}
        self.failures: dict[str, FabroFailure] = {}
        self.tg: TaskGroup | None = None

    def bind(self, tg: TaskGroup) -> None:
        """Run subscriptions in ``tg`` from now on."""
        self.tg = tg

    @property
    def available(self) -> bool:
        """Whether subscriptions can run (the backend was started)."""
        return self.tg is not None

    @asynccontextmanager
    async def hold(self, fabro_id: str, subject: str) -> AsyncGenerator[SessionStream, None]:
        """Keep the subscription of ``fabro_id`` open while inside (and ``linger_s`` after)."""
        assert self.tg is not None, "LiveStreams.bind() first"
        s = self.streams.get(fabro_id)
        if s is None or s.closed:
            s = SessionStream(fabro_id)
            self.streams[fabro_id] = s
            self.tg.start_soon(self._run, s, subject)
        s.refs += 1
        s.refs_changed()
        try:
            yield s
        finally:
            s.refs -= 1
            s.linger_until = time.monotonic() + self.linger_s
            s.refs_changed()

    def note_posted(self, fabro_id: str) -> None:
        """Forget an earlier error: a new message starts a new reply."""
        self.failures.pop(fabro_id, None)

    # --- the reader --------------------------------------------------------------------------

    def _should_stop(self, s: SessionStream) -> bool:
        return s.refs == 0 and time.monotonic() >= s.linger_until

    async def _janitor(self, s: SessionStream, scope: anyio.CancelScope) -> None:
        while True:
            if s.refs == 0:
                remaining = s.linger_until - time.monotonic()
                if remaining <= 0:
                    s.closed = True  # at once, so a hold() arriving before the cancel lands opens a new one
                    scope.cancel()
                    return
                waiter = s._refs_changed  # pyright: ignore[reportPrivateUsage]
                with anyio.move_on_after(remaining):
                    await waiter.wait()
            else:
                await s._refs_changed.wait()  # pyright: ignore[reportPrivateUsage]

    async def _run(self, s: SessionStream, subject: str) -> None:
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._janitor, s, scope)
                    await self._read_forever(s, subject)
                    tg.cancel_scope.cancel()
        except Exception:  # a bug here must not take the server's task group down
            log.exception("Fabro event stream of %s stopped", s.fabro_id)
        finally:
            s.closed = True
            if s.generating:
                s.generating = None
            s.bump()
            if self.streams.get(s.fabro_id) is s:
                del self.streams[s.fabro_id]

    async def _read_forever(self, s: SessionStream, subject: str) -> None:
        delay = 0.05
        while not self._should_stop(s):
            try:
                async with self.client.events(s.fabro_id, subject=subject) as source:
                    s.failure = None
                    s.connects += 1
                    if s.connects > 1:
                        s.generating = None  # events may have been missed while disconnected
                    s.connected.set()
                    s.bump()  # re-read: whatever happened before now is in the turns
                    delay = 0.05
                    async for sse in source:
                        await self._handle(s, sse)
                log.debug("Fabro event stream of %s ended; reconnecting", s.fabro_id)
            except UnknownSession as exc:
                s.failure = exc
                s.bump()
                return
            except SessionsError as exc:
                log.debug("Fabro event stream of %s failed: %s", s.fabro_id, exc)
                s.failure = exc
            if s.generating:
                s.generating = None
            s.bump()
            await anyio.sleep(delay)
            delay = min(delay * 2, self.reconnect_max_s)

    async def _handle(self, s: SessionStream, sse: httpx2.ServerSentEvent) -> None:
        s.events_seen += 1
        data: dict[str, Any] = {}
        try:
            parsed: Any = json.loads(sse.data) if sse.data else {}
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            data = cast("dict[str, Any]", parsed)
        match sse.event:
            case "content_delta":
                delta = data.get("delta")
                if not isinstance(delta, str):
                    log.debug("ignored a malformed content_delta frame on %s", s.fabro_id)
                    return
                s.generating = True
                s.deltas.append(delta)
                if sum(len(d) for d in s.deltas) > MAX_BUFFERED_DELTA_CHARS:
                    joined = "".join(s.deltas)[-MAX_BUFFERED_DELTA_CHARS:]
                    s.deltas[:] = [joined]
                await _notify(s.listeners, delta)
            case "assistant_turn" | "tool_turn":
                s.deltas.clear()
                s.bump()
            case "done":
                s.generating = False
                s.deltas.clear()
                s.bump()
            case "error":
                message = data.get("message")
                text = message if isinstance(message, str) and message else "Fabro reported an error"
                self.failures[s.fabro_id] = FabroFailure(text)
                s.generating = False
                s.deltas.clear()
                s.bump()
            case _:
                log.debug("ignored an unknown Fabro event %r on %s", sse.event, s.fabro_id)


async def _notify(listeners: list[ProgressFn], text: str) -> None:
    for fn in list(listeners):
        try:
            await fn(text)
        except Exception:
            log.debug("progress callback failed", exc_info=True)


class StreamWatch(Watch):
    """:class:`~sessions_mcp.backends.base.Watch` over a held :class:`SessionStream`."""

    def __init__(self, stream: SessionStream) -> None:
        self.stream = stream
        self.seen = stream.version

    async def next(self, timeout: float) -> bool:
        changed = await self.stream.wait_changed(self.seen, timeout)
        self.seen = self.stream.version
        return changed


def attach_listener(stream: SessionStream, fn: ProgressFn | None) -> Callable[[], None]:
    """Add a progress callback; returns the function that removes it."""
    if fn is None:
        return lambda: None
    stream.listeners.append(fn)

    def detach() -> None:
        if fn in stream.listeners:
            stream.listeners.remove(fn)

    return detach
