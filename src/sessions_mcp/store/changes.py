"""The change log: every write records what happened to which session, for other processes.

Followers (:mod:`.feed`) read it after the engine's cheap "did anyone else commit?" check, to
wake their waiters and subscribers. Writers log in the same transaction as the change itself.
"""

from __future__ import annotations

from .dialect import Tx
from .engine import Engine
from .rows import Change, now_ms

CHANGES_AFTER = "SELECT seq, session_id, owner, kind, writer FROM changes WHERE seq > ? ORDER BY seq LIMIT ?"
"""The change rows after a seq, oldest first (PostgreSQL's engine adds its gap check around it)."""


async def log_change(tx: Tx, session_id: str, owner: str, kind: str, writer: str) -> None:
    """Record a change in the current write transaction."""
    await tx.log(
        "INSERT INTO changes (session_id, owner, kind, writer, at) VALUES (?, ?, ?, ?, ?)",
        (session_id, owner, kind, writer, now_ms()),
    )


class ChangeLog(Engine):
    """Reading and pruning the change log."""

    async def last_change(self) -> int:
        """The newest change sequence number (0 when none)."""

        async def q(tx: Tx) -> int:
            row = await tx.one("SELECT coalesce(max(seq), 0) FROM changes")
            return int(row[0]) if row else 0

        return await self._read(q)

    async def changes_since(self, seq: int, *, limit: int = 1000) -> list[Change]:
        """Changes after ``seq``, oldest first."""

        async def q(tx: Tx) -> list[Change]:
            return [Change(r[0], r[1], r[2], r[3], r[4]) for r in await tx.all(CHANGES_AFTER, (seq, limit))]

        return await self._read(q)

    async def prune_changes(self, older_than_ms: int = 3_600_000) -> None:
        """Drop change-log rows nobody can still need (followers poll every 100 ms)."""

        async def body(tx: Tx) -> None:
            await tx.run("DELETE FROM changes WHERE at < ?", (now_ms() - older_than_ms,))

        await self._write(body)
