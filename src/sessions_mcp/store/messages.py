"""Messages: appending (seq allocated under the session's lock) and reading pages by seq."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..ids import new_message_id
from ..models import Role, Status, canonical_parts
from .changes import log_change
from .dialect import Tx, marks
from .engine import Engine
from .rows import MESSAGE_COLS, SESSION_BY_ID, MessageRow, SessionRow, message_row, now_ms, session_row


async def insert_message(
    tx: Tx, session_id: str, seq: int, role: Role, text: str, parts_json: str, at: int, dedupe_key: str | None
) -> str:
    """Insert one message row; returns its new id. The only statement that writes a message."""
    mid = new_message_id()
    await tx.run(
        "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at, dedupe_key)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, seq, mid, role, text, parts_json, at, dedupe_key),
    )
    return mid


class Messages(Engine):
    """Appending and listing messages."""

    async def append_message(
        self,
        owner: str,
        session_id: str,
        *,
        role: Role,
        text: str,
        parts: list[dict[str, Any]],
        new_status: Status | None,
        error: str | None = None,
        dedupe_key: str | None = None,
        unanswered_after_seq: int | None = None,
    ) -> tuple[SessionRow, MessageRow] | None:
        """Append a message and set the session status, in one transaction.

        With ``unanswered_after_seq``, a ``new_status`` of ``idle`` becomes ``awaiting_reply``
        when a user message with a higher seq exists (checked under the write lock): the reply
        answered an earlier question, a newer one is still open.

        Returns None when the session is unknown. With a ``dedupe_key`` this store has seen,
        returns the earlier message and writes nothing.
        """
        self._check_text(text, error)
        parts = canonical_parts(parts)  # stored as published: pages are built from this JSON as it is
        parts_json = json.dumps(parts)
        check_newer = new_status is Status.IDLE and unanswered_after_seq is not None

        async def body(tx: Tx) -> tuple[SessionRow, MessageRow] | None:
            # the row lock (PostgreSQL) or the database lock (SQLite) is held until commit: seqs are
            # unique and gap-free per session, two writers with one dedupe key serialize here, and a
            # user message committing concurrently is seen or waits
            row = await tx.one(SESSION_BY_ID + " FOR UPDATE", (session_id, owner))
            if row is None:
                return None
            cur = session_row(row)
            if dedupe_key is not None:
                old = await tx.one(f"SELECT {MESSAGE_COLS} FROM messages WHERE dedupe_key = ?", (dedupe_key,))
                if old is not None:
                    return cur, message_row(old)
            status = new_status or cur.status
            if check_newer and await tx.one(
                "SELECT 1 FROM messages WHERE session_id = ? AND seq > ? AND role = 'user' LIMIT 1",
                (session_id, unanswered_after_seq),
            ):
                status = Status.AWAITING_REPLY
            ts = max(now_ms(), cur.updated_at)
            seq = cur.last_seq + 1
            err = error if status is Status.FAILED else None
            mid = await insert_message(tx, session_id, seq, role, text, parts_json, ts, dedupe_key)
            await tx.run(
                "UPDATE sessions SET last_seq = ?, message_count = message_count + 1, updated_at = ?,"
                " status = ?, error = ? WHERE id = ?",
                (seq, ts, status.value, err, session_id),
            )
            await log_change(tx, session_id, owner, "message", self.writer_id)
            session = cur._replace(status=status, error=err, updated_at=ts, last_seq=seq,
                                   message_count=cur.message_count + 1)  # fmt: skip
            return session, MessageRow(session_id, seq, mid, role, text, parts, ts)

        return await self._write(body)

    async def list_messages(
        self,
        owner: str,
        session_id: str,
        *,
        after_seq: int,
        limit: int,
        roles: Sequence[Role] | None = None,
    ) -> tuple[SessionRow, list[MessageRow], bool] | None:
        """Messages with seq > after_seq, oldest first, and whether more follow; None if unknown."""
        page = f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id = ? AND seq > ?"
        args: list[Any] = [session_id, after_seq]
        if roles:
            page += f" AND role IN ({marks(len(roles))})"
            args.extend(roles)
        page += " ORDER BY seq LIMIT ?"
        args.append(limit + 1)

        async def q(tx: Tx) -> tuple[SessionRow, list[MessageRow], bool] | None:
            row = await tx.one(SESSION_BY_ID, (session_id, owner))
            if row is None:
                return None
            rows = [message_row(r) for r in await tx.all(page, args)]
            return session_row(row), rows[:limit], len(rows) > limit

        # one snapshot for the session row and its messages
        return await self._read(q, consistent=True)
