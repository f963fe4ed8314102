"""Idempotency records: a retried call with the same key gets the first call's result.

While a record is ``pending`` its ``result`` column holds the claim's owner (``pid@host#writer``,
see :func:`sessions_mcp.idempotent.owner_tag`), so a claim whose process died can be taken over
at once; ``result`` becomes the call's result when it is ``done``. (No new column: a store
written by this version stays readable by the previous one.)"""

from __future__ import annotations

from .dialect import Retry, Tx
from .engine import Engine
from .rows import IdemRecord, now_ms

_KEY = "WHERE principal = ? AND tool = ? AND key = ?"


class Idempotency(Engine):
    """Claiming, completing and releasing idempotency keys (for every backend)."""

    async def idem_claim(
        self,
        principal: str,
        tool: str,
        key: str,
        params_hash: str,
        *,
        stale_after_ms: int,
        owner: str | None = None,
    ) -> IdemRecord | None:
        """Claim a key for ``owner``. Returns None when the caller now owns it (new, or stale and
        taken over); otherwise the existing record (a pending one's ``result`` is its owner),
        which the caller must not overwrite."""

        async def body(tx: Tx) -> IdemRecord | None:
            ts = now_ms()
            inserted = await tx.run(
                "INSERT INTO idempotency (principal, tool, key, params_hash, state, result, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?) ON CONFLICT DO NOTHING",
                (principal, tool, key, params_hash, owner, ts, ts),
            )
            if inserted:
                return None
            row = await tx.one(f"SELECT params_hash, state, result, updated_at FROM idempotency {_KEY} FOR UPDATE",
                               (principal, tool, key))  # fmt: skip
            if row is None:  # released between our insert attempt and this read: claim again
                raise Retry("idempotency record vanished")
            rec = IdemRecord(params_hash=row[0], state=row[1], result=row[2], updated_at=row[3])
            if rec.state == "pending" and rec.params_hash == params_hash and ts - rec.updated_at > stale_after_ms:
                await tx.run(
                    f"UPDATE idempotency SET updated_at = ?, result = ? {_KEY}", (ts, owner, principal, tool, key)
                )
                return None
            return rec

        return await self._write(body)

    async def idem_takeover(self, principal: str, tool: str, key: str, *, previous: str | None, owner: str) -> bool:
        """Take over a pending claim whose owner is ``previous`` (its process is gone); False when
        the record changed meanwhile (completed, released, or taken by someone else)."""

        async def body(tx: Tx) -> bool:
            match = "result IS NULL" if previous is None else "result = ?"
            args = (owner, now_ms(), principal, tool, key) + (() if previous is None else (previous,))
            changed = await tx.run(
                f"UPDATE idempotency SET result = ?, updated_at = ? {_KEY} AND state = 'pending' AND {match}", args
            )
            return changed == 1

        return await self._write(body)

    async def idem_complete(self, principal: str, tool: str, key: str, result: str) -> None:
        """Store the result of a claimed key."""
        self._check_text(result)

        async def body(tx: Tx) -> None:
            await tx.run(
                f"UPDATE idempotency SET state = 'done', result = ?, updated_at = ? {_KEY}",
                (result, now_ms(), principal, tool, key),
            )
            # keys live at least 24 h; prune older ones while we hold the write lock anyway
            await tx.run("DELETE FROM idempotency WHERE updated_at < ?", (now_ms() - 7 * 86_400_000,))

        await self._write(body)

    async def idem_release(self, principal: str, tool: str, key: str) -> None:
        """Forget a pending claim after the call failed (so the caller may retry)."""

        async def body(tx: Tx) -> None:
            await tx.run(f"DELETE FROM idempotency {_KEY} AND state = 'pending'", (principal, tool, key))

        await self._write(body)
