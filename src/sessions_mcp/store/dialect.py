"""The dialect layer: how one SQL text runs on SQLite and on PostgreSQL.

Every concern writes its SQL once, in SQLite's spelling with these additions, and runs it
through a :class:`Tx`; each engine translates the few spellings that differ when it executes
a statement (translations are cached per statement text):

============================  ==========================  =================================
written                        SQLite                      PostgreSQL
============================  ==========================  =================================
``?`` placeholder              ``?``                       ``%s`` (``%`` is escaped)
``GREATEST(a, b)``             ``max(a, b)``               as written
``instr(s, t)``                as written                  ``strpos(s, t)``
``now_ms()``                   the process clock (a        the database clock, so replicas
                               registered function)        with skewed clocks agree on leases
``... FOR UPDATE``             dropped (``BEGIN            row locks until commit
``[SKIP LOCKED]``              IMMEDIATE`` holds the
                               whole database)
============================  ==========================  =================================

Statements must not contain these spellings inside string literals. Everything else that
differs (connections, pools and threads, how a writer takes its lock, NOTIFY versus polling
(:meth:`Tx.log`), retries and error messages) belongs to the engines, :mod:`.sqlite` and
:mod:`.postgres`. The SQL stays within what SQLite 3.24 runs (no ``RETURNING``, no ``FILTER``), as
the first stage did.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Row = tuple[Any, ...]


class Tx(Protocol):
    """One transaction (or one read) on one connection, as the concerns see it."""

    async def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Execute a statement; returns the number of rows it changed."""
        ...

    async def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        """Execute a statement; returns its first row, or None."""
        ...

    async def all(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        """Execute a statement; returns all its rows."""
        ...

    async def script(self, sql: str) -> None:
        """Execute several ``;``-separated statements as written (migrations; no translation)."""
        ...

    async def log(self, sql: str, args: Sequence[Any]) -> None:
        """Run the change-log ``INSERT`` ``sql``. PostgreSQL wraps it so the same statement also
        notifies the other replicas (``pg_notify``, delivered at commit); SQLite runs it as is."""
        ...


Body = Callable[[Tx], Coroutine[Any, Any, T]]
"""A transaction body: an ``async`` function of a :class:`Tx`, written once for both engines."""


class Retry(Exception):
    """Raised by a body when the transaction must run again from the start (a race it lost)."""


def marks(n: int) -> str:
    """``?, ?, ?`` for ``n`` values (an ``IN (...)`` list)."""
    return ", ".join("?" * n)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a body whose every ``await`` completes at once (SQLite's :class:`Tx` never suspends).

    This is how one ``async`` body runs inside SQLite's worker thread, or inline on the event
    loop, without an event loop of its own: a coroutine that never suspends finishes on its first
    ``send``.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    coro.close()
    raise RuntimeError("a SQLite transaction body awaited something that suspends")


class Translator:
    """Rewrites statements for one engine (cached: the same texts come back on every call)."""

    __slots__ = ("_cache", "_rewrite")

    def __init__(self, rewrite: Callable[[str], str]) -> None:
        self._rewrite = rewrite
        self._cache: dict[str, str] = {}

    def __call__(self, sql: str) -> str:
        done = self._cache.get(sql)
        if done is None:
            if len(self._cache) > 2000:  # IN lists of many lengths: keep the cache bounded
                self._cache.clear()
            done = self._cache[sql] = self._rewrite(sql)
        return done


def _for_sqlite(sql: str) -> str:
    return sql.replace(" FOR UPDATE SKIP LOCKED", "").replace(" FOR UPDATE", "").replace("GREATEST(", "max(")


PG_NOW = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
"""The database clock in Unix milliseconds (what ``now_ms()`` becomes on PostgreSQL)."""


def _for_postgres(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s").replace("instr(", "strpos(").replace("now_ms()", PG_NOW)


to_sqlite = Translator(_for_sqlite)
"""Statement text for SQLite."""
to_postgres = Translator(_for_postgres)
"""Statement text for PostgreSQL (psycopg's ``%s`` placeholders)."""
