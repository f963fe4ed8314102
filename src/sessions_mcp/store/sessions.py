"""Sessions: creating (with a first message), reading, listing, renaming and deleting them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..ids import new_native_id
from ..models import Role, Status, canonical_parts
from .changes import log_change
from .dialect import Tx, marks
from .engine import Engine
from .messages import insert_message
from .rows import MESSAGE_COLS, SESSION_BY_ID, SESSION_COLS, MessageRow, SessionRow, message_row, now_ms, session_row


class Sessions(Engine):
    """The ``sessions`` table (messages live in :mod:`.messages`)."""

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
        """Create a session (and its first message, as ``(role, parts, text)``) in one transaction.

        With ``dedupe_key`` already used by this store, returns the earlier session instead.
        """
        self._check_text(title, model, system, first_message[2] if first_message else None)

        async def body(tx: Tx) -> tuple[SessionRow, list[MessageRow]]:
            if dedupe_key is not None:
                row = await tx.one(f"SELECT {SESSION_COLS} FROM sessions WHERE dedupe_key = ?", (dedupe_key,))
                if row is not None:
                    firsts = await tx.all(
                        f"SELECT {MESSAGE_COLS} FROM messages WHERE session_id = ? AND seq = 1", row[:1]
                    )
                    return session_row(row), [message_row(m) for m in firsts]
            ts = now_ms()
            sid = new_native_id()
            seq = 1 if first_message else 0
            await tx.run(
                "INSERT INTO sessions (id, owner, title, status, model, system, agent, created_at, updated_at,"
                " last_seq, message_count, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, owner, title, status.value, model, system, agent, ts, ts, seq, seq, dedupe_key),
            )
            msgs: list[MessageRow] = []
            if first_message:
                role, given, text = first_message
                parts = canonical_parts(given)  # as in append_message: stored as published
                mid = await insert_message(tx, sid, 1, role, text, json.dumps(parts), ts, None)
                msgs.append(MessageRow(sid, 1, mid, role, text, parts, ts))
            await log_change(tx, sid, owner, "created", self.writer_id)
            return SessionRow(sid, owner, title, status, None, model, system, agent, ts, ts, seq, seq), msgs

        return await self._write(body)

    async def get_session(self, owner: str, session_id: str) -> SessionRow | None:
        """The session, or None when unknown, deleted or owned by someone else."""

        async def q(tx: Tx) -> SessionRow | None:
            row = await tx.one(SESSION_BY_ID, (session_id, owner))
            return session_row(row) if row else None

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
        """Most recently updated first; ``after`` is the (updated_at, id) keyset of the last row seen."""
        text = [f"SELECT {SESSION_COLS} FROM sessions WHERE owner = ?"]
        args: list[Any] = [owner]
        if statuses:
            text.append(f"AND status IN ({marks(len(statuses))})")
            args.extend(s.value for s in statuses)
        if query:
            text.append("AND (instr(lower(coalesce(title, '')), lower(?)) > 0 OR id = ?)")
            args.extend([self._clean(query)] * 2)
        if after is not None:
            text.append("AND (updated_at < ? OR (updated_at = ? AND id < ?))")
            args.extend([after[0], after[0], self._clean(after[1])])
        text.append("ORDER BY updated_at DESC, id DESC LIMIT ?")
        args.append(limit)
        statement = " ".join(text)

        async def q(tx: Tx) -> list[SessionRow]:
            return [session_row(r) for r in await tx.all(statement, args)]

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
        """Change title and/or status; None when the session is unknown."""
        self._check_text(title, error)

        async def body(tx: Tx) -> SessionRow | None:
            row = await tx.one(SESSION_BY_ID + " FOR UPDATE", (session_id, owner))
            if row is None:
                return None
            cur = session_row(row)
            new_title = cur.title if title is None else title
            new_status = cur.status if status is None else status
            new_error = None if clear_error else (cur.error if error is None else error)
            if (new_title, new_status, new_error) == (cur.title, cur.status, cur.error):
                return cur
            ts = max(now_ms(), cur.updated_at)
            await tx.run(
                "UPDATE sessions SET title = ?, status = ?, error = ?, updated_at = ? WHERE id = ?",
                (new_title, new_status.value, new_error, ts, session_id),
            )
            kind = "renamed" if new_title != cur.title else "status"
            await log_change(tx, session_id, owner, kind, self.writer_id)
            return cur._replace(title=new_title, status=new_status, error=new_error, updated_at=ts)

        return await self._write(body)

    async def delete_session(self, owner: str, session_id: str) -> bool:
        """Delete the session and its messages; False when it was unknown."""

        async def body(tx: Tx) -> bool:
            deleted = await tx.run("DELETE FROM sessions WHERE id = ? AND owner = ?", (session_id, owner))
            if deleted:
                await log_change(tx, session_id, owner, "deleted", self.writer_id)
            return deleted > 0

        return await self._write(body)
