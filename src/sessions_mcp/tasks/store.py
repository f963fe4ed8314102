"""Durable task records: the ``tasks`` table, the same SQL on SQLite and PostgreSQL.

Every operation is one statement, so each is atomic on its own; finishing a task is a
compare-and-set on ``status = 'working'``, so two processes that see the turn end at the same
time record one result. Reads bind the owner: another principal's task id reads as unknown.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, cast

from ..store.base import Store, now_ms
from .model import TaskRow

_COLS = (
    "id, owner, tool, session_id, era, status, status_message, first, max_chars, result, error, "
    "created_at, updated_at, ttl_ms"
)


def _row(r: Sequence[Any]) -> TaskRow:
    return TaskRow(
        id=r[0], owner=r[1], tool=r[2], session_id=r[3], era=r[4], status=r[5], status_message=r[6],
        first=r[7], max_chars=int(r[8]), result=r[9], error=r[10], created_at=int(r[11]),
        updated_at=int(r[12]), ttl_ms=int(r[13]),
    )  # fmt: skip


class TaskStore(ABC):
    """Where tasks live; shared by every server process on the same database."""

    @abstractmethod
    async def create(self, row: TaskRow) -> None:
        """Store a new task (durably: a ``get`` from any process finds it once this returns)."""

    @abstractmethod
    async def get(self, owner: str, task_id: str) -> TaskRow | None:
        """The task, or None when unknown, another owner's, or finished and expired."""

    @abstractmethod
    async def list(self, owner: str, *, after: tuple[int, str] | None, limit: int) -> list[TaskRow]:
        """The owner's live tasks, newest first; ``after`` is the (created_at, id) of the last one seen."""

    @abstractmethod
    async def working(self, *, limit: int = 500) -> list[TaskRow]:
        """Tasks still working (any owner), oldest first: what a starting process follows."""

    @abstractmethod
    async def working_for_session(self, owner: str, session_id: str) -> list[TaskRow]:
        """The owner's tasks still working on one session."""

    @abstractmethod
    async def finish(
        self,
        task_id: str,
        *,
        status: str,
        status_message: str | None,
        result: str | None = None,
        error: str | None = None,
        keep_ms: int,
    ) -> TaskRow | None:
        """End a working task (compare-and-set): None when it had already ended or is gone.

        The task is then kept ``keep_ms`` from now: its ``ttl_ms`` grows to cover that.
        """

    @abstractmethod
    async def prune(self) -> int:
        """Delete finished tasks whose time is up; returns how many."""


class _Exec(ABC):
    """Runs one statement written with ``?`` placeholders and returns its rows."""

    @abstractmethod
    async def __call__(self, sql: str, params: tuple[Any, ...], *, write: bool) -> list[tuple[Any, ...]]: ...


class SqlTaskStore(TaskStore):
    """:class:`TaskStore` over the session store's own database and connections."""

    def __init__(self, run: _Exec) -> None:
        self._run = run

    async def create(self, row: TaskRow) -> None:
        await self._run(
            f"INSERT INTO tasks ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.owner, row.tool, row.session_id, row.era, row.status, row.status_message, row.first,
             row.max_chars, row.result, row.error, row.created_at, row.updated_at, row.ttl_ms),
            write=True,
        )  # fmt: skip

    async def get(self, owner: str, task_id: str) -> TaskRow | None:
        rows = await self._run(
            f"SELECT {_COLS} FROM tasks WHERE id = ? AND owner = ? AND (status = 'working' OR created_at + ttl_ms > ?)",
            (task_id, owner, now_ms()),
            write=False,
        )
        return _row(rows[0]) if rows else None

    async def list(self, owner: str, *, after: tuple[int, str] | None, limit: int) -> list[TaskRow]:
        keyset = "AND (created_at < ? OR (created_at = ? AND id < ?))" if after else ""
        params: tuple[Any, ...] = (owner, now_ms())
        if after:
            params += (after[0], after[0], after[1])
        rows = await self._run(
            f"SELECT {_COLS} FROM tasks WHERE owner = ? AND (status = 'working' OR created_at + ttl_ms > ?) "
            f"{keyset} ORDER BY created_at DESC, id DESC LIMIT ?",
            (*params, limit),
            write=False,
        )
        return [_row(r) for r in rows]

    async def working(self, *, limit: int = 500) -> list[TaskRow]:
        rows = await self._run(
            f"SELECT {_COLS} FROM tasks WHERE status = 'working' ORDER BY created_at, id LIMIT ?", (limit,), write=False
        )
        return [_row(r) for r in rows]

    async def working_for_session(self, owner: str, session_id: str) -> list[TaskRow]:
        rows = await self._run(
            f"SELECT {_COLS} FROM tasks WHERE owner = ? AND session_id = ? AND status = 'working' ORDER BY created_at",
            (owner, session_id),
            write=False,
        )
        return [_row(r) for r in rows]

    async def finish(
        self,
        task_id: str,
        *,
        status: str,
        status_message: str | None,
        result: str | None = None,
        error: str | None = None,
        keep_ms: int,
    ) -> TaskRow | None:
        now = now_ms()
        rows = await self._run(
            "UPDATE tasks SET status = ?, status_message = ?, result = ?, error = ?, updated_at = ?, "
            "ttl_ms = CASE WHEN ? - created_at > ttl_ms THEN ? - created_at ELSE ttl_ms END "
            f"WHERE id = ? AND status = 'working' RETURNING {_COLS}",
            (status, status_message, result, error, now, now + keep_ms, now + keep_ms, task_id),
            write=True,
        )
        return _row(rows[0]) if rows else None

    async def prune(self) -> int:
        rows = await self._run(
            "DELETE FROM tasks WHERE status <> 'working' AND created_at + ttl_ms <= ? RETURNING id",
            (now_ms(),),
            write=True,
        )
        return len(rows)


class _SqliteExec(_Exec):
    def __init__(self, store: Any) -> None:
        self._store = store

    async def __call__(self, sql: str, params: tuple[Any, ...], *, write: bool) -> list[tuple[Any, ...]]:
        def fn(conn: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in conn.execute(sql, params).fetchall()]

        if write:
            return cast(list[tuple[Any, ...]], await self._store._write(fn))
        return cast(list[tuple[Any, ...]], await self._store._read(fn, single=True))


class _PostgresExec(_Exec):
    def __init__(self, store: Any) -> None:
        self._store = store

    async def __call__(self, sql: str, params: tuple[Any, ...], *, write: bool) -> list[tuple[Any, ...]]:
        text = sql.replace("?", "%s")

        async def fn(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(text, params)
            return [tuple(r) for r in await cur.fetchall()] if cur.description else []

        if write:
            return cast(list[tuple[Any, ...]], await self._store._write(fn))
        return cast(list[tuple[Any, ...]], await self._store._read(fn))


def task_store_for(store: Store) -> TaskStore:
    """The task store that shares ``store``'s database."""
    from ..store.sqlite import SqliteStore

    if isinstance(store, SqliteStore):
        return SqlTaskStore(_SqliteExec(store))
    return SqlTaskStore(_PostgresExec(store))
