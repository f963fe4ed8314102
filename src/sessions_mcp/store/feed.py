"""Change feed: wakes waiters and subscribers when a session changes, in this process or another.

Writes made in this process are published directly (``publish``), so a waiter in the same
process wakes at once. Writes made by other processes sharing the store are found by a
follower task that waits for the engine to hear of another process's commit (SQLite: a wake-up
socket the writer pokes, :mod:`.wakeup`; PostgreSQL: ``NOTIFY``), or at worst polls every
``poll_interval`` seconds, then asks the store's cheap "did anyone else commit?" check and reads
the change log. The follower runs only while somebody waits or listens; with nobody interested
nothing waits or polls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from anyio.abc import TaskGroup

from .base import Change, Store

log = logging.getLogger(__name__)

Listener = Callable[[Change], Awaitable[None]]
IMPATIENT_S = 60.0


class Ticket:
    """Taken before reading state; :meth:`wait` returns once anything changed since it was taken."""

    __slots__ = ("_event",)

    def __init__(self, event: anyio.Event) -> None:
        self._event = event

    async def wait(self, timeout: float) -> bool:
        """True when a change happened, False on timeout."""
        with anyio.move_on_after(max(timeout, 0)):
            await self._event.wait()
            return True
        return False


class ChangeFeed:
    """Fan-out of :class:`Change` events for one store."""

    def __init__(self, store: Store, *, poll_interval: float = 0.1) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._events: dict[str, anyio.Event] = {}
        self._listeners: list[Listener] = []
        self._interest = 0
        self._tg: TaskGroup | None = None
        self._follower_running = False
        self._wake_follower = anyio.Event()
        self._last_seq = 0
        self._last_prune = time.monotonic()
        self._impatient_until = 0.0

    async def start(self, tg: TaskGroup) -> None:
        """Remember the task group the follower will run in."""
        self._tg = tg
        try:
            self._last_seq = await self.store.last_change()
        except Exception:  # the store may be unavailable now; the follower retries later
            log.warning("change feed: cannot read the change log yet", exc_info=True)

    @property
    def interest(self) -> int:
        """Number of waits and listeners keeping the follower alive (for tests)."""
        return self._interest

    @property
    def following(self) -> bool:
        """Whether the cross-process follower task is running."""
        return self._follower_running

    @property
    def impatient(self) -> bool:
        """Whether another process was seen committing without waking us, so the feed polls again."""
        return time.monotonic() < self._impatient_until

    def ticket(self, session_id: str | None = None) -> Ticket:
        """A ticket for changes to ``session_id`` (or to any session when None)."""
        key = session_id or "*"
        event = self._events.get(key)
        if event is None:
            event = self._events[key] = anyio.Event()
        return Ticket(event)

    @asynccontextmanager
    async def interested(self) -> AsyncGenerator[None, None]:
        """Keep the cross-process follower running while inside."""
        self._interest += 1
        self._ensure_follower()
        try:
            yield
        finally:
            self._interest -= 1

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` for every change; returns a function that removes it."""
        self._listeners.append(listener)
        self._interest += 1
        self._ensure_follower()

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)
                self._interest -= 1

        return remove

    async def publish(self, change: Change) -> None:
        """Announce a change made by this process."""
        self._fire(change.session_id)
        await self._tell_listeners(change)

    async def _tell_listeners(self, change: Change) -> None:
        for listener in list(self._listeners):
            try:
                await listener(change)
            except Exception:
                log.exception("change listener failed")

    def _fire(self, session_id: str) -> None:
        for key in (session_id, "*"):
            event = self._events.pop(key, None)
            if event is not None:
                event.set()

    def _ensure_follower(self) -> None:
        if self._follower_running or self._tg is None:
            return
        self._follower_running = True
        self._tg.start_soon(self._follow)

    async def _follow(self) -> None:
        try:
            while self._interest > 0:
                patient = time.monotonic() >= self._impatient_until
                woken = await self.store.wait_for_external(self.poll_interval, patient=patient)
                try:
                    foreign = await self._poll_once()
                    if foreign and not woken:
                        # another process commits without waking us (another user, an older
                        # version): poll every poll_interval again for a while, as before wake-ups
                        self._impatient_until = time.monotonic() + IMPATIENT_S
                except Exception:
                    log.warning("change feed: polling the store failed; retrying", exc_info=True)
                    await anyio.sleep(1.0)
        finally:
            self._follower_running = False

    async def _poll_once(self) -> int:
        """Fire the changes other processes made since the last look; how many there were."""
        foreign = 0
        if not await self.store.external_write_seen():
            return 0
        while True:
            changes = await self.store.changes_since(self._last_seq)
            if not changes:
                break
            self._last_seq = changes[-1].seq
            for change in changes:
                if change.writer == self.store.writer_id:
                    continue  # published already when we wrote it
                foreign += 1
                self._fire(change.session_id)
                await self._tell_listeners(change)
            if len(changes) < 1000:
                break
        if time.monotonic() - self._last_prune > 600:
            self._last_prune = time.monotonic()
            await self.store.prune_changes()
        return foreign
