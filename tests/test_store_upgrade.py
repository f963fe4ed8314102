"""A SQLite database written by the first stage opens and upgrades in place, with nothing lost.

``tests/data/stage1.db`` was written by the store as it was at commit f19230c (before the store
was split by concern) with ``tests/data/make_stage1_db.py``; the tests copy it and open the copy.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from sessions_mcp.models import Status
from sessions_mcp.store.migrations import SQLITE_MIGRATIONS
from sessions_mcp.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio

STAGE1 = Path(__file__).parent / "data" / "stage1.db"
TABLES = ["schema_migrations", "sessions", "messages", "changes", "idempotency", "agent_turns", "mirror_outbox"]


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in TABLES}
    finally:
        conn.close()


def schema(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall()
        return {name: " ".join(sql.split()) for name, sql in rows}
    finally:
        conn.close()


@pytest.fixture
def stage1(tmp_path: Path) -> Path:
    db = tmp_path / "stage1.db"
    shutil.copyfile(STAGE1, db)
    return db


async def test_first_stage_database_opens_with_nothing_lost(stage1: Path, tmp_path: Path) -> None:
    before = dump(stage1)
    assert all(before[t] for t in TABLES), "the fixture must hold rows in every table"
    store = SqliteStore(stage1)
    await store.open()
    facts = await store.describe()
    assert facts["migrations"] == [n for n, _ in SQLITE_MIGRATIONS]
    await store.close()
    after = dump(stage1)
    stage1_names = {row[0] for row in before["schema_migrations"]}
    added = [row[0] for row in after.pop("schema_migrations") if row[0] not in stage1_names]
    assert added == [n for n, _ in SQLITE_MIGRATIONS if n not in stage1_names]  # later migrations applied in order
    # opening changed nothing else (the live turn claim is not recovered)
    assert after == {t: rows for t, rows in before.items() if t != "schema_migrations"}

    fresh = tmp_path / "fresh.db"
    new = SqliteStore(fresh)
    await new.open()
    await new.close()
    assert schema(fresh) == schema(stage1)  # same tables, columns and indexes as a new database


async def test_first_stage_rows_read_and_write_through_the_new_store(stage1: Path) -> None:
    raw = dump(stage1)
    store = SqliteStore(stage1)
    await store.open()
    try:
        sessions = {r[0]: r for r in raw["sessions"]}
        for sid, row in sessions.items():
            got = await store.list_messages(row[1], sid, after_seq=0, limit=100)
            assert got is not None
            session, messages, more = got
            assert (session.title, session.status.value, session.last_seq) == (row[2], row[3], row[10])
            stored = sorted((m for m in raw["messages"] if m[0] == sid), key=lambda m: m[1])
            assert [(m.seq, m.id, m.role, m.text) for m in messages] == [(m[1], m[2], m[3], m[4]) for m in stored]
            assert more is False
        listed = await store.list_sessions("alice", statuses=None, query="renamed", after=None, limit=10)
        assert [s.title for s in listed] == ["renamed"]

        # dedupe keys written by the first stage still deduplicate
        again, firsts = await store.create_session(
            owner="alice", title="x", model=None, system=None, agent=None, status=Status.IDLE, dedupe_key="create-0"
        )
        assert again.title == "renamed" and [m.text for m in firsts] == ["hello 0"]
        target = next(s for s in sessions.values() if s[1] == "alice" and s[2] == "renamed")
        appended = await store.append_message(
            "alice", target[0], role="user", parts=[{"type": "text", "text": "next"}], text="next",
            new_status=Status.AWAITING_REPLY,
        )  # fmt: skip
        assert appended is not None and appended[1].seq == target[10] + 1

        done = await store.idem_claim("alice", "create_session", "k-done", "h1", stale_after_ms=60_000)
        assert done is not None and done.state == "done" and done.result == '{"id": "x"}'

        # the turn the first stage left claimed by a process that is gone is failed, once
        running = next(s for s in sessions.values() if s[3] == "running")
        assert await store.turn_recover(host="elsewhere", error="lost") == [(running[0], running[1])]
        row = await store.get_session(running[1], running[0])
        assert row is not None and row.status is Status.FAILED and row.error == "lost"

        stats = await store.mirror_stats(failed_after=1)
        assert (stats.pending, stats.failed, stats.mirrored, stats.last_error) == (3, 1, 1, "remote said no")
    finally:
        await store.close()
    assert store.integrity_check() == "ok"


async def test_database_without_the_newest_migration_upgrades_in_place(stage1: Path) -> None:
    conn = sqlite3.connect(stage1)
    conn.execute("DROP TABLE mirror_outbox")
    conn.execute("DELETE FROM schema_migrations WHERE name = '0003_mirror_outbox'")
    conn.commit()
    conn.close()
    before = dump_without_outbox(stage1)
    store = SqliteStore(stage1)
    await store.open()
    await store.mirror_enqueue("s1", "alice")
    assert (await store.mirror_stats(failed_after=1)).pending == 1
    await store.close()
    assert dump_without_outbox(stage1) == before
    names = [r[0] for r in sqlite3.connect(stage1).execute("SELECT name FROM schema_migrations ORDER BY name")]
    assert names == [n for n, _ in SQLITE_MIGRATIONS]


def dump_without_outbox(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        tables = [t for t in TABLES if t not in ("mirror_outbox", "schema_migrations")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()
