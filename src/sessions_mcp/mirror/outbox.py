"""The mirror worker: copies local sessions to the Factory web app through a durable outbox.

The local write always comes first and never waits for the web app. A change-feed listener
only records "this session changed" in the store's outbox (one small durable write); a
background task then brings the remote copy up to date from the local data: create the
session (local id and title), update the title, then send every message after the last one
mirrored, each with ``parent`` = the previous one. Progress is saved after every remote step, so
a crash or a failure repeats nothing that landed; failures are retried with exponential backoff
(capped), and ``sessions-mcp doctor`` shows pending/failed counts and the last error.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from ..diagnostics import Check
from ..errors import RateLimited, SessionsError
from ..store.base import Change, MirrorRow, Store, now_ms
from .factory_app import FactoryAppClient

if TYPE_CHECKING:
    from ..store.feed import ChangeFeed

log = logging.getLogger(__name__)

FAILED_AFTER = 5
"""Attempts after which a session counts as failed (it is still retried, at the longest backoff)."""


class Mirror:
    """Mirrors local sessions into the Factory web app."""

    BACKOFF_INITIAL_S = 2.0
    BACKOFF_MAX_S = 300.0
    LEASE_MS = 120_000
    IDLE_CHECK_S = 30.0

    def __init__(self, store: Store, client: FactoryAppClient) -> None:
        self.store = store
        self.client = client
        self._wake = anyio.Event()
        self._remove_listener: object = None
        self.synced = 0
        """Sessions brought up to date by this process (for tests and diagnostics)."""
        self.idle = anyio.Event()
        """Set whenever the worker finds nothing due (tests wait on it)."""

    # --- wiring -------------------------------------------------------------------------------

    async def start(self, feed: ChangeFeed, tg: TaskGroup) -> None:
        """Listen to the change feed and run the worker in ``tg``."""
        self._remove_listener = feed.add_listener(self.on_change)
        tg.start_soon(self._run)

    async def on_change(self, change: Change) -> None:
        """Feed listener: record the change durably; never raises, never calls the network."""
        try:
            if change.kind == "deleted":
                await self.store.mirror_forget(change.session_id)
                return
            if change.kind not in ("created", "message", "renamed"):
                return
            await self.store.mirror_enqueue(change.session_id, change.owner)
        except Exception:
            log.warning("mirror: could not record a change of %s in the outbox", change.session_id, exc_info=True)
            return
        self._wake.set()

    # --- the worker ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self.run_once()
                    delay = await self._until_next_due()
                except Exception:
                    log.warning("mirror: outbox unavailable; retrying", exc_info=True)
                    delay = 5.0
                self.idle.set()
                with anyio.move_on_after(delay):
                    await self._wake.wait()
                self.idle = anyio.Event()
        finally:
            with anyio.CancelScope(shield=True):
                await self.client.aclose()

    async def run_once(self) -> int:
        """Sync every due session once; returns how many were attempted."""
        self._wake = anyio.Event()  # a change recorded from here on wakes the next round
        done = 0
        while True:
            rows = await self.store.mirror_claim(lease_ms=self.LEASE_MS)
            if not rows:
                return done
            for row in rows:
                await self.sync(row)
                done += 1

    async def _until_next_due(self) -> float:
        due = await self.store.mirror_next_due()
        if due is None:
            return self.IDLE_CHECK_S
        return min(max((due - now_ms()) / 1000, 0.05), self.IDLE_CHECK_S)

    def _backoff(self, attempts: int, exc: SessionsError) -> float:
        delay = min(self.BACKOFF_INITIAL_S * 2 ** max(attempts - 1, 0), self.BACKOFF_MAX_S)
        if isinstance(exc, RateLimited) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self.BACKOFF_MAX_S))
        return delay * random.uniform(0.8, 1.2)

    async def sync(self, row: MirrorRow) -> bool:
        """Bring one session's remote copy up to date; False when it failed (and was rescheduled)."""
        sid = row.session_id
        try:
            session = await self.store.get_session(row.owner, sid)
            if session is None:
                await self.store.mirror_forget(sid)
                return True
            title = session.title or "New Session"
            if not row.created:
                await self.client.create_session(sid, title)
                await self.store.mirror_progress(sid, created=True, title=title)
                row.created, row.title = True, title
            if session.title and session.title != row.title:
                await self.client.update_title(sid, session.title)
                await self.store.mirror_progress(sid, title=session.title)
                row.title = session.title
            while True:
                listed = await self.store.list_messages(row.owner, sid, after_seq=row.sent_seq, limit=100)
                if listed is None:
                    await self.store.mirror_forget(sid)
                    return True
                _, messages, more = listed
                for m in messages:
                    if m.role in ("user", "assistant") and m.text.strip():
                        await self.client.create_message(
                            sid, role=m.role, message_id=m.id, text=m.text, parent=row.parent
                        )
                        row.parent = m.id
                    row.sent_seq = m.seq
                    await self.store.mirror_progress(sid, sent_seq=m.seq, parent=row.parent)
                if not more:
                    break
            await self.store.mirror_done(sid, row.version)
            self.synced += 1
            return True
        except SessionsError as exc:
            attempts = row.attempts + 1
            delay = self._backoff(attempts, exc)
            text = self.client.redact(str(exc))
            level = logging.WARNING if attempts in (1, FAILED_AFTER) else logging.DEBUG
            log.log(
                level,
                "mirror: session %s not mirrored yet (attempt %d, retry in %.0fs): %s",
                sid,
                attempts,
                delay,
                text,
            )
            await self.store.mirror_failed(sid, text, retry_at_ms=now_ms() + int(delay * 1000))
            return False

    # --- diagnostics --------------------------------------------------------------------------

    async def diagnose(self) -> list[Check]:
        """Pending and failed counts of the outbox."""
        return await outbox_checks(self.store)


async def outbox_checks(store: Store) -> list[Check]:
    """Checks of the outbox through the store (opens it)."""
    try:
        stats = await store.mirror_stats(failed_after=FAILED_AFTER)
    except NotImplementedError:
        return [Check("mirror: outbox", "warn", "this store has no mirror outbox", "use the SQLite store")]
    except Exception as exc:
        return [Check("mirror: outbox", "fail", f"cannot read the outbox: {exc}", "check SESSIONS_MCP_LOCAL__DB")]
    return [stats_check(stats.pending, stats.failed, stats.mirrored, stats.last_error)]


def stats_check(pending: int, failed: int, mirrored: int, last_error: str | None) -> Check:
    """One doctor line from outbox counts."""
    detail = f"{mirrored} session(s) mirrored, {pending} pending, {failed} failing"
    if failed:
        return Check(
            "mirror: outbox",
            "fail",
            f"{detail}; last error: {last_error}",
            "fix what the error names (SESSIONS_MCP_FACTORY_APP__TOKEN / __BASE_URL); the server retries by itself",
        )
    if pending and last_error:
        return Check("mirror: outbox", "warn", f"{detail}; retrying after: {last_error}")
    return Check("mirror: outbox", "ok", detail)
