"""The embedded SQLite engine of the store.

Durability and sharing (several server processes on one file, e.g. two editors):

- WAL journal, ``synchronous=FULL`` (every commit is fsynced: an acknowledged message survives
  a crash or power loss), ``foreign_keys=ON``, a busy timeout, ``journal_size_limit``.
- Writes run in ``BEGIN IMMEDIATE`` transactions on one writer connection, so two processes
  never deadlock on a lock upgrade; a lock held longer than the busy timeout is retried with
  backoff and only then reported as :class:`StoreBusy` (never "database is locked"). Holding the
  database lock is also what makes a message's seq (``last_seq + 1``) unique and gap-free.
- Reads use a second connection and never wait for writers (WAL).
- Blocking calls run in worker threads, one lock per connection; reads that cannot block run
  inline on the event loop (see :meth:`SqliteStore._read_inline`).

The concerns' transaction bodies are ``async`` functions of a :class:`~.dialect.Tx`; this
engine's ``Tx`` never suspends, so a body runs to its end inside a worker thread with
:func:`~.dialect.run_sync`.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio.to_thread

from ..errors import StoreBusy, StoreUnavailable
from . import lockholder
from .base import Store
from .deadline import bound
from .dialect import Body, Retry, Row, Tx, run_sync, to_sqlite
from .migrations import SQLITE_MIGRATIONS, migrate
from .rows import TURN_LOST, claim_is_dead, new_writer_id, now_ms, this_host
from .wakeup import Wakeup

log = logging.getLogger(__name__)
T = TypeVar("T")
SAFETY_POLL_S = 2.0  # with wake-ups, the change feed still looks this often

FULL_BELOW_BYTES = 1_048_576
"""An I/O error with less free space than this on the store's filesystem is reported as a full disk."""


class _SqliteTx:
    """:class:`~.dialect.Tx` on one sqlite3 connection (every call completes at once)."""

    __slots__ = ("busy_ms", "conn")

    def __init__(self, conn: sqlite3.Connection, busy_ms: int = 0) -> None:
        self.conn = conn
        self.busy_ms = busy_ms

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        return self.conn.execute(to_sqlite(sql), args).rowcount

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        return self.conn.execute(to_sqlite(sql), args).fetchone()

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return self.conn.execute(to_sqlite(sql), args).fetchall()

    async def script(self, sql: str) -> None:
        for statement in (s.strip() for s in sql.split(";")):
            if statement:
                self.conn.execute(statement)

    async def log(self, sql: str, args: Sequence[Any]) -> None:
        # other processes notice through PRAGMA data_version; nothing to send
        self.conn.execute(to_sqlite(sql), args)


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
        self._writer: _SqliteTx | None = None
        self._reader: _SqliteTx | None = None
        self._inline: _SqliteTx | None = None
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        self._ilock = threading.Lock()
        self._data_version: int | None = None
        self._inline_data_version: int | None = None
        self._open_lock = threading.Lock()
        self.writer_id = new_writer_id()
        self._wakeup: Wakeup | None = None

    # connection management ----------------------------------------------------------------

    def _connect(self, *pragmas: str) -> _SqliteTx:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_s,
            isolation_level=None,  # we issue BEGIN ourselves
            check_same_thread=False,
        )
        conn.create_function("now_ms", 0, now_ms)  # the dialect's clock (see .dialect)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA journal_size_limit = 67108864")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
        return _SqliteTx(conn, int(self.busy_timeout_s * 1000))

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
                mode = writer.conn.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = writer.conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("could not switch %s to WAL (journal_mode=%s)", self.path, mode)
                where = f"the local store {str(self.path)!r}"
                # the write lock only when there is something to write: a process that holds it (or
                # froze holding it) must not stop another from opening the store and reading
                deadline = time.monotonic() + self.busy_timeout_s
                if self._needs_migration(writer):
                    self._with_retry(
                        lambda: self._in_transaction(
                            writer, lambda tx: migrate(tx, SQLITE_MIGRATIONS, where=where, bigint="INTEGER")
                        ),
                        deadline,
                    )
                # a turn whose process died (kill -9, power loss) must not stay "running" forever
                if self._needs_recovery(writer):
                    self._with_retry(
                        lambda: self._in_transaction(
                            writer, lambda tx: self._recover_turns(tx, this_host(), TURN_LOST)
                        ),
                        deadline,
                    )
                reader = self._connect("query_only = ON")
                # never waits: a busy read falls back to a thread
                inline = self._connect("query_only = ON", "busy_timeout = 0")
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc) from None
            self._writer, self._reader, self._inline = writer, reader, inline
            self._data_version = self._inline_data_version = None
            if self._wakeup is None:
                self._wakeup = Wakeup.for_database(self.path)

    @staticmethod
    def _needs_migration(tx: _SqliteTx) -> bool:
        """Whether :func:`migrate` has anything to do (read-only)."""
        try:
            applied = {r[0] for r in tx.conn.execute("SELECT name FROM schema_migrations").fetchall()}
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return True
            raise
        return applied != {name for name, _ in SQLITE_MIGRATIONS}

    @staticmethod
    def _needs_recovery(tx: _SqliteTx) -> bool:
        """Whether a claimed agent turn's runner is gone (read-only; the write re-checks)."""
        rows = tx.conn.execute("SELECT pid, host, lease_until FROM agent_turns WHERE runner IS NOT NULL").fetchall()
        host, now = this_host(), now_ms()
        return any(
            claim_is_dead(claim_host=h, claim_pid=pid, lease_until=int(lease), host=host, now=now)
            for pid, h, lease in rows
        )

    def _busy(self) -> StoreBusy:
        where = f"the local store {str(self.path)!r}"
        return StoreBusy(
            f"{where} stayed locked by another process for over {self.busy_timeout_s:g}s "
            f"({lockholder.describe(self.path)}); nothing was written, retry"
        )

    def _full(self, msg: str) -> StoreUnavailable | None:
        """The disk-full error, when ``msg`` is SQLite's "disk is full", or an I/O error on a full disk."""
        lowered = msg.lower()
        if "disk is full" not in lowered and "disk i/o error" not in lowered:
            return None
        try:
            usage = shutil.disk_usage(self.path.parent)
        except OSError:
            usage = None
        if "disk is full" not in lowered and (usage is None or usage.free > FULL_BELOW_BYTES):
            return None  # an I/O error with room on the disk: some other fault
        free = f"{usage.free / 1_048_576:.1f} MiB free of {usage.total / 1_048_576:.0f} MiB" if usage else "no room"
        wal = Path(f"{self.path}-wal")
        wal_size = wal.stat().st_size if wal.exists() else 0
        return StoreUnavailable(
            f"the filesystem holding the local store {str(self.path)!r} is full ({free}): nothing was written. "
            f"Free space on it (the store needs room for its write-ahead log, {wal_size / 1_048_576:.1f} MiB now), "
            "or move the store with SESSIONS_MCP_LOCAL__DB; then retry"
        )

    def _explain(self, exc: sqlite3.Error) -> StoreUnavailable | StoreBusy:
        msg = str(exc)
        where = f"the local store {str(self.path)!r}"
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return self._busy()
        full = self._full(msg)
        if full is not None:
            return full
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

    @staticmethod
    def _in_transaction(tx: _SqliteTx, body: Body[T]) -> T:
        tx.conn.execute("BEGIN IMMEDIATE")
        try:
            result = run_sync(body(tx))
        except BaseException:
            tx.conn.execute("ROLLBACK")
            raise
        tx.conn.execute("COMMIT")
        return result

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open_sync)

    async def close(self) -> None:
        def _close() -> None:
            with self._wlock, self._rlock, self._ilock:
                for tx in (self._writer, self._reader, self._inline):
                    if tx is not None:
                        tx.conn.close()
                self._writer = self._reader = self._inline = None
            if self._wakeup is not None:
                self._wakeup.close()
                self._wakeup = None

        await anyio.to_thread.run_sync(_close)

    # running statements ---------------------------------------------------------------------

    def _with_retry(self, fn: Callable[[], T], deadline: float) -> T:
        """Run ``fn``, retrying while the database is busy, until ``deadline`` (monotonic).

        A call waits at most one busy timeout in all: the deadline is set when it starts, covers
        its wait for this process's connection too, and each attempt's SQLite busy wait is cut to
        what is left (one frozen lock holder made five queued writes answer at 30, 60, ... 150 s).
        """
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise self._explain(exc) from None
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc) from None
            except Retry as exc:  # cannot happen while BEGIN IMMEDIATE holds the database; stay safe
                if time.monotonic() > deadline:
                    raise StoreBusy(f"the local store {str(self.path)!r} stayed contended ({exc}); retry") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _write(self, body: Body[T]) -> T:
        def run() -> T:
            deadline = bound(time.monotonic() + self.busy_timeout_s)
            self._open_sync()
            if not self._wlock.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
                raise self._busy()  # another call of ours is still waiting for the same lock
            try:
                tx = self._writer
                assert tx is not None

                def attempt() -> T:
                    self._limit_wait(tx, deadline)
                    return self._in_transaction(tx, body)

                result = self._with_retry(attempt, deadline)
            finally:
                self._wlock.release()
            if self._wakeup is not None:
                self._wakeup.poke()  # committed: wake the other processes' waiters now
            return result

        return await anyio.to_thread.run_sync(run)

    def _limit_wait(self, tx: _SqliteTx, deadline: float) -> None:
        """Let SQLite's busy handler wait no longer than the time left before ``deadline``."""
        left_ms = max(int((deadline - time.monotonic()) * 1000), 1)
        wanted = min(left_ms, int(self.busy_timeout_s * 1000))
        if tx.busy_ms != wanted:
            tx.conn.execute(f"PRAGMA busy_timeout = {wanted}")
            tx.busy_ms = wanted

    async def _read(self, body: Body[T], *, consistent: bool = False, inline: bool = True) -> T:
        """Run a read. Without ``consistent`` it is one statement, which SQLite already reads from
        one snapshot, so the explicit BEGIN/COMMIT (a third of a point read) is skipped."""

        def run() -> T:
            self._open_sync()
            with self._rlock:
                tx = self._reader
                assert tx is not None

                def attempt() -> T:
                    if not consistent:
                        return run_sync(body(tx))
                    tx.conn.execute("BEGIN")
                    try:
                        return run_sync(body(tx))
                    finally:
                        tx.conn.execute("COMMIT")

                return self._with_retry(attempt, time.monotonic() + self.busy_timeout_s)

        done = self._read_inline(body, consistent) if inline else _MISS
        if not isinstance(done, _Miss):
            return done
        return await anyio.to_thread.run_sync(run)

    def _read_inline(self, body: Body[T], consistent: bool) -> T | _Miss:
        """Run a read on the calling (event-loop) thread when that cannot block.

        WAL readers never wait for writers, and this connection has no busy timeout: anything
        that would wait (busy, not yet open, in use by another thread) returns ``_MISS`` and the
        caller uses a worker thread. The hop costs ~150 us of CPU per read on a quiet 2-core VM,
        against ~10 us for a point read; under HTTP load it halved throughput (bench budget 5).
        """
        tx = self._inline
        if tx is None or not self._ilock.acquire(blocking=False):
            return _MISS
        try:
            if consistent:
                try:
                    tx.conn.execute("BEGIN")
                except sqlite3.OperationalError as exc:
                    if _is_busy(exc):
                        return _MISS
                    raise self._explain(exc) from None
            try:
                return run_sync(body(tx))
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    return _MISS
                raise self._explain(exc) from None
            except sqlite3.DatabaseError as exc:
                raise self._explain(exc) from None
            finally:
                if consistent:
                    tx.conn.execute("COMMIT")
        finally:
            self._ilock.release()

    # what only SQLite has -----------------------------------------------------------------------

    async def wait_for_external(self, fallback_s: float, *, patient: bool = True) -> bool:
        """At once when another process pokes our wake-up socket (:mod:`.wakeup`), else after
        :data:`SAFETY_POLL_S` (writers that cannot poke: other users, older versions), or
        ``fallback_s`` when not ``patient`` or without a wake-up socket."""
        wakeup = self._wakeup
        if wakeup is None or not wakeup.listen():
            await anyio.sleep(fallback_s)
            return False
        return await wakeup.wait(max(fallback_s, SAFETY_POLL_S) if patient else fallback_s)

    async def external_write_seen(self) -> bool:
        # on the event-loop thread when the inline connection is free (a worker-thread hop costs
        # more than the pragma); each connection compares with what it saw last, so switching
        # between the two can only say True spuriously, never miss a commit
        inline = self._inline
        if inline is not None and self._ilock.acquire(blocking=False):
            try:
                version = int(inline.conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                version = None
            finally:
                self._ilock.release()
            if version is not None:
                changed = version != self._inline_data_version
                self._inline_data_version = version
                return changed

        def q() -> bool:
            self._open_sync()
            with self._rlock:
                assert self._reader is not None
                version = int(self._reader.conn.execute("PRAGMA data_version").fetchone()[0])
            changed = version != self._data_version
            self._data_version = version
            return changed

        return await anyio.to_thread.run_sync(q)

    async def describe(self) -> dict[str, Any]:
        async def q(tx: Tx) -> dict[str, Any]:
            names = [r[0] for r in await tx.all("SELECT name FROM schema_migrations ORDER BY name")]
            counts = await tx.one("SELECT (SELECT count(*) FROM sessions), (SELECT count(*) FROM messages)")
            assert counts is not None
            pragmas: dict[str, Any] = {}
            for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout"):
                row = await tx.one(f"PRAGMA {p}")
                pragmas[p] = row[0] if row else None
            return {"migrations": names, "sessions": counts[0], "messages": counts[1], "pragmas": pragmas}

        # report the reader's pragmas, not the inline one's
        facts = await self._read(q, consistent=True, inline=False)

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
