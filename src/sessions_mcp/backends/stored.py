"""Paging through sessions kept in this server's store (local sessions, A2A contexts, Fabro drafts)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..errors import InvalidArgument
from ..models import SessionPage, SessionRecord, StoredMessage
from ..store.base import MessageRow, SessionRow, Store
from .requests import SessionQuery

BAD_CURSOR = "bad cursor for list_sessions: pass next_cursor from a previous call"


def parse_row_cursor(cursor: str) -> tuple[int, str]:
    """``(updated_at, id)`` of the last row a previous page ended on (see :func:`row_cursor`)."""
    ts, _, sid = cursor.partition("/")
    try:
        return int(ts), sid
    except ValueError:
        raise InvalidArgument(BAD_CURSOR) from None


def row_cursor(row: SessionRow) -> str:
    """The cursor that continues a listing after ``row``."""
    return f"{row.updated_at}/{row.id}"


async def stored_sessions_page(
    store: Store, owner: str, q: SessionQuery, record: Callable[[SessionRow], Awaitable[SessionRecord]]
) -> SessionPage:
    """One page of the owner's stored sessions, most recently updated first, as records."""
    rows = await store.list_sessions(
        owner, statuses=sorted(q.statuses) if q.statuses else None, query=q.query,
        after=parse_row_cursor(q.cursor) if q.cursor else None, limit=q.limit + 1,
    )  # fmt: skip
    more = len(rows) > q.limit
    rows = rows[: q.limit]
    return SessionPage(
        items=[await record(r) for r in rows], next_cursor=row_cursor(rows[-1]) if more and rows else None
    )


def stored_message(row: MessageRow) -> StoredMessage:
    """A message row of this server's store as a neutral message (its parts stay JSON; no model per row)."""
    return StoredMessage.stored(row.id, row.role, row.parts, row.created_at, str(row.seq))
