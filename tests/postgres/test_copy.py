"""``sessions-mcp db copy``: a SQLite store moves into PostgreSQL with ids and seqs intact, verified."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from sessions_mcp.models import Status
from sessions_mcp.store.base import this_host
from sessions_mcp.store.copy import run_copy
from sessions_mcp.store.postgres import PostgresStore
from sessions_mcp.store.sqlite import SqliteStore

from ..conftest import server_command


async def _fill(path: Path) -> dict[str, Any]:
    store = SqliteStore(path)
    await store.open()
    try:
        ids = []
        for owner in ("alice", "bob"):
            for i in range(3):
                row, _ = await store.create_session(
                    owner=owner, title=f"{owner} {i}", model="m", system="sys", agent=None,
                    status=Status.AWAITING_REPLY, first_message=("user", [{"type": "text", "text": "q"}], "q"),
                    dedupe_key=f"{owner}-{i}",
                )  # fmt: skip
                for n in range(4):
                    await store.append_message(
                        owner, row.id, role="assistant", parts=[{"type": "text", "text": f"a{n} ✓"}],
                        text=f"a{n} ✓", new_status=Status.IDLE, dedupe_key=f"{row.id}-{n}",
                    )  # fmt: skip
                ids.append((owner, row.id))
        await store.idem_claim("alice", "send_message", "k", "hash", stale_after_ms=1000)
        await store.idem_complete("alice", "send_message", "k", '{"message_id": "x"}')
        owner, sid = ids[0]
        await store.turn_claim(owner, sid, upto_seq=1, runner="r", pid=os.getpid(), host=this_host(), lease_ms=60_000)
        await store.turn_release(sid, runner="r")
        await store.mirror_enqueue(sid, owner)
        snapshot: dict[str, Any] = {}
        for owner, sid in ids:
            got = await store.list_messages(owner, sid, after_seq=0, limit=100)
            assert got is not None
            snapshot[sid] = (owner, got[0], got[1])
        return snapshot
    finally:
        await store.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([*server_command(), "db", "copy", *args], capture_output=True, text=True, env=env, timeout=60)


def _with_password(url: str, password: str) -> str:
    return url.replace("://postgres@", f"://postgres:{password}@", 1)


def test_copy_moves_everything_and_verifies(tmp_path: Path, pg_url: str) -> None:
    src = tmp_path / "sessions.db"
    snapshot = asyncio.run(_fill(src))
    target = _with_password(pg_url, "hunter2")  # trust auth ignores it; it must never be printed
    done = _cli(str(src), target)
    assert done.returncode == 0, done.stderr
    assert "hunter2" not in done.stdout + done.stderr
    for table, rows in (
        ("sessions", 6),
        ("messages", 30),
        ("idempotency", 1),
        ("agent_turns", 1),
        ("mirror_outbox", 1),
    ):
        assert any(line.split()[:2] == [table, str(rows)] and "verified" in line for line in done.stdout.splitlines())

    async def check() -> None:
        store = PostgresStore(pg_url)
        await store.open()
        try:
            for sid, (owner, session, messages) in snapshot.items():
                got = await store.list_messages(owner, sid, after_seq=0, limit=100)
                assert got is not None
                assert got[0] == session
                assert got[1] == messages
                assert await store.get_session("mallory", sid) is None
            rec = await store.idem_claim("alice", "send_message", "k", "hash", stale_after_ms=1000)
            assert rec is not None and rec.state == "done"
            # the copied store carries on: next seq, dedupe keys still known
            owner, sid = next((o, s) for s, (o, _, _) in snapshot.items())
            appended = await store.append_message(owner, sid, role="user", parts=[], text="next", new_status=None)
            assert appended is not None and appended[1].seq == 6
            again = await store.append_message(
                owner, sid, role="assistant", parts=[], text="dup", new_status=None, dedupe_key=f"{sid}-0"
            )
            assert again is not None and again[1].text == "a0 ✓"
            row, _ = await store.create_session(
                owner=owner, title=None, model=None, system=None, agent=None, status=Status.IDLE, dedupe_key="alice-0"
            )
            assert row.id in snapshot
        finally:
            await store.close()

    asyncio.run(check())

    refused = _cli(str(src), target)
    assert refused.returncode == 2
    assert "not empty" in refused.stderr and "--merge" in refused.stderr and "hunter2" not in refused.stderr
    merged = _cli(str(src), target, "--merge")
    assert merged.returncode == 0, merged.stderr
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone() == (31,)


def test_count_mismatch_rolls_everything_back(tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "sessions.db"
    asyncio.run(_fill(src))

    async def prepare() -> None:
        store = PostgresStore(pg_url)
        await store.open()
        await store.close()

    asyncio.run(prepare())
    with psycopg.connect(pg_url, autocommit=True) as conn:  # a target that silently drops some rows
        conn.execute(
            "CREATE FUNCTION drop_some() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN IF NEW.text = 'a3 ✓' THEN RETURN NULL; END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER drop_some BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION drop_some()")
    assert run_copy(str(src), pg_url) == 1
    err = capsys.readouterr().err
    assert "verification failed: messages: 30 rows in the source, 24 in the target" in err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM sessions").fetchone() == (0,)


def test_copy_refuses_bad_arguments(tmp_path: Path, pg_url: str) -> None:
    missing = _cli(str(tmp_path / "nope.db"), pg_url)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    not_pg = _cli(str(tmp_path / "nope.db"), str(tmp_path / "other.db"))
    assert not_pg.returncode == 2 and "postgresql://" in not_pg.stderr
    assert not (tmp_path / "nope.db").exists()


@pytest.mark.anyio
async def test_first_stage_database_copies_and_reads_the_same(pg_url: str, tmp_path: Path) -> None:
    """The SQLite file the first stage wrote (tests/data/stage1.db) moves into PostgreSQL unchanged."""
    source = tmp_path / "stage1.db"
    source.write_bytes((Path(__file__).parent.parent / "data" / "stage1.db").read_bytes())
    sqlite_store = SqliteStore(source)
    await sqlite_store.open()
    try:
        owners = {"alice", "bob"}
        before = {
            o: await sqlite_store.list_sessions(o, statuses=None, query=None, after=None, limit=50) for o in owners
        }
        pages = {
            s.id: await sqlite_store.list_messages(o, s.id, after_seq=0, limit=100) for o in owners for s in before[o]
        }
    finally:
        await sqlite_store.close()
    assert await asyncio.to_thread(run_copy, str(source), pg_url) == 0
    pg_store = PostgresStore(pg_url)
    await pg_store.open()
    try:
        for owner in owners:
            assert await pg_store.list_sessions(owner, statuses=None, query=None, after=None, limit=50) == before[owner]
        for sid, page in pages.items():
            assert page is not None
            assert await pg_store.list_messages(page[0].owner, sid, after_seq=0, limit=100) == page
        done = await pg_store.idem_claim("alice", "create_session", "k-done", "h1", stale_after_ms=60_000)
        assert done is not None and done.result == '{"id": "x"}'
    finally:
        await pg_store.close()
