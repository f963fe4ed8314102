"""The durable outbox of the optional web-app mirror (:mod:`sessions_mcp.mirror`).

One row per local session to copy out: ``version`` counts local changes, ``synced_version`` the
last one fully mirrored; the remote progress is saved after every remote step. Several
PostgreSQL replicas drain one outbox: a claim leases rows with ``FOR UPDATE SKIP LOCKED``, so two
replicas claiming at once get disjoint rows and never wait for each other.
"""

from __future__ import annotations

from typing import Any

from .dialect import Tx, marks
from .engine import Engine
from .rows import MirrorRow, MirrorStats, now_ms

_PENDING = "version > synced_version"


class MirrorOutbox(Engine):
    """The ``mirror_outbox`` table."""

    async def mirror_enqueue(self, session_id: str, owner: str) -> None:
        """Record that a local session changed and must be mirrored (durable, idempotent)."""
        ts = now_ms()

        async def body(tx: Tx) -> None:
            await tx.run(
                "INSERT INTO mirror_outbox (session_id, owner, next_at, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET version = mirror_outbox.version + 1,"
                " updated_at = excluded.updated_at,"
                " next_at = CASE WHEN mirror_outbox.attempts = 0 THEN excluded.next_at ELSE mirror_outbox.next_at END",
                (session_id, owner, ts, ts),
            )

        await self._write(body)

    async def mirror_claim(self, *, lease_ms: int, limit: int = 20) -> list[MirrorRow]:
        """Lease the due rows with unmirrored changes (another process skips leased rows)."""
        ts = now_ms()

        async def body(tx: Tx) -> list[MirrorRow]:
            rows = await tx.all(
                "SELECT session_id, owner, version, created, title, sent_seq, parent, attempts, last_error"
                f" FROM mirror_outbox WHERE {_PENDING} AND next_at <= ? AND lease_until < ?"
                " ORDER BY next_at LIMIT ? FOR UPDATE SKIP LOCKED",
                (ts, ts, limit),
            )
            if rows:
                await tx.run(f"UPDATE mirror_outbox SET lease_until = ? WHERE session_id IN ({marks(len(rows))})",
                             (ts + lease_ms, *(r[0] for r in rows)))  # fmt: skip
            return [MirrorRow(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

        return await self._write(body)

    async def mirror_progress(
        self,
        session_id: str,
        *,
        created: bool | None = None,
        title: str | None = None,
        sent_seq: int | None = None,
        parent: str | None = None,
    ) -> None:
        """Save one remote step (so a restart never repeats it)."""
        self._check_text(title, parent)
        sets: list[str] = ["updated_at = ?"]
        args: list[Any] = [now_ms()]
        for column, value in (("created", created), ("title", title), ("sent_seq", sent_seq), ("parent", parent)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(int(value) if isinstance(value, bool) else value)
        statement = f"UPDATE mirror_outbox SET {', '.join(sets)} WHERE session_id = ?"

        async def body(tx: Tx) -> None:
            await tx.run(statement, (*args, session_id))

        await self._write(body)

    async def mirror_done(self, session_id: str, version: int) -> None:
        """Mark the changes up to ``version`` mirrored; clear attempts, error and lease."""

        async def body(tx: Tx) -> None:
            await tx.run(
                "UPDATE mirror_outbox SET synced_version = GREATEST(synced_version, ?), attempts = 0,"
                " last_error = NULL, lease_until = 0, next_at = ?, updated_at = ? WHERE session_id = ?",
                (version, now_ms(), now_ms(), session_id),
            )

        await self._write(body)

    async def mirror_failed(self, session_id: str, error: str, *, retry_at_ms: int) -> None:
        """Count a failed attempt, keep the (redacted) error, release the lease until ``retry_at_ms``."""

        async def body(tx: Tx) -> None:
            await tx.run(
                "UPDATE mirror_outbox SET attempts = attempts + 1, last_error = ?, next_at = ?, lease_until = 0,"
                " updated_at = ? WHERE session_id = ?",
                (self._clean(error[:1000]), retry_at_ms, now_ms(), session_id),
            )

        await self._write(body)

    async def mirror_forget(self, session_id: str) -> None:
        """Drop a session's row (the session was deleted locally)."""

        async def body(tx: Tx) -> None:
            await tx.run("DELETE FROM mirror_outbox WHERE session_id = ?", (session_id,))

        await self._write(body)

    async def mirror_next_due(self) -> int | None:
        """When the next row with unmirrored changes is due (Unix ms), or None."""

        async def q(tx: Tx) -> int | None:
            row = await tx.one(f"SELECT min(GREATEST(next_at, lease_until)) FROM mirror_outbox WHERE {_PENDING}")
            return None if row is None or row[0] is None else int(row[0])

        return await self._read(q)

    async def mirror_stats(self, *, failed_after: int) -> MirrorStats:
        """Counts for diagnostics: pending rows, rows failing ``failed_after`` times or more."""

        async def q(tx: Tx) -> MirrorStats:
            row = await tx.one(
                f"SELECT coalesce(sum(CASE WHEN {_PENDING} THEN 1 ELSE 0 END), 0),"
                f" coalesce(sum(CASE WHEN {_PENDING} AND attempts >= ? THEN 1 ELSE 0 END), 0),"
                " coalesce(sum(CASE WHEN version <= synced_version THEN 1 ELSE 0 END), 0),"
                " (SELECT last_error FROM mirror_outbox WHERE last_error IS NOT NULL ORDER BY updated_at DESC LIMIT 1)"
                " FROM mirror_outbox",
                (failed_after,),
            )
            assert row is not None
            return MirrorStats(int(row[0]), int(row[1]), int(row[2]), row[3])

        return await self._read(q)
