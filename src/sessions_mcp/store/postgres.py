"""The PostgreSQL store, for several stateless replicas sharing one database.

Same guarantees as :mod:`.sqlite`, with these mechanisms:

- **Driver**: psycopg 3 (async) with ``psycopg_pool``. Chosen over asyncpg because it is fully
  typed (pyright strict), goes through libpq (so every libpq connection option, ``sslmode``,
  ``PGPASSFILE`` and service files work as operators expect), has a maintained pool with
  connection health checks, and first-class ``LISTEN/NOTIFY`` (``AsyncConnection.notifies``).
  It is imported only by this module, which is imported only for ``postgresql://`` URLs.
- **Ordering**: a message's seq is allocated by ``UPDATE sessions SET last_seq = last_seq + 1
  ... RETURNING``; the row lock is held until commit, so concurrent writers from any number of
  replicas get gap-free, unique seqs per session.
- **Migrations** are named like the SQLite ones (same names, PostgreSQL SQL), recorded in
  ``schema_migrations`` and applied under a transaction-scoped advisory lock, so replicas that
  start together migrate once.
- **Change notifications**: every write inserts a ``changes`` row and calls ``pg_notify`` in the
  same transaction (delivered at commit). One dedicated connection per process ``LISTEN``s and
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
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, LiteralString, TypeVar
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..errors import InvalidArgument, SchemaTooNew, StoreBusy, StoreError, StoreUnavailable
from ..ids import new_message_id, new_native_id
from ..models import Role, Status
from .base import (
    TURN_LOST,
    Change,
    IdemRecord,
    MessageRow,
    MirrorRow,
    MirrorStats,
    SessionRow,
    Store,
    claim_is_dead,
    new_writer_id,
    now_ms,
    this_host,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

POSTGRES_MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE sessions (
            id            TEXT COLLATE "C" PRIMARY KEY,
            owner         TEXT COLLATE "C" NOT NULL,
            title         TEXT,
            status        TEXT NOT NULL,
            error         TEXT,
            model         TEXT,
            system        TEXT,
            agent         TEXT,
            created_at    BIGINT NOT NULL,
            updated_at    BIGINT NOT NULL,
            last_seq      BIGINT NOT NULL DEFAULT 0,
            message_count BIGINT NOT NULL DEFAULT 0,
            dedupe_key    TEXT UNIQUE
        );
        CREATE INDEX sessions_by_owner ON sessions (owner, updated_at DESC, id DESC);
        CREATE INDEX sessions_by_status ON sessions (status, updated_at DESC);

        CREATE TABLE messages (
            session_id  TEXT COLLATE "C" NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            seq         BIGINT NOT NULL,
            id          TEXT NOT NULL UNIQUE,
            role        TEXT NOT NULL,
            text        TEXT NOT NULL,
            parts       TEXT NOT NULL,
            created_at  BIGINT NOT NULL,
            dedupe_key  TEXT UNIQUE,
            PRIMARY KEY (session_id, seq)
        );

        CREATE TABLE changes (
            seq         BIGSERIAL PRIMARY KEY,
            session_id  TEXT NOT NULL,
            owner       TEXT NOT NULL,
            kind        TEXT NOT NULL,
            writer      TEXT NOT NULL,
            at          BIGINT NOT NULL
        );
        CREATE INDEX changes_by_at ON changes (at);

        CREATE TABLE idempotency (
            principal   TEXT NOT NULL,
            tool        TEXT NOT NULL,
            key         TEXT NOT NULL,
            params_hash TEXT NOT NULL,
            state       TEXT NOT NULL,
            result      TEXT,
            created_at  BIGINT NOT NULL,
            updated_at  BIGINT NOT NULL,
            PRIMARY KEY (principal, tool, key)
        );
        CREATE INDEX idempotency_by_updated ON idempotency (updated_at);
        """,
    ),
    (
        "0002_agent_turns",
        # lease_until is in the database's clock (not the replica's), so skewed replicas agree
        """
        CREATE TABLE agent_turns (
            session_id  TEXT COLLATE "C" PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
            owner       TEXT NOT NULL,
            done_seq    BIGINT NOT NULL DEFAULT 0,
            upto_seq    BIGINT NOT NULL DEFAULT 0,
            runner      TEXT,
            pid         INTEGER,
            host        TEXT,
            lease_until BIGINT NOT NULL DEFAULT 0,
            started_at  BIGINT
        );
        CREATE INDEX agent_turns_by_runner ON agent_turns (runner);
        """,
    ),
    (
        "0003_mirror_outbox",
        """
        CREATE TABLE mirror_outbox (
            session_id     TEXT COLLATE "C" PRIMARY KEY,
            owner          TEXT NOT NULL,
            version        BIGINT NOT NULL DEFAULT 1,
            synced_version BIGINT NOT NULL DEFAULT 0,
            created        INTEGER NOT NULL DEFAULT 0,
            title          TEXT,
            sent_seq       BIGINT NOT NULL DEFAULT 0,
            parent         TEXT NOT NULL DEFAULT 'root',
            attempts       INTEGER NOT NULL DEFAULT 0,
            next_at        BIGINT NOT NULL DEFAULT 0,
            lease_until    BIGINT NOT NULL DEFAULT 0,
            last_error     TEXT,
            updated_at     BIGINT NOT NULL
        );
        CREATE INDEX mirror_outbox_due ON mirror_outbox (next_at);
        """,
    ),
    (
        "0005_tasks",
        """
        CREATE TABLE tasks (
            id             TEXT COLLATE "C" PRIMARY KEY,
            owner          TEXT NOT NULL,
            tool           TEXT NOT NULL,
            session_id     TEXT NOT NULL,
            era            TEXT NOT NULL,
            status         TEXT NOT NULL,
            status_message TEXT,
            first          TEXT NOT NULL,
            max_chars      INTEGER NOT NULL,
            result         TEXT,
            error          TEXT,
            created_at     BIGINT NOT NULL,
            updated_at     BIGINT NOT NULL,
            ttl_ms         BIGINT NOT NULL
        );
        CREATE INDEX tasks_by_owner ON tasks (owner, created_at DESC, id DESC);
        CREATE INDEX tasks_by_session ON tasks (session_id, status);
        """,
    ),
]
"""Named migrations for PostgreSQL; the names match :data:`~.migrations.SQLITE_MIGRATIONS` one to one."""

_SESSION_COLS: LiteralString = (
    "id, owner, title, status, error, model, system, agent, created_at, updated_at, last_seq, message_count"
)
_MESSAGE_COLS: LiteralString = "session_id, seq, id, role, text, parts, created_at"
_RETRIES = 8
GAP_PATIENCE_S = 5.0
"""Longest wait for a missing change-log seq whose transaction may still commit."""
_DB_NOW: LiteralString = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"


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


def _session(row: Sequence[Any]) -> SessionRow:
    return SessionRow(
        id=row[0],
        owner=row[1],
        title=row[2],
        status=Status(row[3]),
        error=row[4],
        model=row[5],
        system=row[6],
        agent=row[7],
        created_at=int(row[8]),
        updated_at=int(row[9]),
        last_seq=int(row[10]),
        message_count=int(row[11]),
    )


def _message(row: Sequence[Any]) -> MessageRow:
    return MessageRow(
        session_id=row[0],
        seq=int(row[1]),
        id=row[2],
        role=row[3],
        text=row[4],
        parts=json.loads(row[5]),
        created_at=int(row[6]),
    )


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
        if isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected | pg_errors.LockNotAvailable):
            return StoreBusy(f"{where} stayed contended after retrying ({msg}); retry")
        if isinstance(exc, pg_errors.InsufficientPrivilege):
            return StoreUnavailable(
                f"{where} refused access ({msg}); grant the user rights on the database or schema, "
                "or set SESSIONS_MCP_LOCAL__DB to another URL"
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
                    await self._migrate(conn)
                    # a turn whose process died (kill -9, power loss) must not stay "running" forever
                    async with conn.transaction():
                        await self._recover_turns(conn, this_host(), TURN_LOST)
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

    async def _migrate(self, conn: Conn) -> None:
        async with conn.transaction():
            # replicas starting together: the first migrates, the others wait here and find it done
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sessions_mcp.migrate:' || current_schema()))")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)"
            )
            applied = {r[0] for r in await (await conn.execute("SELECT name FROM schema_migrations")).fetchall()}
            known = [name for name, _ in POSTGRES_MIGRATIONS]
            unknown = sorted(applied - set(known))
            if unknown:
                raise SchemaTooNew(
                    f"the PostgreSQL store {self.location!r} was written by a newer sessions-mcp "
                    f"(migration {unknown[-1]!r} is unknown to this version); upgrade sessions-mcp "
                    "or set SESSIONS_MCP_LOCAL__DB to another database"
                )
            for name, text in POSTGRES_MIGRATIONS:
                if name in applied:
                    continue
                await conn.execute(text.encode())  # several statements: simple query protocol
                await conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (%s, %s)", (name, now_ms()))
                log.info("applied migration %s to %s", name, self.location)

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

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, write: bool, snapshot: bool = False) -> T:
        """Run ``fn`` in one transaction, retrying serialization failures and deadlocks.

        Connecting and waiting for a free connection can be cancelled; once a connection is
        ours, the transaction runs shielded to its end (short: one write or one read).
        """
        delay = 0.005
        for attempt in range(_RETRIES):
            try:
                pool = await self._ensure_open()
                conn = await pool.getconn()
                with anyio.CancelScope(shield=True):
                    try:
                        if write:
                            async with conn.transaction():
                                return await fn(conn)
                        if snapshot:
                            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                            try:
                                return await fn(conn)
                            finally:
                                await conn.execute("COMMIT")
                        return await fn(conn)
                    finally:
                        await pool.putconn(conn)
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected, pg_errors.UniqueViolation) as exc:
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

    async def _write(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        return await self._run(fn, write=True)

    async def _read(self, fn: Callable[[Conn], Awaitable[T]], *, snapshot: bool = False) -> T:
        return await self._run(fn, write=False, snapshot=snapshot)

    async def _log_change(self, conn: Conn, session_id: str, owner: str, kind: str) -> None:
        await conn.execute(
            "WITH c AS (INSERT INTO changes (session_id, owner, kind, writer, at) VALUES (%s, %s, %s, %s, %s)"
            " RETURNING seq) SELECT pg_notify(%s, %s) FROM c",
            (session_id, owner, kind, self.writer_id, now_ms(), self._channel, self.writer_id),
        )

    # sessions ------------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        owner: str,
        title: str | None,
        model: str | None,
        system: str | None,
        agent: str | None,
        status: Status,
        first_message: tuple[Role, list[dict[str, Any]], str] | None = None,
        dedupe_key: str | None = None,
    ) -> tuple[SessionRow, list[MessageRow]]:
        _no_nul(title, model, system, first_message[2] if first_message else None)

        async def tx(conn: Conn) -> tuple[SessionRow, list[MessageRow]]:
            if dedupe_key is not None:
                row = await (
                    await conn.execute(f"SELECT {_SESSION_COLS} FROM sessions WHERE dedupe_key = %s", (dedupe_key,))
                ).fetchone()
                if row is not None:
                    firsts = await (
                        await conn.execute(
                            f"SELECT {_MESSAGE_COLS} FROM messages WHERE session_id = %s AND seq = 1", (row[0],)
                        )
                    ).fetchall()
                    return _session(row), [_message(m) for m in firsts]
            ts = now_ms()
            sid = new_native_id()
            seq = 1 if first_message else 0
            await conn.execute(
                "INSERT INTO sessions (id, owner, title, status, model, system, agent, created_at, updated_at,"
                " last_seq, message_count, dedupe_key) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (sid, owner, title, status.value, model, system, agent, ts, ts, seq, seq, dedupe_key),
            )
            msgs: list[MessageRow] = []
            if first_message:
                role, parts, text = first_message
                mid = new_message_id()
                await conn.execute(
                    "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at)"
                    " VALUES (%s, 1, %s, %s, %s, %s, %s)",
                    (sid, mid, role, text, json.dumps(parts), ts),
                )
                msgs.append(MessageRow(sid, 1, mid, role, text, parts, ts))
            await self._log_change(conn, sid, owner, "created")
            session = SessionRow(sid, owner, title, status, None, model, system, agent, ts, ts, seq, seq)
            return session, msgs

        return await self._write(tx)

    async def get_session(self, owner: str, session_id: str) -> SessionRow | None:
        async def q(conn: Conn) -> SessionRow | None:
            row = await (
                await conn.execute(
                    f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s AND owner = %s", (session_id, owner)
                )
            ).fetchone()
            return _session(row) if row else None

        return await self._read(q)

    async def list_sessions(
        self,
        owner: str,
        *,
        statuses: Sequence[Status] | None,
        query: str | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[SessionRow]:
        text: list[LiteralString] = [f"SELECT {_SESSION_COLS} FROM sessions WHERE owner = %s"]
        args: list[Any] = [owner]
        if statuses:
            text.append("AND status = ANY(%s)")
            args.append([s.value for s in statuses])
        if query:
            text.append("AND (strpos(lower(coalesce(title, '')), lower(%s)) > 0 OR id = %s)")
            args.extend([query.replace("\x00", ""), query.replace("\x00", "")])
        if after is not None:
            text.append("AND (updated_at < %s OR (updated_at = %s AND id < %s))")
            args.extend([after[0], after[0], after[1].replace("\x00", "")])
        text.append("ORDER BY updated_at DESC, id DESC LIMIT %s")
        args.append(limit)
        statement = " ".join(text)

        async def q(conn: Conn) -> list[SessionRow]:
            return [_session(r) for r in await (await conn.execute(statement, args)).fetchall()]

        return await self._read(q)

    async def update_session(
        self,
        owner: str,
        session_id: str,
        *,
        title: str | None = None,
        status: Status | None = None,
        error: str | None = None,
        clear_error: bool = False,
    ) -> SessionRow | None:
        _no_nul(title, error)

        async def tx(conn: Conn) -> SessionRow | None:
            row = await (
                await conn.execute(
                    f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s AND owner = %s FOR UPDATE",
                    (session_id, owner),
                )
            ).fetchone()
            if row is None:
                return None
            cur = _session(row)
            new_title = cur.title if title is None else title
            new_status = cur.status if status is None else status
            new_error = None if clear_error else (cur.error if error is None else error)
            if (new_title, new_status, new_error) == (cur.title, cur.status, cur.error):
                return cur
            ts = max(now_ms(), cur.updated_at)
            await conn.execute(
                "UPDATE sessions SET title = %s, status = %s, error = %s, updated_at = %s WHERE id = %s",
                (new_title, new_status.value, new_error, ts, session_id),
            )
            kind = "renamed" if new_title != cur.title else "status"
            await self._log_change(conn, session_id, owner, kind)
            return SessionRow(
                cur.id, cur.owner, new_title, new_status, new_error, cur.model, cur.system, cur.agent,
                cur.created_at, ts, cur.last_seq, cur.message_count,
            )  # fmt: skip

        return await self._write(tx)

    async def delete_session(self, owner: str, session_id: str) -> bool:
        async def tx(conn: Conn) -> bool:
            cur = await conn.execute("DELETE FROM sessions WHERE id = %s AND owner = %s", (session_id, owner))
            if cur.rowcount:
                await self._log_change(conn, session_id, owner, "deleted")
            return cur.rowcount > 0

        return await self._write(tx)

    # messages ------------------------------------------------------------------------------

    async def append_message(
        self,
        owner: str,
        session_id: str,
        *,
        role: Role,
        parts: list[dict[str, Any]],
        text: str,
        new_status: Status | None,
        error: str | None = None,
        dedupe_key: str | None = None,
        unanswered_after_seq: int | None = None,
    ) -> tuple[SessionRow, MessageRow] | None:
        _no_nul(text, error)
        parts_json = json.dumps(parts)

        async def tx(conn: Conn) -> tuple[SessionRow, MessageRow] | None:
            if dedupe_key is not None:
                # lock the session first: two replicas appending with the same key serialize here
                row = await (
                    await conn.execute(
                        f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s AND owner = %s FOR UPDATE",
                        (session_id, owner),
                    )
                ).fetchone()
                if row is None:
                    return None
                old = await (
                    await conn.execute(f"SELECT {_MESSAGE_COLS} FROM messages WHERE dedupe_key = %s", (dedupe_key,))
                ).fetchone()
                if old is not None:
                    return _session(row), _message(old)
            status = new_status
            if new_status is Status.IDLE and unanswered_after_seq is not None:
                # lock the session first so a user message committing concurrently is seen or waits
                locked = await (
                    await conn.execute(
                        "SELECT 1 FROM sessions WHERE id = %s AND owner = %s FOR UPDATE", (session_id, owner)
                    )
                ).fetchone()
                if locked is None:
                    return None
                newer = await (
                    await conn.execute(
                        "SELECT 1 FROM messages WHERE session_id = %s AND seq > %s AND role = 'user' LIMIT 1",
                        (session_id, unanswered_after_seq),
                    )
                ).fetchone()
                if newer is not None:
                    status = Status.AWAITING_REPLY
            # the row lock taken here is held until commit: seqs are unique and gap-free per session
            row = await (
                await conn.execute(
                    "UPDATE sessions SET last_seq = last_seq + 1, message_count = message_count + 1,"
                    " updated_at = GREATEST(%s, updated_at), status = COALESCE(%s, status),"
                    " error = CASE WHEN COALESCE(%s, status) = 'failed' THEN %s ELSE NULL END"
                    f" WHERE id = %s AND owner = %s RETURNING {_SESSION_COLS}",
                    (
                        now_ms(),
                        status.value if status else None,
                        status.value if status else None,
                        error,
                        session_id,
                        owner,
                    ),
                )
            ).fetchone()
            if row is None:
                return None
            session = _session(row)
            mid = new_message_id()
            await conn.execute(
                "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at, dedupe_key)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (session_id, session.last_seq, mid, role, text, parts_json, session.updated_at, dedupe_key),
            )
            await self._log_change(conn, session_id, owner, "message")
            return session, MessageRow(session_id, session.last_seq, mid, role, text, parts, session.updated_at)

        return await self._write(tx)

    async def list_messages(
        self,
        owner: str,
        session_id: str,
        *,
        after_seq: int,
        limit: int,
        roles: Sequence[Role] | None = None,
    ) -> tuple[SessionRow, list[MessageRow], bool] | None:
        statement = f"SELECT {_MESSAGE_COLS} FROM messages WHERE session_id = %s AND seq > %s"
        args: list[Any] = [session_id, after_seq]
        if roles:
            statement += " AND role = ANY(%s)"
            args.append(list(roles))
        statement += " ORDER BY seq LIMIT %s"
        args.append(limit + 1)

        async def q(conn: Conn) -> tuple[SessionRow, list[MessageRow], bool] | None:
            row = await (
                await conn.execute(
                    f"SELECT {_SESSION_COLS} FROM sessions WHERE id = %s AND owner = %s", (session_id, owner)
                )
            ).fetchone()
            if row is None:
                return None
            rows = [_message(r) for r in await (await conn.execute(statement, args)).fetchall()]
            return _session(row), rows[:limit], len(rows) > limit

        # one snapshot for the session row and its messages, as SQLite's read transaction gives
        return await self._read(q, snapshot=True)

    # idempotency ----------------------------------------------------------------------------

    async def idem_claim(
        self, principal: str, tool: str, key: str, params_hash: str, *, stale_after_ms: int
    ) -> IdemRecord | None:
        async def tx(conn: Conn) -> IdemRecord | None:
            ts = now_ms()
            inserted = await (
                await conn.execute(
                    "INSERT INTO idempotency (principal, tool, key, params_hash, state, created_at, updated_at)"
                    " VALUES (%s, %s, %s, %s, 'pending', %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                    (principal, tool, key, params_hash, ts, ts),
                )
            ).fetchone()
            if inserted is not None:
                return None
            row = await (
                await conn.execute(
                    "SELECT params_hash, state, result, updated_at FROM idempotency"
                    " WHERE principal = %s AND tool = %s AND key = %s FOR UPDATE",
                    (principal, tool, key),
                )
            ).fetchone()
            if row is None:  # released between our insert attempt and this read: retry the claim
                raise pg_errors.SerializationFailure("idempotency record vanished")
            rec = IdemRecord(params_hash=row[0], state=row[1], result=row[2], updated_at=int(row[3]))
            if rec.state == "pending" and rec.params_hash == params_hash and ts - rec.updated_at > stale_after_ms:
                await conn.execute(
                    "UPDATE idempotency SET updated_at = %s WHERE principal = %s AND tool = %s AND key = %s",
                    (ts, principal, tool, key),
                )
                return None
            return rec

        return await self._write(tx)

    async def idem_complete(self, principal: str, tool: str, key: str, result: str) -> None:
        _no_nul(result)

        async def tx(conn: Conn) -> None:
            await conn.execute(
                "UPDATE idempotency SET state = 'done', result = %s, updated_at = %s"
                " WHERE principal = %s AND tool = %s AND key = %s",
                (result, now_ms(), principal, tool, key),
            )
            # keys live at least 24 h; prune older ones while we are writing anyway
            await conn.execute("DELETE FROM idempotency WHERE updated_at < %s", (now_ms() - 7 * 86_400_000,))

        await self._write(tx)

    async def idem_release(self, principal: str, tool: str, key: str) -> None:
        async def tx(conn: Conn) -> None:
            await conn.execute(
                "DELETE FROM idempotency WHERE principal = %s AND tool = %s AND key = %s AND state = 'pending'",
                (principal, tool, key),
            )

        await self._write(tx)

    # change log -----------------------------------------------------------------------------

    async def last_change(self) -> int:
        async def q(conn: Conn) -> int:
            row = await (await conn.execute("SELECT coalesce(max(seq), 0) FROM changes")).fetchone()
            return int(row[0]) if row else 0

        return await self._read(q)

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

        async def q(conn: Conn) -> tuple[list[tuple[Any, ...]], int, int]:
            rows = await (
                await conn.execute(
                    "SELECT seq, session_id, owner, kind, writer FROM changes WHERE seq > %s ORDER BY seq LIMIT %s",
                    (seq, limit),
                )
            ).fetchall()
            snap = await (
                await conn.execute(
                    "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text FROM pg_current_snapshot() s"
                )
            ).fetchone()
            assert snap is not None
            return rows, int(snap[0]), int(snap[1])

        rows, xmin, xmax = await self._read(q, snapshot=True)
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

    async def prune_changes(self, older_than_ms: int = 3_600_000) -> None:
        """Drop change-log rows nobody can still need (followers poll every 100 ms)."""

        async def tx(conn: Conn) -> None:
            await conn.execute("DELETE FROM changes WHERE at < %s", (now_ms() - older_than_ms,))

        await self._write(tx)

    # diagnostics ----------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        async def q(conn: Conn) -> dict[str, Any]:
            names = [
                r[0] for r in await (await conn.execute("SELECT name FROM schema_migrations ORDER BY name")).fetchall()
            ]
            counts = await (
                await conn.execute(
                    "SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM messages),"
                    " current_setting('server_version'), current_schema(), pg_database_size(current_database())"
                )
            ).fetchone()
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

    # agent turns ----------------------------------------------------------------------------
    #
    # Lock order everywhere: the sessions row, then its agent_turns row (deadlocks are retried
    # anyway). The session row lock makes a claim atomic across replicas: of two replicas
    # claiming the same turn, the second sees the first's live claim and gets False.

    async def turn_claim(
        self, owner: str, session_id: str, *, upto_seq: int, runner: str, pid: int, host: str, lease_ms: int
    ) -> bool:
        async def tx(conn: Conn) -> bool:
            known = await (
                await conn.execute(
                    f"SELECT {_DB_NOW} FROM sessions WHERE id = %s AND owner = %s FOR UPDATE", (session_id, owner)
                )
            ).fetchone()
            if known is None:
                return False
            ts = int(known[0])
            row = await (
                await conn.execute(
                    "SELECT done_seq, runner, pid, host, lease_until FROM agent_turns WHERE session_id = %s FOR UPDATE",
                    (session_id,),
                )
            ).fetchone()
            if row is not None:
                done_seq, holder, claim_pid, claim_host, lease_until = row
                if holder is not None and not claim_is_dead(
                    claim_host=claim_host, claim_pid=claim_pid, lease_until=int(lease_until), host=host, now=ts
                ):
                    return False
                if int(done_seq) >= upto_seq:
                    return False
            await conn.execute(
                "INSERT INTO agent_turns (session_id, owner, upto_seq, runner, pid, host, lease_until, started_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (session_id) DO UPDATE SET"
                " upto_seq = excluded.upto_seq, runner = excluded.runner, pid = excluded.pid, host = excluded.host,"
                " lease_until = excluded.lease_until, started_at = excluded.started_at",
                (session_id, owner, upto_seq, runner, pid, host, ts + lease_ms, now_ms()),
            )
            return True

        return await self._write(tx)

    async def turn_heartbeat(self, runner: str, session_ids: Sequence[str], *, lease_ms: int) -> list[str]:
        ids = list(session_ids)
        if not ids:
            return []

        async def tx(conn: Conn) -> list[str]:
            await conn.execute(
                f"UPDATE agent_turns SET lease_until = {_DB_NOW} + %s WHERE runner = %s AND session_id = ANY(%s)",
                (lease_ms, runner, ids),
            )
            rows = await (
                await conn.execute(
                    "SELECT t.session_id FROM agent_turns t JOIN sessions s ON s.id = t.session_id"
                    " WHERE t.runner = %s AND s.status = %s AND t.session_id = ANY(%s)",
                    (runner, Status.RUNNING.value, ids),
                )
            ).fetchall()
            return [r[0] for r in rows]

        return await self._write(tx)

    async def turn_release(self, session_id: str, *, runner: str) -> int:
        async def tx(conn: Conn) -> int:
            await conn.execute(
                "UPDATE agent_turns SET done_seq = GREATEST(done_seq, upto_seq), runner = NULL, pid = NULL,"
                " host = NULL, lease_until = 0 WHERE session_id = %s AND runner = %s",
                (session_id, runner),
            )
            row = await (
                await conn.execute(
                    "SELECT max(seq) FROM messages WHERE session_id = %s AND role = 'user'", (session_id,)
                )
            ).fetchone()
            return int(row[0] or 0) if row else 0

        return await self._write(tx)

    async def _recover_turns(self, conn: Conn, host: str, error: str) -> list[tuple[str, str]]:
        now_row = await (await conn.execute(f"SELECT {_DB_NOW}")).fetchone()
        ts = int(now_row[0]) if now_row else now_ms()
        candidates = await (
            await conn.execute(
                "SELECT session_id, owner, pid, host, lease_until FROM agent_turns WHERE runner IS NOT NULL"
            )
        ).fetchall()
        failed: list[tuple[str, str]] = []
        for session_id, owner, claim_pid, claim_host, lease_until in candidates:
            if not claim_is_dead(
                claim_host=claim_host, claim_pid=claim_pid, lease_until=int(lease_until), host=host, now=ts
            ):
                continue
            # lock in the usual order, then check again: the holder may have renewed meanwhile
            status = await (
                await conn.execute("SELECT status FROM sessions WHERE id = %s FOR UPDATE", (session_id,))
            ).fetchone()
            again = await (
                await conn.execute(
                    "SELECT pid, host, lease_until FROM agent_turns WHERE session_id = %s AND runner IS NOT NULL"
                    " FOR UPDATE",
                    (session_id,),
                )
            ).fetchone()
            if again is None or not claim_is_dead(
                claim_host=again[1], claim_pid=again[0], lease_until=int(again[2]), host=host, now=ts
            ):
                continue
            await conn.execute(
                "UPDATE agent_turns SET done_seq = GREATEST(done_seq, upto_seq), runner = NULL, pid = NULL,"
                " host = NULL, lease_until = 0 WHERE session_id = %s",
                (session_id,),
            )
            if status is None or status[0] != Status.RUNNING.value:
                continue
            await conn.execute(
                "UPDATE sessions SET status = %s, error = %s, updated_at = GREATEST(updated_at, %s) WHERE id = %s",
                (Status.FAILED.value, error, now_ms(), session_id),
            )
            await self._log_change(conn, session_id, owner, "status")
            failed.append((session_id, owner))
            log.warning("agent turn of local session %s was cut off by a dead process; marked failed", session_id)
        return failed

    async def turn_recover(self, *, host: str, error: str) -> list[tuple[str, str]]:
        return await self._write(lambda conn: self._recover_turns(conn, host, error))

    async def turn_orphans(self, *, agents: Sequence[str], older_than_ms: int) -> list[tuple[str, str]]:
        names = list(agents)
        if not names:
            return []

        async def q(conn: Conn) -> list[tuple[str, str]]:
            rows = await (
                await conn.execute(
                    "SELECT s.id, s.owner FROM sessions s LEFT JOIN agent_turns t ON t.session_id = s.id"
                    " WHERE s.status = %s AND s.agent = ANY(%s) AND s.updated_at < %s"
                    " AND (t.session_id IS NULL OR (t.runner IS NULL AND t.done_seq < (SELECT max(m.seq)"
                    " FROM messages m WHERE m.session_id = s.id AND m.role = 'user'))) LIMIT 100",
                    (Status.RUNNING.value, names, now_ms() - older_than_ms),
                )
            ).fetchall()
            return [(r[0], r[1]) for r in rows]

        return await self._read(q)

    # web-app mirror outbox --------------------------------------------------------------------
    #
    # Several replicas drain one outbox: a claim leases rows with FOR UPDATE SKIP LOCKED, so two
    # replicas claiming at once get disjoint rows and never wait for each other.

    async def mirror_enqueue(self, session_id: str, owner: str) -> None:
        ts = now_ms()

        async def tx(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO mirror_outbox (session_id, owner, next_at, updated_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (session_id) DO UPDATE SET version = mirror_outbox.version + 1,"
                " updated_at = excluded.updated_at,"
                " next_at = CASE WHEN mirror_outbox.attempts = 0 THEN excluded.next_at ELSE mirror_outbox.next_at END",
                (session_id, owner, ts, ts),
            )

        await self._write(tx)

    async def mirror_claim(self, *, lease_ms: int, limit: int = 20) -> list[MirrorRow]:
        ts = now_ms()

        async def tx(conn: Conn) -> list[MirrorRow]:
            rows = await (
                await conn.execute(
                    "UPDATE mirror_outbox SET lease_until = %s WHERE session_id IN ("
                    " SELECT session_id FROM mirror_outbox WHERE version > synced_version AND next_at <= %s"
                    " AND lease_until < %s ORDER BY next_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " RETURNING session_id, owner, version, created, title, sent_seq, parent, attempts, last_error,"
                    " next_at",
                    (ts + lease_ms, ts, ts, limit),
                )
            ).fetchall()
            rows.sort(key=lambda r: int(r[9]))
            return [MirrorRow(r[0], r[1], int(r[2]), bool(r[3]), r[4], int(r[5]), r[6], int(r[7]), r[8]) for r in rows]

        return await self._write(tx)

    async def mirror_progress(
        self,
        session_id: str,
        *,
        created: bool | None = None,
        title: str | None = None,
        sent_seq: int | None = None,
        parent: str | None = None,
    ) -> None:
        _no_nul(title, parent)
        sets: list[LiteralString] = ["updated_at = %s"]
        args: list[Any] = [now_ms()]
        if created is not None:
            sets.append("created = %s")
            args.append(int(created))
        if title is not None:
            sets.append("title = %s")
            args.append(title)
        if sent_seq is not None:
            sets.append("sent_seq = %s")
            args.append(sent_seq)
        if parent is not None:
            sets.append("parent = %s")
            args.append(parent)
        statement = f"UPDATE mirror_outbox SET {', '.join(sets)} WHERE session_id = %s"

        async def tx(conn: Conn) -> None:
            await conn.execute(statement, (*args, session_id))

        await self._write(tx)

    async def mirror_done(self, session_id: str, version: int) -> None:
        async def tx(conn: Conn) -> None:
            await conn.execute(
                "UPDATE mirror_outbox SET synced_version = GREATEST(synced_version, %s), attempts = 0,"
                " last_error = NULL, lease_until = 0, next_at = %s, updated_at = %s WHERE session_id = %s",
                (version, now_ms(), now_ms(), session_id),
            )

        await self._write(tx)

    async def mirror_failed(self, session_id: str, error: str, *, retry_at_ms: int) -> None:
        async def tx(conn: Conn) -> None:
            await conn.execute(
                "UPDATE mirror_outbox SET attempts = attempts + 1, last_error = %s, next_at = %s, lease_until = 0,"
                " updated_at = %s WHERE session_id = %s",
                (error[:1000].replace("\x00", ""), retry_at_ms, now_ms(), session_id),
            )

        await self._write(tx)

    async def mirror_forget(self, session_id: str) -> None:
        async def tx(conn: Conn) -> None:
            await conn.execute("DELETE FROM mirror_outbox WHERE session_id = %s", (session_id,))

        await self._write(tx)

    async def mirror_next_due(self) -> int | None:
        async def q(conn: Conn) -> int | None:
            row = await (
                await conn.execute(
                    "SELECT min(GREATEST(next_at, lease_until)) FROM mirror_outbox WHERE version > synced_version"
                )
            ).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._read(q)

    async def mirror_stats(self, *, failed_after: int) -> MirrorStats:
        async def q(conn: Conn) -> MirrorStats:
            row = await (
                await conn.execute(
                    "SELECT count(*) FILTER (WHERE version > synced_version),"
                    " count(*) FILTER (WHERE version > synced_version AND attempts >= %s),"
                    " count(*) FILTER (WHERE version <= synced_version),"
                    " (SELECT last_error FROM mirror_outbox WHERE last_error IS NOT NULL"
                    "  ORDER BY updated_at DESC LIMIT 1)"
                    " FROM mirror_outbox",
                    (failed_after,),
                )
            ).fetchone()
            assert row is not None
            return MirrorStats(int(row[0]), int(row[1]), int(row[2]), row[3])

        return await self._read(q)
