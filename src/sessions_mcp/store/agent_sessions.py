"""Named-agent state per session: the folder the agent works in, the agent's own ids (its ACP
session id) and the permission request or question it waits on (``needs_input``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .dialect import Tx
from .engine import Engine


@dataclass(frozen=True, slots=True)
class AgentSessionRow:
    """What the local backend keeps about a session of a named agent."""

    workdir: str | None
    state: dict[str, Any]
    """The agent's own ids (e.g. ``acp_session_id``), JSON."""
    pending: dict[str, Any] | None
    """The request the agent waits on (a ``models.Pending`` as JSON), or None."""


class AgentSessions(Engine):
    """The ``agent_sessions`` table (migration ``0004_agent_sessions``)."""

    async def agent_session(self, session_id: str) -> AgentSessionRow | None:
        """The named-agent state of a session, or None when nothing was stored."""

        async def q(tx: Tx) -> AgentSessionRow | None:
            row = await tx.one("SELECT workdir, state, pending FROM agent_sessions WHERE session_id = ?", (session_id,))
            if row is None:
                return None
            return AgentSessionRow(row[0], json.loads(row[1] or "{}"), json.loads(row[2]) if row[2] else None)

        return await self._read(q)

    async def agent_session_put(
        self,
        session_id: str,
        *,
        workdir: str | None = None,
        state: dict[str, Any] | None = None,
        pending: dict[str, Any] | None = None,
        clear_pending: bool = False,
    ) -> None:
        """Create or update a session's row; a None argument keeps that column (``clear_pending`` empties it)."""
        new_pending = None if clear_pending or pending is None else json.dumps(pending)
        keep_pending = not clear_pending and pending is None
        args = (session_id, workdir, json.dumps(state or {}), new_pending, state is None, keep_pending)

        async def body(tx: Tx) -> None:
            await tx.run(
                "INSERT INTO agent_sessions (session_id, workdir, state, pending) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET"
                " workdir = COALESCE(excluded.workdir, agent_sessions.workdir),"
                " state = CASE WHEN ? THEN agent_sessions.state ELSE excluded.state END,"
                " pending = CASE WHEN ? THEN agent_sessions.pending ELSE excluded.pending END",
                args,
            )

        await self._write(body)
