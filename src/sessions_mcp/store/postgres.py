"""The PostgreSQL store, for several stateless replicas sharing one database.

Same guarantees as :mod:`.sqlite`, with these mechanisms:

- **Driver**: psycopg 3 (async) with ``psycopg_pool``. Chosen over asyncpg because it is fully
  typed (pyright strict), goes through libpq (so every libpq connection option, ``sslmode``,
  ``PGPASSFILE`` and service files work as operators expect), has a maintained pool with
  connection health checks, and first-class ``LISTEN/NOTIFY`` (``AsyncConnection.notifies``).
  It is imported only by this module, which is imported only for ``postgresql://`` URLs.
- **Ordering**: an append locks its session row (``SELECT ... FOR UPDATE``) and writes
  ``last_seq + 1``; the row lock is held until commit, so concurrent writers from any number of
  replicas get gap-free, unique seqs per session.
- **Migrations** are the shared named list (:mod:`.migrations`, PostgreSQL DDL), applied
  under a transaction-scoped advisory lock, so replicas that start together migrate once.
- **Change notifications**: every write inserts a ``changes`` row and calls ``pg_notify`` in the
  same statement (delivered at commit). One dedicated connection per process ``LISTEN``s and
  sets a flag that :meth:`PostgresStore.external_write_seen` returns, so the change feed's
  100 ms follower wakes waiters within one poll of a commit on another replica. While that
  connection is down the check answers True, so the feed falls back to reading the change log,
  and it answers True every 2 s anyway, so a lost notification only delays a wake-up.
- **Change log order**: ``changes.seq`` comes from a sequence, and transactions can commit
  out of seq order. :meth:`PostgresStore.changes_since` therefore returns only the gap-free
  prefix; a gap is skipped only once every transaction that was running when it was first seen
  has finished (snapshot ``xmin`` passed the recorded ``xmax``), i.e. its value was rolled back
  (or after :data:`GAP_PATIENCE_S`, since ``xmin`` also waits for other applications).
- **Agent turns** are claimed under the session row lock (exactly one replica wins) with leases
  on the database clock; the **mirror outbox** is leased with ``FOR UPDATE SKIP LOCKED``.
- The SQL of every concern is shared with SQLite (:mod:`.dialect` translates placeholders and
  the few spellings that differ); what is here is the engine: pool, listener, retries, errors.

Connecting and waiting for a pooled connection can be cancelled (``doctor`` and waits time
out); once a transaction has its connection it runs shielded to its end (as SQLite's worker
threads do), so a cancelled caller never leaves a half-finished transaction on a pooled
connection.
psycopg's async mode needs the asyncio event loop (anyio's default backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Sequence
from typing import Any, LiteralString, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import InvalidArgument, StoreBusy, StoreError, StoreUnavailable
from .base import Store
from .changes import CHANGES_AFTER
from .dialect import Body, Retry, Row, Tx, to_postgres
from .migrations import POSTGRES_MIGRATIONS, migrate
from .rows import TURN_LOST, Change, new_writer_id, this_host

__all__ = ["GAP_PATIENCE_S", "POSTGRES_MIGRATIONS", "PostgresStore", "redact_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

_RETRIES = 8
GAP_PATIENCE_S = 5.0
"""Longest wait for a missing change-log seq whose transaction may still commit."""


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for messages and ``doctor``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(?i)(password\s*=\s*)\S+", r"\1***", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostport}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _password_of(url: str) -> str | None:
    try:
        password = conninfo_to_dict(url).get("password")
    except Exception:  # malformed: still find it, so no error message can echo it
        try:
            password = urlsplit(url).password
        except ValueError:
            password = None
    return str(password) if password else None


class _PgTx:
    """:class:`~.dialect.Tx` on one psycopg connection."""

    __slots__ = ("channel", "conn", "writer")

    def __init__(self, conn: Conn, channel: str, writer: str) -> None:
        self.conn = conn
        self.channel = channel
        self.writer = writer

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return (await self.conn.execute(cast(LiteralString, to_postgres(sql)), args)).rowcount

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        return await (await self.conn.execute(cast(LiteralString, to_postgres(sql)), args)).fetchone()

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return await (await self.conn.execute(cast(LiteralString, to_postgres(sql)), args)).fetchall()

    async def script(self, sql: str) -> None:
        await self.conn.execute(sql.encode())  # several statements: simple query protocol

    async def log(self, sql: str, args: Sequence[Any]) -> None:
        # one statement: the change row, and a notification the replicas get when it commits
        notify = f"WITH c AS ({sql} RETURNING seq) SELECT pg_notify(?, ?) FROM c"
        await self.run(notify, (*args, self.channel, self.writer))


def _no_nul(*texts: str | None) -> None:
    for text in texts:
        if text is not None and "\x00" in text:
            raise InvalidArgument(
                "the text contains a NUL character (\\u0000), which PostgreSQL cannot store; remove it"
            )


class PostgresStore(Store):
    """PostgreSQL implementation of :class:`Store` (for replicas behind a load balancer)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout_s: float = 10.0,
        pool_timeout_s: float = 30.0,
    ) -> None:
        self._url = url
        self._password = _password_of(url)
        self.location = redact_url(url)
        self.writer_id = new_writer_id()
        self.pool_size = pool_size
        self.connect_timeout_s = connect_timeout_s
        self.pool_timeout_s = pool_timeout_s
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._open_lock: anyio.Lock | None = None
        self._channel = "sessions_mcp_changes"
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._notified = True
        self._wake: anyio.Event | None = None
        self.safety_poll_s = 2.0
        self._last_forced = time.monotonic()
        self._gaps: dict[int, tuple[int, float]] = {}
        """First missing change seq -> (snapshot xmax, monotonic time) when first seen (see :meth:`changes_since`)."""

    # errors --------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._password and len(self._password) >= 4:  # shorter ones would garble the message
            text = text.replace(self._password, "***")
        return text.replace(self._url, self.location)

    def _explain(self, exc: BaseException) -> StoreError:
        where = f"the PostgreSQL store {self.location!r}"
        msg = self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        if isinstance(exc, PoolTimeout):
            return StoreBusy(
                f"{where}: no database connection became free within {self.pool_timeout_s:g}s "
                "(the server is overloaded or unreachable); retry"
            )
        if isinstance(
            exc, Retry | pg_errors.SerializationFailure | pg_errors.DeadlockDetected | pg_errors.LockNotAvailable
        ):
            return StoreBusy(f"{where} stayed contended after retrying ({msg}); retry")
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return StoreUnavailable(
                f"{where} refused access ({msg}); grant the user rights on the database or schema, "
                "or set SESSIONS_MCP_LOCAL__DB to another URL"
            )
        if isinstance(exc, pg_errors.DiskFull):
            return StoreUnavailable(
                f"the disk of the PostgreSQL server behind {where} is full ({msg}): nothing was written. "
                "Free space on the database server (its data directory), then retry"
            )
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            return StoreUnavailable(f"{where} is read-only (a standby?); point SESSIONS_MCP_LOCAL__DB at the primary")
        if isinstance(exc, psycopg.OperationalError):
            return StoreUnavailable(
                f"cannot use {where} ({msg}); check that the server runs and accepts this user, "
                "or fix SESSIONS_MCP_LOCAL__DB"
            )
        if isinstance(exc, psycopg.ProgrammingError) and "invalid" in msg.lower() and "dsn" in msg.lower():
            return StoreUnavailable(f"SESSIONS_MCP_LOCAL__DB is not a valid PostgreSQL URL ({msg})")
        return StoreUnavailable(f"{where} failed: {msg}")

    # connection management -------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": True}
        try:
            if "connect_timeout" not in conninfo_to_dict(self._url):
                kwargs["connect_timeout"] = max(1, int(self.connect_timeout_s))
        except Exception:
            kwargs["connect_timeout"] = max(1, int(self.connect_timeout_s))
        kwargs["application_name"] = "sessions-mcp"
        return kwargs

    async def _connect(self) -> Conn:
        return await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs())

    async def _ensure_open(self) -> AsyncConnectionPool[Conn]:
        """Migrate and open the pool once; cancellable (a cancelled attempt leaves nothing open)."""
        if self._pool is not None:
            return self._pool
        if self._open_lock is None:
            self._open_lock = anyio.Lock()
        async with self._open_lock:
            if self._pool is not None:
                return self._pool
            pool: AsyncConnectionPool[Conn] | None = None
            try:
                conn = await self._connect()
                try:
                    schema = (await (await conn.execute("SELECT current_schema()")).fetchone() or ("public",))[0]
                    # one channel per schema, so deployments sharing a database do not wake each other
                    self._channel = "sessions_mcp_" + hashlib.sha256(str(schema).encode()).hexdigest()[:16]
                    async with conn.transaction():
                        # replicas starting together: the first migrates, the others wait here and find it done
                        await conn.execute(
                            "SELECT pg_advisory_xact_lock(hashtext('sessions_mcp.migrate:' || current_schema()))"
                        )
                        where = f"the PostgreSQL store {self.location!r}"
                        await migrate(
                            _PgTx(conn, self._channel, self.writer_id),
                            POSTGRES_MIGRATIONS,
                            where=where,
                            bigint="BIGINT",
                        )
                    # a turn whose process died (kill -9, power loss) must not stay "running" forever
                    async with conn.transaction():
                        await self._recover_turns(_PgTx(conn, self._channel, self.writer_id), this_host(), TURN_LOST)
                finally:
                    with anyio.CancelScope(shield=True):
                        await conn.close()
                pool = AsyncConnectionPool(
                    self._url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs=self._connect_kwargs(),
                    open=False,
                    check=AsyncConnectionPool.check_connection,
                    timeout=self.pool_timeout_s,
                    name="sessions-mcp",
                )
                await pool.open(wait=True, timeout=self.connect_timeout_s)
            except BaseException as exc:
                if pool is not None:
                    with anyio.CancelScope(shield=True):
                        await pool.close()
                if isinstance(exc, StoreError) or not isinstance(exc, Exception):
                    raise
                raise self._explain(exc) from None
            self._pool = pool
            self._notified = True
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="sessions-mcp-pg-listen")
            return pool

    async def open(self) -> None:
        await self._ensure_open()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            listener, self._listener = self._listener, None
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()
            self._listening = False

    async def _listen(self) -> None:
        """Follow ``NOTIFY`` from other replicas on a dedicated connection, reconnecting forever."""
        delay = 0.2
        while True:
            try:
                conn = await self._connect()
                async with conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._listening = True
                    self._notified = True  # anything may have happened while nobody listened
                    delay = 0.2
                    while True:
                        async for note in conn.notifies(timeout=30.0):
                            if note.payload != self.writer_id:
                                self._notified = True
                                if self._wake is not None:
                                    self._wake.set()
                        await conn.execute("SELECT 1")  # quiet for 30 s: make sure the link is alive
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "PostgreSQL store %s: change listener disconnected (%s); polling until it reconnects",
                    self.location,
                    self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__),
                )
            finally:
                self._listening = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _run(self, body: Body[T], *, write: bool, snapshot: bool = False) -> T:
        """Run ``body`` in one transaction, retrying serialization failures and deadlocks.

        Connecting and waiting for a free connection can be cancelled; once a connection is
        ours, the transaction runs shielded to its end (short: one write or one read).
        """
        delay = 0.005
        for attempt in range(_RETRIES):
            try:
                pool = await self._ensure_open()
                conn = await pool.getconn()
                with anyio.CancelScope(shield=True):
                    tx = _PgTx(conn, self._channel, self.writer_id)
                    try:
                        if write:
                            async with conn.transaction():
                                return await body(tx)
                        if snapshot:
                            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                            try:
                                return await body(tx)
                            finally:
                                await conn.execute("COMMIT")
                        return await body(tx)
                    finally:
                        await pool.putconn(conn)
            except (
                pg_errors.SerializationFailure,
                pg_errors.DeadlockDetected,
                pg_errors.UniqueViolation,
                Retry,
            ) as exc:
                # UniqueViolation: two replicas raced on a dedupe key; the retry finds the winner
                if attempt == _RETRIES - 1:
                    raise self._explain(exc) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.2)
            except (StoreError, InvalidArgument):
                raise
            except psycopg.Error as exc:  # PoolTimeout included
                raise self._explain(exc) from None
        raise AssertionError("unreachable")

    async def _write(self, body: Body[T]) -> T:
        return await self._run(body, write=True)

    async def _read(self, body: Body[T], *, consistent: bool = False) -> T:
        # several statements read one snapshot, as SQLite's read transaction gives
        return await self._run(body, write=False, snapshot=consistent)

    def _check_text(self, *texts: str | None) -> None:
        _no_nul(*texts)

    def _clean(self, text: str) -> str:
        return text.replace("\x00", "")

    async def changes_since(self, seq: int, *, limit: int = 1000) -> list[Change]:
        """Changes after ``seq``, oldest first, stopping before a seq that may still commit.

        A sequence value missing below a visible one belongs to a transaction that was still
        running when we looked, or that rolled back. We stop there and remember the snapshot's
        ``xmax``; once a later snapshot's ``xmin`` has passed it, every such transaction has
        ended, so a value still missing was rolled back and is skipped. ``xmin`` is cluster-wide,
        so a long transaction of another application could hold it back: a gap is also skipped
        after :data:`GAP_PATIENCE_S` (our change row is the last statement before ``COMMIT``, so
        its own transaction ends within milliseconds).
        """

        async def q(tx: Tx) -> tuple[list[Row], int, int]:
            rows = await tx.all(CHANGES_AFTER, (seq, limit))
            snap = await tx.one(
                "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text FROM pg_current_snapshot() s"
            )
            assert snap is not None
            return rows, int(snap[0]), int(snap[1])

        rows, xmin, xmax = await self._read(q, consistent=True)
        self._gaps = {g: t for g, t in self._gaps.items() if g > seq}
        out: list[Change] = []
        expected = seq + 1
        for r in rows:
            at = int(r[0])
            if at != expected:
                threshold, since = self._gaps.setdefault(expected, (xmax, time.monotonic()))
                if xmin < threshold and time.monotonic() - since < GAP_PATIENCE_S:
                    break  # the missing one may still commit; look again on the next poll
                self._gaps.pop(expected, None)
            out.append(Change(at, r[1], r[2], r[3], r[4]))
            expected = at + 1
        return out

    async def wait_for_external(self, fallback_s: float, *, patient: bool = True) -> bool:
        """At once after a ``NOTIFY`` from another replica; while the listener is down or a gap in the
        change log is pending (or not ``patient``), after ``fallback_s``; else after
        :attr:`safety_poll_s` at most."""
        if self._notified:
            return True
        timeout = fallback_s if (self._gaps or not self._listening or not patient) else self.safety_poll_s
        self._wake = wake = anyio.Event()
        with anyio.move_on_after(timeout):
            await wake.wait()
        return wake.is_set()

    async def external_write_seen(self) -> bool:
        """True after a ``NOTIFY`` from another replica, while the listener is down, while a gap
        in the change log is pending, and at least every :attr:`safety_poll_s` seconds: a
        notification lost on the way (a pooler in transaction mode, a reconnect) delays a
        wake-up by that much at worst, never forever."""
        if self._pool is None:
            await self._ensure_open()
        now = time.monotonic()
        due = now - self._last_forced >= self.safety_poll_s
        seen = self._notified or not self._listening or bool(self._gaps) or due
        if seen:
            self._last_forced = now
        self._notified = False
        return seen

    # diagnostics ----------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        async def q(tx: Tx) -> dict[str, Any]:
            names = [r[0] for r in await tx.all("SELECT name FROM schema_migrations ORDER BY name")]
            counts = await tx.one(
                "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM messages),"
                " current_setting('server_version'), current_schema(), pg_database_size(current_database())"
            )
            assert counts is not None
            return {
                "migrations": names,
                "sessions": int(counts[0]),
                "messages": int(counts[1]),
                "server_version": counts[2],
                "schema": counts[3],
                "size_bytes": int(counts[4]),
            }

        facts = await self._read(q)
        pool = self._pool
        stats = pool.get_stats() if pool is not None else {}
        facts.update(
            kind="postgres",
            location=self.location,
            schema_version=facts["migrations"][-1] if facts["migrations"] else None,
            known_migrations=[n for n, _ in POSTGRES_MIGRATIONS],
            listening=self._listening,
            pool={k: stats[k] for k in ("pool_min", "pool_max", "pool_size", "pool_available") if k in stats},
        )
        return facts
