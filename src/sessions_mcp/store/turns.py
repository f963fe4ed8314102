"""Agent turns: which runner answers a session now, under a lease, and what was answered already.

A turn is "run the agent for the user messages of a session up to seq N". At most one turn per
session is claimed at a time, by one runner (a random id per process), under a lease the runner
renews; a finished turn records N as done so nobody runs it again.

Lock order everywhere: the sessions row, then its agent_turns row. The session row lock makes a
claim atomic across PostgreSQL replicas: of two replicas claiming the same turn, the second sees
the first's live claim. Leases are measured with ``now_ms()`` in SQL, which is the database clock
on PostgreSQL (replicas with skewed clocks agree) and the process clock on SQLite.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..models import Status
from .changes import log_change
from .dialect import Tx, marks
from .engine import Engine
from .rows import claim_is_dead, now_ms

log = logging.getLogger(__name__)

_RELEASE = (
    "UPDATE agent_turns SET done_seq = GREATEST(done_seq, upto_seq), runner = NULL, pid = NULL, host = NULL,"
    " lease_until = 0 WHERE session_id = ?"
)


class Turns(Engine):
    """The ``agent_turns`` table."""

    async def turn_claim(
        self, owner: str, session_id: str, *, upto_seq: int, runner: str, pid: int, host: str, lease_ms: int
    ) -> bool:
        """Claim the turn that answers the session's messages up to ``upto_seq``, in one transaction.

        True when ``runner`` now holds it (lease until now + ``lease_ms``). False, writing
        nothing, when the session is unknown to ``owner``, when any runner (this one included)
        holds a live claim on the session, or when a finished turn already answered up to
        ``upto_seq`` or later. A claim whose holder is dead (see :func:`claim_is_dead`) is taken over.
        """

        async def body(tx: Tx) -> bool:
            known = await tx.one("SELECT now_ms() FROM sessions WHERE id = ? AND owner = ? FOR UPDATE",
                                 (session_id, owner))  # fmt: skip
            if known is None:
                return False
            ts = int(known[0])
            row = await tx.one("SELECT done_seq, runner, pid, host, lease_until FROM agent_turns"
                               " WHERE session_id = ? FOR UPDATE", (session_id,))  # fmt: skip
            if row is not None:
                done_seq, holder, claim_pid, claim_host, lease_until = row
                if holder is not None and not claim_is_dead(
                    claim_host=claim_host, claim_pid=claim_pid, lease_until=int(lease_until), host=host, now=ts
                ):
                    return False
                if int(done_seq) >= upto_seq:
                    return False
            await tx.run(
                "INSERT INTO agent_turns (session_id, owner, upto_seq, runner, pid, host, lease_until, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET"
                " upto_seq = excluded.upto_seq, runner = excluded.runner, pid = excluded.pid, host = excluded.host,"
                " lease_until = excluded.lease_until, started_at = excluded.started_at",
                (session_id, owner, upto_seq, runner, pid, host, ts + lease_ms, now_ms()),
            )
            return True

        return await self._write(body)

    async def turn_heartbeat(self, runner: str, session_ids: Sequence[str], *, lease_ms: int) -> list[str]:
        """Extend the leases ``runner`` holds on these sessions to now + ``lease_ms``.

        Returns the ids whose claim ``runner`` still holds *and* whose session status is still
        ``running`` (or ``needs_input``); the runner stops every other turn (interrupted or
        recovered elsewhere).
        """
        ids = list(session_ids)
        if not ids:
            return []
        among = f"session_id IN ({marks(len(ids))})"

        async def body(tx: Tx) -> list[str]:
            await tx.run(f"UPDATE agent_turns SET lease_until = now_ms() + ? WHERE runner = ? AND {among}",
                         (lease_ms, runner, *ids))  # fmt: skip
            rows = await tx.all(
                "SELECT t.session_id FROM agent_turns t JOIN sessions s ON s.id = t.session_id"
                f" WHERE t.runner = ? AND s.status IN (?, ?) AND t.{among}",
                (runner, Status.RUNNING.value, Status.NEEDS_INPUT.value, *ids),
            )
            return [r[0] for r in rows]

        return await self._write(body)

    async def turn_release(self, session_id: str, *, runner: str) -> int:
        """End ``runner``'s claim on the session, recording its ``upto_seq`` as done.

        Returns the seq of the session's newest user message (0 when it has none or is gone),
        so the runner can tell whether a message arrived during the turn and claim the next one.
        Releasing a claim that ``runner`` does not hold changes nothing.
        """

        async def body(tx: Tx) -> int:
            await tx.run(_RELEASE + " AND runner = ?", (session_id, runner))
            row = await tx.one("SELECT max(seq) FROM messages WHERE session_id = ? AND role = 'user'", (session_id,))
            return int(row[0] or 0) if row else 0

        return await self._write(body)

    async def _recover_turns(self, tx: Tx, host: str, error: str) -> list[tuple[str, str]]:
        """:meth:`turn_recover` inside a write transaction (engines also run it when they open)."""
        now_row = await tx.one("SELECT now_ms()")
        ts = int(now_row[0]) if now_row else now_ms()
        candidates = await tx.all(
            "SELECT session_id, owner, pid, host, lease_until FROM agent_turns WHERE runner IS NOT NULL"
        )
        failed: list[tuple[str, str]] = []
        for session_id, owner, claim_pid, claim_host, lease_until in candidates:
            if not claim_is_dead(
                claim_host=claim_host, claim_pid=claim_pid, lease_until=int(lease_until), host=host, now=ts
            ):
                continue
            # lock in the usual order, then check again: the holder may have renewed meanwhile
            status = await tx.one("SELECT status FROM sessions WHERE id = ? FOR UPDATE", (session_id,))
            again = await tx.one("SELECT pid, host, lease_until FROM agent_turns WHERE session_id = ?"
                                 " AND runner IS NOT NULL FOR UPDATE", (session_id,))  # fmt: skip
            if again is None or not claim_is_dead(
                claim_host=again[1], claim_pid=again[0], lease_until=int(again[2]), host=host, now=ts
            ):
                continue
            await tx.run(_RELEASE, (session_id,))
            if status is None or status[0] not in (Status.RUNNING.value, Status.NEEDS_INPUT.value):
                continue
            await tx.run("UPDATE sessions SET status = ?, error = ?, updated_at = GREATEST(updated_at, ?) WHERE id = ?",
                         (Status.FAILED.value, error, now_ms(), session_id))  # fmt: skip
            await log_change(tx, session_id, owner, "status", self.writer_id)
            failed.append((session_id, owner))
            log.warning("agent turn of local session %s was cut off by a dead process; marked failed", session_id)
        return failed

    async def turn_recover(self, *, host: str, error: str) -> list[tuple[str, str]]:
        """Fail the turns whose runner died, in one transaction.

        A claim is dead when :func:`claim_is_dead` says so (lease expired, or held on ``host``
        by a process id that no longer exists). Each dead claim is released (its turn recorded
        as done, never run again) and, when its session is still ``running``, the session
        becomes ``failed`` with ``error`` and a ``status`` change is logged. Returns the
        ``(session_id, owner)`` of the sessions it failed. :meth:`open` calls it once with
        :func:`this_host` and :data:`TURN_LOST`, so a turn cut off by a crash is failed the next
        time any process opens the database; agent runners also call it periodically.
        """
        return await self._write(lambda tx: self._recover_turns(tx, host, error))

    async def turn_orphans(self, *, agents: Sequence[str], older_than_ms: int) -> list[tuple[str, str]]:
        """Sessions waiting for a turn that nobody started.

        ``(session_id, owner)`` of up to 100 sessions whose status is ``running``, whose agent is
        one of ``agents``, that were last updated more than ``older_than_ms`` ago, and whose
        newest user message no claim holds or has answered (no live claim, ``done_seq`` below
        it). That happens when the process that stored the message died, or its call was
        cancelled, before the turn was claimed. Runners claim these turns like any other.
        """
        names = list(agents)
        if not names:
            return []
        statement = (
            "SELECT s.id, s.owner FROM sessions s LEFT JOIN agent_turns t ON t.session_id = s.id"
            f" WHERE s.status = ? AND s.agent IN ({marks(len(names))}) AND s.updated_at < ?"
            " AND (t.session_id IS NULL OR (t.runner IS NULL AND t.done_seq < (SELECT max(m.seq) FROM messages m"
            " WHERE m.session_id = s.id AND m.role = 'user'))) LIMIT 100"
        )
        args = (Status.RUNNING.value, *names, now_ms() - older_than_ms)

        async def q(tx: Tx) -> list[tuple[str, str]]:
            return [(r[0], r[1]) for r in await tx.all(statement, args)]

        return await self._read(q)
