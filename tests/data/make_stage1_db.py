"""Write ``stage1.db``: a SQLite store as the first stage (commit f19230c) left it.

Run from a checkout of that commit (``git worktree add /tmp/stage1 f19230c``, then
``/tmp/stage1/.venv/bin/python tests/data/make_stage1_db.py tests/data/stage1.db`` or any
interpreter with that checkout's ``src`` on ``sys.path``). The file is committed, so the test that
opens it (``tests/test_store_upgrade.py``) always sees what the old code wrote, whatever the store
code looks like now. Every table holds rows: sessions in each status, messages with parts and
dedupe keys, idempotency records (pending and done), agent turns (released and still claimed by a
process that is gone), mirror outbox rows (mirrored, pending, failing) and change-log rows.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import anyio

from sessions_mcp.models import Status
from sessions_mcp.store.sqlite import SqliteStore


async def main(path: Path) -> None:
    path.unlink(missing_ok=True)
    store = SqliteStore(path)
    await store.open()
    sessions = []
    for i, status in enumerate([Status.IDLE, Status.AWAITING_REPLY, Status.RUNNING, Status.FAILED]):
        first = ("user", [{"type": "text", "text": f"hello {i}"}], f"hello {i}")
        row, _ = await store.create_session(
            owner="alice" if i % 2 == 0 else "bob",
            title=f"session {i} ünïcode",
            model="mock-model" if i else None,
            system="be brief" if i == 1 else None,
            agent="guardian" if i == 2 else None,
            status=Status.IDLE,
            first_message=first,  # type: ignore[arg-type]
            dedupe_key=f"create-{i}",
        )
        sessions.append(row)
        for j in range(3 + i):
            role = "assistant" if j % 2 == 0 else "user"
            await store.append_message(
                row.owner,
                row.id,
                role=role,
                parts=[{"type": "text", "text": f"{role} {j}"}, {"type": "data", "data": {"n": j}}],
                text=f"{role} {j}",
                new_status=status if j == 2 + i else None,
                error="it broke" if status is Status.FAILED and j == 2 + i else None,
                dedupe_key=f"msg-{i}-{j}" if j % 3 == 0 else None,
            )
    await store.update_session("alice", sessions[0].id, title="renamed")
    gone, _ = await store.create_session(
        owner="alice", title="deleted", model=None, system=None, agent=None, status=Status.IDLE
    )
    await store.delete_session("alice", gone.id)

    await store.idem_claim("alice", "create_session", "k-done", "h1", stale_after_ms=60_000)
    await store.idem_complete("alice", "create_session", "k-done", '{"id": "x"}')
    await store.idem_claim("bob", "send_message", "k-pending", "h2", stale_after_ms=60_000)

    running = sessions[2]
    assert await store.turn_claim(
        running.owner, running.id, upto_seq=2, runner="r1", pid=999_999_999, host="elsewhere", lease_ms=10**12
    )
    await store.turn_release(running.id, runner="r1")
    assert await store.turn_claim(
        running.owner, running.id, upto_seq=4, runner="r2", pid=999_999_999, host="elsewhere", lease_ms=10**12
    )

    for s in sessions:
        await store.mirror_enqueue(s.id, s.owner)
    await store.mirror_progress(sessions[0].id, created=True, title="renamed", sent_seq=3, parent="p-1")
    await store.mirror_done(sessions[0].id, 1)
    await store.mirror_failed(sessions[1].id, "remote said no", retry_at_ms=1)
    await store.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("VACUUM")
    conn.close()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("stage1.db")))
