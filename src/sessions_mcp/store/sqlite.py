"""The embedded SQLite store.

Durability and sharing (several server processes on one file, e.g. two editors):

- WAL journal, ``synchronous=FULL`` (every commit is fsynced: an acknowledged message survives
  a crash or power loss), ``foreign_keys=ON``, a busy timeout, ``journal_size_limit``.
- Writes run in ``BEGIN IMMEDIATE`` transactions on one writer connection, so two processes
  never deadlock on a lock upgrade; a lock held longer than the busy timeout is retried with
  backoff and only then reported as :class:`StoreBusy` (never "database is locked").
- Reads use a second connection and never wait for writers (WAL).
- Blocking calls run in worker threads, one lock per connection.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread
from pydantic_core import from_json

from ..errors import SchemaTooNew, StoreBusy, StoreUnavailable
from ..ids import new_message_id, new_native_id
from ..models import Role, Status
from .base import (
    TURN_LOST,
    AgentSessionRow,
    Change,
    IdemRecord,
    MessageRow,
    MirrorRow,
    MirrorStats,
    SessionRow,
    Store,
    agent_session_row,
    agent_session_upsert,
    claim_is_dead,
    new_writer_id,
    now_ms,
    this_host,
)
from .migrations import SQLITE_MIGRATIONS

log = logging.getLogger(__name__)
T = TypeVar("T")

_SESSION_COLS = "id, owner, title, status, error, model, system, agent, created_at, updated_at, last_seq, message_count"
_MESSAGE_COLS = "session_id, seq, id, role, text, parts, created_at"


def _session(row: sqlite3.Row | tuple[Any, ...]) -> SessionRow:
    return SessionRow(
        id=row[0],
        owner=row[1],
        title=row[2],
        status=Status(row[3]),
        error=row[4],
        model=row[5],
        system=row[6],
        agent=row[7],
        created_at=row[8],
        updated_at=row[9],
        last_seq=row[10],
        message_count=row[11],
    )


def _message(row: sqlite3.Row | tuple[Any, ...]) -> MessageRow:
    return MessageRow(
        session_id=row[0],
        seq=row[1],
        id=row[2],
        role=row[3],
        text=row[4],
        parts=from_json(row[5]),  # pydantic-core parses 4x faster than json.loads
        created_at=row[6],
    )


class _Miss:
    """A read that could not run inline."""


_MISS = _Miss()


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


class SqliteStore(Store):
    """SQLite implementation of :class:`Store`."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        self.busy_timeout_s = busy_timeout_s
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._ilock = threading.Lock()
        self._data_version: int | None = None
        self._open_lock = threading.Lock()
        self.writer_id = new_writer_id()

    # connection management ----------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,  # we issue BEGIN ourselves
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        return conn

    def _open_sync(self) -> None:
        with self._open_lock:
            if self._writer is not None:
                return
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create the folder of the local store {str(self.path.parent)!r}: {exc.strerror}; "
                    "set SESSIONS_MCP_LOCAL__DB to a writable path"
                ) from None
            try:
                writer = self._connect()
                mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("could not switch %s to WAL (journal_mode=%s)", self.path, mode)
                self._migrate(writer)
                self._recover_on_open(writer)
                reader = self._connect()
                reader.execute("PRAGMA query_only = ON")
                inline = self._connect()
                inline.execute("PRAGMA query_only = ON")
                inline.execute("PRAGMA busy_timeout = 0")  # never waits: a busy read falls back to a thread
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc) from None
            self._writer, self._reader, self._inline = writer, reader, inline
            self._data_version = None

    def _explain(self, exc: sqlite3.Error) -> StoreUnavailable | StoreBusy:
        msg = str(exc)
        where = f"the local store {str(self.path)!r}"
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return StoreBusy(f"{where} stayed locked by another process for over {self.busy_timeout_s:g}s; retry")
        if "readonly" in msg or "read-only" in msg:
            return StoreUnavailable(
                f"{where} is read-only; make it writable or set SESSIONS_MCP_LOCAL__DB to a writable path"
            )
        if "unable to open" in msg:
            return StoreUnavailable(f"cannot open {where} ({msg}); check its permissions or set SESSIONS_MCP_LOCAL__DB")
        if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
            return StoreUnavailable(
                f"{where} is damaged or not a sessions-mcp database ({msg}); move it aside "
                "(it is kept, nothing is deleted) or set SESSIONS_MCP_LOCAL__DB to another path"
            )
        return StoreUnavailable(f"{where} failed: {msg}")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)"
            )
            applied = {r[0] for r in conn.execute("SELECT name FROM schema_migrations")}
            known = [name for name, _ in SQLITE_MIGRATIONS]
            unknown = sorted(applied - set(known))
            if unknown:
                raise SchemaTooNew(
                    f"the local store {str(self.path)!r} was written by a newer sessions-mcp "
                    f"(migration {unknown[-1]!r} is unknown to this version); upgrade sessions-mcp "
                    "or set SESSIONS_MCP_LOCAL__DB to another database"
                )
            for name, sql in SQLITE_MIGRATIONS:
                if name in applied:
                    continue
                for statement in (s.strip() for s in sql.split(";")):
                    if statement:
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", (name, now_ms()))
                log.info("applied migration %s to %s", name, self.path)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _recover_on_open(self, conn: sqlite3.Connection) -> None:
        # a turn whose process died (kill -9, power loss) must not stay "running" forever
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._recover_turns(conn, this_host(), TURN_LOST)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    async def close(self) -> None:
        def _close() -> None:
            with self._wlock, self._rlock, self._ilock:
                for conn in (self._writer, self._reader, self._inline):
                    if conn is not None:
                        conn.close()
                self._writer = self._reader = self._inline = None

        await anyio.to_thread.run_sync(_close)

    # running statements ---------------------------------------------------------------------

    def _with_retry(self, fn: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.busy_timeout_s * 3
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise self._explain(exc) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc) from None

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            self._open_sync()
            with self._wlock:
                conn = self._writer
                assert conn is not None

                def attempt() -> T:
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = fn(conn)
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
                    return result

                return self._with_retry(attempt)

        return await anyio.to_thread.run_sync(run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = True, single: bool = False) -> T:
        """Run ``fn`` in one read transaction. ``single``: it runs one statement, which SQLite already
        reads from one snapshot, so the explicit BEGIN/COMMIT (a third of a point read) is skipped."""

        def run() -> T:
            self._open_sync()
            with self._rlock:
                conn = self._reader
                assert conn is not None

                def attempt() -> T:
                    if single:
                        return fn(conn)
                    conn.execute("BEGIN")
                    try:
                        return fn(conn)
                    finally:
                        conn.execute("COMMIT")

                return self._with_retry(attempt)

        done = self._read_inline(fn, single) if inline else _MISS
        if not isinstance(done, _Miss):
            return done
        return await anyio.to_thread.run_sync(run)

    def _read_inline(self, fn: Callable[[sqlite3.Connection], T], single: bool = False) -> T | _Miss:
        """Run a read on the calling (event-loop) thread when that cannot block.

        WAL readers never wait for writers, and this connection has no busy timeout: anything
        that would wait (busy, not yet open, in use by another thread) returns ``_MISS`` and the
        caller uses a worker thread. The hop costs ~150 us of CPU per read on a quiet 2-core VM,
        against ~10 us for a point read; under HTTP load it halved throughput (bench budget 5).
        """
        conn = self._inline
        if conn is None or not self._ilock.acquire(blocking=False):
            return _MISS
        try:
            if not single:
                try:
                    conn.execute("BEGIN")
                except sqlite3.OperationalError as exc:
                    if _is_busy(exc):
                        return _MISS
                    raise self._explain(exc) from None
            try:
                return fn(conn)
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    return _MISS
                raise self._explain(exc) from None
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc) from None
            finally:
                if not single:
                    conn.execute("COMMIT")
        finally:
            self._ilock.release()

    def _log_change(self, conn: sqlite3.Connection, session_id: str, owner: str, kind: str) -> None:
        conn.execute(
            "INSERT INTO changes (session_id, owner, kind, writer, at) VALUES (?, ?, ?, ?, ?)",
            (session_id, owner, kind, self.writer_id, now_ms()),
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
        def tx(conn: sqlite3.Connection) -> tuple[SessionRow, list[MessageRow]]:
            if dedupe_key is not None:
                row = conn.execute(
                    f"SELECT {_SESSION_COLS} FROM sessions WHERE dedupe_key = ?", (dedupe_key,)
                ).fetchone()
                if row is not None:
                    firsts = conn.execute(
                        f"SELECT {_MESSAGE_COLS} FROM messages WHERE session_id = ? AND seq = 1", (row[0],)
                    ).fetchall()
                    return _session(row), [_message(m) for m in firsts]
            ts = now_ms()
            sid = new_native_id()
            seq = 1 if first_message else 0
            conn.execute(
                "INSERT INTO sessions (id, owner, title, status, model, system, agent, created_at, updated_at,"
                " last_seq, message_count, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, owner, title, status.value, model, system, agent, ts, ts, seq, seq, dedupe_key),
            )
            msgs: list[MessageRow] = []
            if first_message:
                role, parts, text = first_message
                mid = new_message_id()
                conn.execute(
                    "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at)"
                    " VALUES (?, 1, ?, ?, ?, ?, ?)",
                    (sid, mid, role, text, json.dumps(parts), ts),
                )
                msgs.append(MessageRow(sid, 1, mid, role, text, parts, ts))
            self._log_change(conn, sid, owner, "created")
            session = SessionRow(sid, owner, title, status, None, model, system, agent, ts, ts, seq, seq)
            return session, msgs

        return await self._write(tx)

    async def get_session(self, owner: str, session_id: str) -> SessionRow | None:
        def q(conn: sqlite3.Connection) -> SessionRow | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ? AND owner = ?", (session_id, owner)
            ).fetchone()
            return _session(row) if row else None

        return await self._read(q, single=True)

    async def list_sessions(
        self,
        owner: str,
        *,
        statuses: Sequence[Status] | None,
        query: str | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[SessionRow]:
        sql = [f"SELECT {_SESSION_COLS} FROM sessions WHERE owner = ?"]
        args: list[Any] = [owner]
        if statuses:
            sql.append(f"AND status IN ({', '.join('?' * len(statuses))})")
            args.extend(s.value for s in statuses)
        if query:
            sql.append("AND (instr(lower(coalesce(title, '')), lower(?)) > 0 OR id = ?)")
            args.extend([query, query])
        if after is not None:
            sql.append("AND (updated_at < ? OR (updated_at = ? AND id < ?))")
            args.extend([after[0], after[0], after[1]])
        sql.append("ORDER BY updated_at DESC, id DESC LIMIT ?")
        args.append(limit)
        text = " ".join(sql)

        def q(conn: sqlite3.Connection) -> list[SessionRow]:
            return [_session(r) for r in conn.execute(text, args)]

        return await self._read(q, single=True)

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
        def tx(conn: sqlite3.Connection) -> SessionRow | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ? AND owner = ?", (session_id, owner)
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
            conn.execute(
                "UPDATE sessions SET title = ?, status = ?, error = ?, updated_at = ? WHERE id = ?",
                (new_title, new_status.value, new_error, ts, session_id),
            )
            kind = "renamed" if new_title != cur.title else "status"
            self._log_change(conn, session_id, owner, kind)
            return SessionRow(
                cur.id, cur.owner, new_title, new_status, new_error, cur.model, cur.system, cur.agent,
                cur.created_at, ts, cur.last_seq, cur.message_count,
            )  # fmt: skip

        return await self._write(tx)

    async def delete_session(self, owner: str, session_id: str) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM sessions WHERE id = ? AND owner = ?", (session_id, owner))
            if cur.rowcount:
                self._log_change(conn, session_id, owner, "deleted")
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
        def tx(conn: sqlite3.Connection) -> tuple[SessionRow, MessageRow] | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ? AND owner = ?", (session_id, owner)
            ).fetchone()
            if row is None:
                return None
            cur = _session(row)
            if dedupe_key is not None:
                old = conn.execute(
                    f"SELECT {_MESSAGE_COLS} FROM messages WHERE dedupe_key = ?", (dedupe_key,)
                ).fetchone()
                if old is not None:
                    return cur, _message(old)
            ts = max(now_ms(), cur.updated_at)
            seq = cur.last_seq + 1
            mid = new_message_id()
            conn.execute(
                "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at, dedupe_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, seq, mid, role, text, json.dumps(parts), ts, dedupe_key),
            )
            status = new_status or cur.status
            if status is Status.IDLE and unanswered_after_seq is not None:
                newer = conn.execute(
                    "SELECT 1 FROM messages WHERE session_id = ? AND seq > ? AND role = 'user' LIMIT 1",
                    (session_id, unanswered_after_seq),
                ).fetchone()
                if newer is not None:
                    status = Status.AWAITING_REPLY
            err = error if status is Status.FAILED else None
            conn.execute(
                "UPDATE sessions SET last_seq = ?, message_count = message_count + 1, updated_at = ?,"
                " status = ?, error = ? WHERE id = ?",
                (seq, ts, status.value, err, session_id),
            )
            self._log_change(conn, session_id, owner, "message")
            session = SessionRow(
                cur.id, cur.owner, cur.title, status, err, cur.model, cur.system, cur.agent,
                cur.created_at, ts, seq, cur.message_count + 1,
            )  # fmt: skip
            return session, MessageRow(session_id, seq, mid, role, text, parts, ts)

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
        sql = f"SELECT {_MESSAGE_COLS} FROM messages WHERE session_id = ? AND seq > ?"
        args: list[Any] = [session_id, after_seq]
        if roles:
            sql += f" AND role IN ({', '.join('?' * len(roles))})"
            args.extend(roles)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit + 1)

        def q(conn: sqlite3.Connection) -> tuple[SessionRow, list[MessageRow], bool] | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLS} FROM sessions WHERE id = ? AND owner = ?", (session_id, owner)
            ).fetchone()
            if row is None:
                return None
            rows = [_message(r) for r in conn.execute(sql, args)]
            return _session(row), rows[:limit], len(rows) > limit

        return await self._read(q)

    # idempotency ----------------------------------------------------------------------------

    async def idem_claim(
        self, principal: str, tool: str, key: str, params_hash: str, *, stale_after_ms: int
    ) -> IdemRecord | None:
        def tx(conn: sqlite3.Connection) -> IdemRecord | None:
            ts = now_ms()
            row = conn.execute(
                "SELECT params_hash, state, result, updated_at FROM idempotency"
                " WHERE principal = ? AND tool = ? AND key = ?",
                (principal, tool, key),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO idempotency (principal, tool, key, params_hash, state, created_at, updated_at)"
                    " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (principal, tool, key, params_hash, ts, ts),
                )
                return None
            rec = IdemRecord(params_hash=row[0], state=row[1], result=row[2], updated_at=row[3])
            if rec.state == "pending" and rec.params_hash == params_hash and ts - rec.updated_at > stale_after_ms:
                conn.execute(
                    "UPDATE idempotency SET updated_at = ? WHERE principal = ? AND tool = ? AND key = ?",
                    (ts, principal, tool, key),
                )
                return None
            return rec

        return await self._write(tx)

    async def idem_complete(self, principal: str, tool: str, key: str, result: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE idempotency SET state = 'done', result = ?, updated_at = ?"
                " WHERE principal = ? AND tool = ? AND key = ?",
                (result, now_ms(), principal, tool, key),
            )
            # keys live at least 24 h; prune older ones while we hold the write lock anyway
            conn.execute("DELETE FROM idempotency WHERE updated_at < ?", (now_ms() - 7 * 86_400_000,))

        await self._write(tx)

    async def idem_release(self, principal: str, tool: str, key: str) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM idempotency WHERE principal = ? AND tool = ? AND key = ? AND state = 'pending'",
                (principal, tool, key),
            )

        await self._write(tx)

    # change log -----------------------------------------------------------------------------

    async def last_change(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT max(seq) FROM changes").fetchone()
            return int(row[0] or 0)

        return await self._read(q, single=True)

    async def changes_since(self, seq: int, *, limit: int = 1000) -> list[Change]:
        def q(conn: sqlite3.Connection) -> list[Change]:
            rows = conn.execute(
                "SELECT seq, session_id, owner, kind, writer FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
            return [Change(r[0], r[1], r[2], r[3], r[4]) for r in rows]

        return await self._read(q, single=True)

    async def external_write_seen(self) -> bool:
        def q() -> bool:
            self._open_sync()
            with self._rlock:
                assert self._reader is not None
                version = int(self._reader.execute("PRAGMA data_version").fetchone()[0])
            changed = version != self._data_version
            self._data_version = version
            return changed

        return await anyio.to_thread.run_sync(q)

    async def prune_changes(self, older_than_ms: int = 3_600_000) -> None:
        """Drop change-log rows nobody can still need (followers poll every 100 ms)."""

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM changes WHERE at < ?", (now_ms() - older_than_ms,))

        await self._write(tx)

    # diagnostics ----------------------------------------------------------------------------

    async def describe(self) -> dict[str, Any]:
        def q(conn: sqlite3.Connection) -> dict[str, Any]:
            names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY name")]
            sessions = conn.execute("SELECT count(*) FROM sessions").fetchone()[0]
            messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            pragmas = {
                p: conn.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
            return {"migrations": names, "sessions": sessions, "messages": messages, "pragmas": pragmas}

        facts = await self._read(q, inline=False)  # report the reader's pragmas, not the inline one's

        def files() -> dict[str, Any]:
            wal = Path(str(self.path) + "-wal")
            return {
                "size_bytes": self.path.stat().st_size if self.path.exists() else 0,
                "wal_bytes": wal.stat().st_size if wal.exists() else 0,
                "writable": os.access(self.path, os.W_OK),
            }

        facts.update(await anyio.to_thread.run_sync(files))
        facts.update(
            kind="sqlite",
            location=self.location,
            schema_version=facts["migrations"][-1] if facts["migrations"] else None,
            known_migrations=[n for n, _ in SQLITE_MIGRATIONS],
        )
        return facts

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check`` (blocking; for tests and doctor)."""
        conn = sqlite3.connect(self.path)
        try:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            conn.close()

    # agent turns ----------------------------------------------------------------------------

    async def turn_claim(
        self, owner: str, session_id: str, *, upto_seq: int, runner: str, pid: int, host: str, lease_ms: int
    ) -> bool:
        def tx(conn: sqlite3.Connection) -> bool:
            known = conn.execute("SELECT 1 FROM sessions WHERE id = ? AND owner = ?", (session_id, owner))
            if known.fetchone() is None:
                return False
            ts = now_ms()
            row = conn.execute(
                "SELECT done_seq, runner, pid, host, lease_until FROM agent_turns WHERE session_id = ?", (session_id,)
            ).fetchone()
            if row is not None:
                done_seq, holder, claim_pid, claim_host, lease_until = row
                if holder is not None and not claim_is_dead(
                    claim_host=claim_host, claim_pid=claim_pid, lease_until=lease_until, host=host, now=ts
                ):
                    return False
                if done_seq >= upto_seq:
                    return False
            conn.execute(
                "INSERT INTO agent_turns (session_id, owner, upto_seq, runner, pid, host, lease_until, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET upto_seq = excluded.upto_seq,"
                " runner = excluded.runner, pid = excluded.pid, host = excluded.host,"
                " lease_until = excluded.lease_until, started_at = excluded.started_at",
                (session_id, owner, upto_seq, runner, pid, host, ts + lease_ms, ts),
            )
            return True

        return await self._write(tx)

    async def turn_heartbeat(self, runner: str, session_ids: Sequence[str], *, lease_ms: int) -> list[str]:
        ids = list(session_ids)
        if not ids:
            return []
        marks = ", ".join("?" * len(ids))

        def tx(conn: sqlite3.Connection) -> list[str]:
            conn.execute(
                f"UPDATE agent_turns SET lease_until = ? WHERE runner = ? AND session_id IN ({marks})",
                (now_ms() + lease_ms, runner, *ids),
            )
            rows = conn.execute(
                "SELECT t.session_id FROM agent_turns t JOIN sessions s ON s.id = t.session_id"
                f" WHERE t.runner = ? AND s.status IN (?, ?) AND t.session_id IN ({marks})",
                (runner, Status.RUNNING.value, Status.NEEDS_INPUT.value, *ids),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._write(tx)

    async def turn_release(self, session_id: str, *, runner: str) -> int:
        def tx(conn: sqlite3.Connection) -> int:
            conn.execute(
                "UPDATE agent_turns SET done_seq = max(done_seq, upto_seq), runner = NULL, pid = NULL, host = NULL,"
                " lease_until = 0 WHERE session_id = ? AND runner = ?",
                (session_id, runner),
            )
            row = conn.execute(
                "SELECT max(seq) FROM messages WHERE session_id = ? AND role = 'user'", (session_id,)
            ).fetchone()
            return int(row[0] or 0)

        return await self._write(tx)

    def _recover_turns(self, conn: sqlite3.Connection, host: str, error: str) -> list[tuple[str, str]]:
        ts = now_ms()
        failed: list[tuple[str, str]] = []
        rows = conn.execute(
            "SELECT session_id, owner, pid, host, lease_until FROM agent_turns WHERE runner IS NOT NULL"
        ).fetchall()
        for session_id, owner, claim_pid, claim_host, lease_until in rows:
            if not claim_is_dead(
                claim_host=claim_host, claim_pid=claim_pid, lease_until=lease_until, host=host, now=ts
            ):
                continue
            conn.execute(
                "UPDATE agent_turns SET done_seq = max(done_seq, upto_seq), runner = NULL, pid = NULL, host = NULL,"
                " lease_until = 0 WHERE session_id = ?",
                (session_id,),
            )
            cur = conn.execute(
                "UPDATE sessions SET status = ?, error = ?, updated_at = max(updated_at, ?) WHERE id = ?"
                " AND status IN (?, ?)",
                (Status.FAILED.value, error, ts, session_id, Status.RUNNING.value, Status.NEEDS_INPUT.value),
            )
            if cur.rowcount:
                self._log_change(conn, session_id, owner, "status")
                failed.append((session_id, owner))
                log.warning("agent turn of local session %s was cut off by a dead process; marked failed", session_id)
        return failed

    async def turn_recover(self, *, host: str, error: str) -> list[tuple[str, str]]:
        return await self._write(lambda conn: self._recover_turns(conn, host, error))

    async def agent_session(self, session_id: str) -> AgentSessionRow | None:
        def q(conn: sqlite3.Connection) -> AgentSessionRow | None:
            row = conn.execute(
                "SELECT workdir, state, pending FROM agent_sessions WHERE session_id = ?", (session_id,)
            ).fetchone()
            return agent_session_row(row)

        return await self._read(q)

    async def agent_session_put(
        self,
        session_id: str,
        *,
        workdir: str | None = None,
        state: dict[str, Any] | None = None,
        pending: dict[str, Any] | None = None,
        clear_pending: bool = False,
    ) -> None:
        sql, args = agent_session_upsert(session_id, workdir, state, pending, clear_pending)
        await self._write(lambda conn: conn.execute(sql, args))

    async def turn_orphans(self, *, agents: Sequence[str], older_than_ms: int) -> list[tuple[str, str]]:
        names = list(agents)
        if not names:
            return []
        sql = (
            "SELECT s.id, s.owner FROM sessions s LEFT JOIN agent_turns t ON t.session_id = s.id"
            f" WHERE s.status = ? AND s.agent IN ({', '.join('?' * len(names))}) AND s.updated_at < ?"
            " AND (t.session_id IS NULL OR (t.runner IS NULL AND t.done_seq < (SELECT max(m.seq) FROM messages m"
            " WHERE m.session_id = s.id AND m.role = 'user'))) LIMIT 100"
        )
        args = (Status.RUNNING.value, *names, now_ms() - older_than_ms)

        def q(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return [(r[0], r[1]) for r in conn.execute(sql, args)]

        return await self._read(q)

    # web-app mirror outbox --------------------------------------------------------------------

    async def mirror_enqueue(self, session_id: str, owner: str) -> None:
        ts = now_ms()

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO mirror_outbox (session_id, owner, next_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET version = version + 1, updated_at = excluded.updated_at,"
                " next_at = CASE WHEN attempts = 0 THEN excluded.next_at ELSE next_at END",
                (session_id, owner, ts, ts),
            )

        await self._write(tx)

    async def mirror_claim(self, *, lease_ms: int, limit: int = 20) -> list[MirrorRow]:
        ts = now_ms()

        def tx(conn: sqlite3.Connection) -> list[MirrorRow]:
            rows = conn.execute(
                "SELECT session_id, owner, version, created, title, sent_seq, parent, attempts, last_error"
                " FROM mirror_outbox WHERE version > synced_version AND next_at <= ? AND lease_until < ?"
                " ORDER BY next_at LIMIT ?",
                (ts, ts, limit),
            ).fetchall()
            for r in rows:
                conn.execute("UPDATE mirror_outbox SET lease_until = ? WHERE session_id = ?", (ts + lease_ms, r[0]))
            return [MirrorRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

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
        sets: list[str] = ["updated_at = ?"]
        args: list[Any] = [now_ms()]
        for column, value in (("created", created), ("title", title), ("sent_seq", sent_seq), ("parent", parent)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(int(value) if isinstance(value, bool) else value)

        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(f"UPDATE mirror_outbox SET {', '.join(sets)} WHERE session_id = ?", (*args, session_id))

        await self._write(tx)

    async def mirror_done(self, session_id: str, version: int) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE mirror_outbox SET synced_version = max(synced_version, ?), attempts = 0, last_error = NULL,"
                " lease_until = 0, next_at = ?, updated_at = ? WHERE session_id = ?",
                (version, now_ms(), now_ms(), session_id),
            )

        await self._write(tx)

    async def mirror_failed(self, session_id: str, error: str, *, retry_at_ms: int) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE mirror_outbox SET attempts = attempts + 1, last_error = ?, next_at = ?, lease_until = 0,"
                " updated_at = ? WHERE session_id = ?",
                (error[:1000], retry_at_ms, now_ms(), session_id),
            )

        await self._write(tx)

    async def mirror_forget(self, session_id: str) -> None:
        await self._write(lambda conn: conn.execute("DELETE FROM mirror_outbox WHERE session_id = ?", (session_id,)))

    async def mirror_next_due(self) -> int | None:
        def q(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT min(max(next_at, lease_until)) FROM mirror_outbox WHERE version > synced_version"
            ).fetchone()
            return None if row is None or row[0] is None else int(row[0])

        return await self._read(q)

    async def mirror_stats(self, *, failed_after: int) -> MirrorStats:
        def q(conn: sqlite3.Connection) -> MirrorStats:
            pending, failed, mirrored = conn.execute(
                "SELECT coalesce(sum(version > synced_version), 0),"
                " coalesce(sum(version > synced_version AND attempts >= ?), 0),"
                " coalesce(sum(version <= synced_version), 0) FROM mirror_outbox",
                (failed_after,),
            ).fetchone()
            err = conn.execute(
                "SELECT last_error FROM mirror_outbox WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT 1"
            ).fetchone()
            return MirrorStats(int(pending), int(failed), int(mirrored), err[0] if err else None)

        return await self._read(q)
