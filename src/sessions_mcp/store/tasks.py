"""MCP tasks: a waiting ``create_session``/``send_message`` call stored and answered later.

Every operation is one statement, so each is atomic on its own; ending a task is a
compare-and-set on ``status = 'working'``, so two processes that see its turn end at the same
time record one result. Reads bind the owner: another principal's task id reads as unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .dialect import Tx
from .engine import Engine
from .rows import now_ms

StoredStatus = Literal["working", "completed", "failed", "cancelled"]
"""What the store records; ``input_required`` is read live from the session."""
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})

_COLS = (
    "id, owner, tool, session_id, era, status, status_message, first, max_chars, result, error, "
    "created_at, updated_at, ttl_ms"
)
_LIVE = "(status = 'working' OR created_at + ttl_ms > ?)"
_PRUNE = "DELETE FROM tasks WHERE status <> 'working' AND created_at + ttl_ms <= ?"


@dataclass(frozen=True, slots=True)
class TaskRow:
    """One stored task."""

    id: str
    owner: str
    tool: str
    session_id: str
    era: Literal["2026", "2025"]
    status: StoredStatus
    status_message: str | None
    first: str
    """JSON of the call's result right after the user message was stored (before any reply)."""
    max_chars: int
    result: str | None
    """JSON of the ``CallToolResult`` the waiting call would have returned (once completed)."""
    error: str | None
    """JSON of the JSON-RPC error of a failed call."""
    created_at: int
    updated_at: int
    ttl_ms: int

    @property
    def terminal(self) -> bool:
        """Whether the task has ended (it never changes again)."""
        return self.status in TERMINAL


def _task(r: Sequence[Any]) -> TaskRow:
    return TaskRow(
        id=r[0], owner=r[1], tool=r[2], session_id=r[3], era=r[4], status=r[5], status_message=r[6],
        first=r[7], max_chars=int(r[8]), result=r[9], error=r[10], created_at=int(r[11]),
        updated_at=int(r[12]), ttl_ms=int(r[13]),
    )  # fmt: skip


class Tasks(Engine):
    """Creating, reading, ending and pruning tasks."""

    async def task_create(self, row: TaskRow) -> None:
        """Store a new task (durably: a ``task_get`` from any process finds it once this returns).

        Ended tasks whose time is up are deleted in the same transaction (no write of its own)."""

        async def body(tx: Tx) -> None:
            await tx.run(
                f"INSERT INTO tasks ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, row.owner, row.tool, row.session_id, row.era, row.status, row.status_message, row.first,
                 row.max_chars, row.result, row.error, row.created_at, row.updated_at, row.ttl_ms),
            )  # fmt: skip
            await tx.run(_PRUNE, (row.created_at,))

        await self._write(body)

    async def task_get(self, owner: str, task_id: str) -> TaskRow | None:
        """The task, or None when unknown, another owner's, or ended and expired."""

        async def body(tx: Tx) -> TaskRow | None:
            r = await tx.one(f"SELECT {_COLS} FROM tasks WHERE id = ? AND owner = ? AND {_LIVE}",
                             (task_id, owner, now_ms()))  # fmt: skip
            return None if r is None else _task(r)

        return await self._read(body)

    async def task_list(self, owner: str, *, after: tuple[int, str] | None, limit: int) -> list[TaskRow]:
        """The owner's live tasks, newest first; ``after`` is the (created_at, id) of the last one seen."""
        keyset = " AND (created_at < ? OR (created_at = ? AND id < ?))" if after else ""
        args: tuple[Any, ...] = (owner, now_ms(), *((after[0], after[0], after[1]) if after else ()), limit)

        async def body(tx: Tx) -> list[TaskRow]:
            rows = await tx.all(
                f"SELECT {_COLS} FROM tasks WHERE owner = ? AND {_LIVE}{keyset} ORDER BY created_at DESC, id DESC LIMIT ?",
                args,
            )
            return [_task(r) for r in rows]

        return await self._read(body)

    async def task_working(self, owner: str, session_id: str) -> list[TaskRow]:
        """The owner's tasks still working on one session."""

        async def body(tx: Tx) -> list[TaskRow]:
            rows = await tx.all(
                f"SELECT {_COLS} FROM tasks WHERE owner = ? AND session_id = ? AND status = 'working' ORDER BY created_at",
                (owner, session_id),
            )
            return [_task(r) for r in rows]

        return await self._read(body)

    async def task_finish(
        self,
        task_id: str,
        *,
        status: StoredStatus,
        status_message: str | None,
        result: str | None = None,
        error: str | None = None,
        keep_ms: int,
    ) -> TaskRow | None:
        """End a working task (compare-and-set): None when it had already ended or is gone.

        The task is then kept ``keep_ms`` from now: its ``ttl_ms`` grows to cover that.
        """
        now = now_ms()

        async def body(tx: Tx) -> TaskRow | None:
            r = await tx.one(
                "UPDATE tasks SET status = ?, status_message = ?, result = ?, error = ?, updated_at = ?,"
                " ttl_ms = GREATEST(ttl_ms, ? - created_at)"
                f" WHERE id = ? AND status = 'working' RETURNING {_COLS}",
                (status, status_message, result, error, now, now + keep_ms, task_id),
            )
            return None if r is None else _task(r)

        return await self._write(body)

    async def task_prune(self) -> int:
        """Delete ended tasks whose time is up; returns how many."""

        async def body(tx: Tx) -> int:
            return await tx.run(_PRUNE, (now_ms(),))

        return await self._write(body)
