"""Named-agent state on PostgreSQL: the same statements as SQLite (store/agent_sessions.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sessions_mcp.models import Status

pytestmark = pytest.mark.anyio


async def test_agent_state_and_pending_round_trip_and_keep_a_needs_input_turn_alive(
    stores: Callable[[], Any],
) -> None:
    store = await stores()
    row, _ = await store.create_session(
        owner="o", title=None, model=None, system=None, agent="gemini", status=Status.RUNNING,
        first_message=("user", [{"type": "text", "text": "hi"}], "hi"),
    )  # fmt: skip
    assert await store.agent_session(row.id) is None
    await store.agent_session_put(row.id, workdir="/w")
    await store.agent_session_put(row.id, state={"acp_session_id": "s-1"})
    await store.agent_session_put(row.id, pending={"id": "p1", "kind": "permission"})
    got = await store.agent_session(row.id)
    assert (got.workdir, got.state, got.pending) == (
        "/w",
        {"acp_session_id": "s-1"},
        {"id": "p1", "kind": "permission"},
    )
    await store.agent_session_put(row.id, clear_pending=True)
    got = await store.agent_session(row.id)
    assert (got.workdir, got.state, got.pending) == ("/w", {"acp_session_id": "s-1"}, None)
    # a turn waiting for input keeps its claim (the heartbeat must not stop it)
    assert await store.turn_claim("o", row.id, upto_seq=1, runner="r", pid=1, host="elsewhere", lease_ms=60_000)
    await store.update_session("o", row.id, status=Status.NEEDS_INPUT)
    assert await store.turn_heartbeat("r", [row.id], lease_ms=60_000) == [row.id]
    assert [
        s.id for s in await store.list_sessions("o", statuses=[Status.NEEDS_INPUT], query=None, after=None, limit=5)
    ] == [row.id]
