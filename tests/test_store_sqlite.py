"""The SQLite store: pragmas, crash durability, many writer processes, hostile files."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sessions_mcp.errors import SchemaTooNew, StoreBusy, StoreUnavailable
from sessions_mcp.models import Status
from sessions_mcp.server import build_server
from sessions_mcp.store.sqlite import SqliteStore

pytestmark = pytest.mark.anyio


async def test_pragmas_on_every_connection(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db", busy_timeout_s=7)
    await store.open()
    facts = await store.describe()
    assert facts["pragmas"] == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 7000}
    assert facts["schema_version"] == facts["known_migrations"][-1]
    await store.close()


async def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    for _ in range(2):
        store = SqliteStore(db)
        await store.open()
        await store.close()
    names = [r[0] for r in sqlite3.connect(db).execute("SELECT name FROM schema_migrations ORDER BY name")]
    from sessions_mcp.store.migrations import SQLITE_MIGRATIONS

    assert names == [n for n, _ in SQLITE_MIGRATIONS]


async def test_sequences_are_per_session_and_pages_stable(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    a, _ = await store.create_session(owner="u", title="a", model=None, system=None, agent=None, status=Status.IDLE)
    b, _ = await store.create_session(owner="u", title="b", model=None, system=None, agent=None, status=Status.IDLE)
    for i in range(5):
        for s in (a, b):
            await store.append_message("u", s.id, role="user", parts=[], text=f"{s.title}{i}", new_status=None)
    got = await store.list_messages("u", a.id, after_seq=2, limit=2)
    assert got is not None
    _, rows, more = got
    assert [r.seq for r in rows] == [3, 4] and more is True
    assert [r.text for r in rows] == ["a2", "a3"]
    assert await store.list_messages("someone-else", a.id, after_seq=0, limit=5) is None
    await store.close()


CHILD = textwrap.dedent(
    """
    import sys, anyio
    from sessions_mcp.models import Status
    from sessions_mcp.store.sqlite import SqliteStore

    async def main(path):
        store = SqliteStore(path)
        s, _ = await store.create_session(owner="u", title="crash", model=None, system=None, agent=None,
                                          status=Status.IDLE)
        print("session", s.id, flush=True)
        i = 0
        while True:
            await store.append_message("u", s.id, role="user", parts=[{"type": "text", "text": str(i)}],
                                       text=str(i), new_status=Status.AWAITING_REPLY)
            print("acked", i, flush=True)
            i += 1

    anyio.run(main, sys.argv[1])
    """
)


def test_sigkill_while_writing_loses_no_acknowledged_message(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    rng = random.Random(7)
    for round_ in range(8):
        db = tmp_path / f"crash{round_}.db"
        proc = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        session = proc.stdout.readline().split()[1]
        target = rng.randint(5, 60)
        acked = -1
        while acked < target:
            line = proc.stdout.readline()
            assert line.startswith("acked"), line
            acked = int(line.split()[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in proc.stdout:  # acks already written before the kill count too
            if line.startswith("acked"):
                acked = int(line.split()[1])
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        texts = [r[0] for r in conn.execute("SELECT text FROM messages WHERE session_id = ? ORDER BY seq", (session,))]
        assert texts[: acked + 1] == [str(i) for i in range(acked + 1)]
        (last_seq, count) = conn.execute(
            "SELECT last_seq, message_count FROM sessions WHERE id = ?", (session,)
        ).fetchone()
        assert last_seq == count == len(texts)
        conn.close()


WRITERS = textwrap.dedent(
    """
    import sys, anyio
    from sessions_mcp.store.sqlite import SqliteStore

    async def main(path, sid, who, n):
        store = SqliteStore(path, busy_timeout_s=10)
        for i in range(int(n)):
            r = await store.append_message("u", sid, role="user", parts=[], text=f"{who}-{i}", new_status=None)
            assert r is not None
        await store.close()

    anyio.run(main, *sys.argv[1:])
    """
)


async def test_eight_writer_processes_no_errors_no_gaps(tmp_path: Path) -> None:
    db = tmp_path / "many.db"
    store = SqliteStore(db)
    s, _ = await store.create_session(owner="u", title="w", model=None, system=None, agent=None, status=Status.IDLE)
    await store.close()
    script = tmp_path / "w.py"
    script.write_text(WRITERS)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(db), s.id, f"p{i}", "60"], stderr=subprocess.PIPE)
        for i in range(8)
    ]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=120)
        if p.returncode != 0:
            errors.append(err.decode())
    assert errors == []
    conn = sqlite3.connect(db)
    seqs = [r[0] for r in conn.execute("SELECT seq FROM messages WHERE session_id = ? ORDER BY seq", (s.id,))]
    assert seqs == list(range(1, 8 * 60 + 1))
    texts = {r[0] for r in conn.execute("SELECT text FROM messages")}
    assert texts == {f"p{i}-{j}" for i in range(8) for j in range(60)}


async def test_locked_database_is_retried_not_reported(tmp_path: Path) -> None:
    """A write lock held by another process for a while (within the busy timeout) delays us; it never
    becomes an error. Longer than one busy timeout is StoreBusy (issue 19: a call waits at most that)."""
    db = tmp_path / "lock.db"
    store = SqliteStore(db, busy_timeout_s=1.5)
    s, _ = await store.create_session(owner="u", title="l", model=None, system=None, agent=None, status=Status.IDLE)
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    async def hold_then_release() -> None:
        await anyio.sleep(0.6)
        holder.execute("COMMIT")

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold_then_release)
        r = await store.append_message("u", s.id, role="user", parts=[], text="after the lock", new_status=None)
    assert r is not None and r[1].text == "after the lock"
    holder.close()
    await store.close()


async def test_lock_never_released_becomes_store_busy(tmp_path: Path) -> None:
    db = tmp_path / "stuck.db"
    store = SqliteStore(db, busy_timeout_s=0.1)
    s, _ = await store.create_session(owner="u", title="l", model=None, system=None, agent=None, status=Status.IDLE)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreBusy, match="locked by another process"):
        await store.append_message("u", s.id, role="user", parts=[], text="x", new_status=None)
    holder.execute("ROLLBACK")
    holder.close()
    await store.close()


async def test_newer_schema_is_refused_with_advice(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    store = SqliteStore(db)
    await store.open()
    await store.close()
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future', 0)")
    conn.commit()
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer sessions-mcp"):
        await SqliteStore(db).open()


async def test_corrupt_file_is_reported_and_kept(tmp_path: Path) -> None:
    db = tmp_path / "junk.db"
    junk = b"this is not a database at all" * 100
    db.write_bytes(junk)
    with pytest.raises(StoreUnavailable, match="damaged or not a sessions-mcp database"):
        await SqliteStore(db).open()
    assert db.read_bytes() == junk


async def test_unusable_path_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(StoreUnavailable, match="SESSIONS_MCP_LOCAL__DB"):
        await SqliteStore(blocker / "sub" / "s.db").open()


@pytest.mark.parametrize("era", ["auto", "legacy"])
async def test_server_keeps_serving_with_a_broken_store(tmp_path: Path, era: str, make_settings: Any) -> None:
    db = tmp_path / "broken.db"
    db.write_bytes(b"garbage" * 500)
    async with Client(build_server(make_settings(local={"db": str(db)})), mode=era) as c:
        for _ in range(2):
            r = await c.call_tool("create_session", {"title": "x"})
            assert r.is_error
            text = r.content[0].text  # type: ignore[union-attr]
            assert "damaged" in text and "SESSIONS_MCP_LOCAL__DB" in text
        assert len((await c.list_tools()).tools) == 8
    assert db.read_bytes() == b"garbage" * 500


async def test_read_only_database_gives_clear_error(tmp_path: Path) -> None:
    """A store file the process may not write answers a clear error and stays as it was.

    Root ignores file modes, so as root the file is made immutable (chattr +i) instead of 0444.
    """
    db = tmp_path / "ro.db"
    writable = SqliteStore(db)
    await writable.open()
    await writable.close()
    before = db.read_bytes()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(db)], check=True)
    else:
        db.chmod(0o444)
    try:
        with pytest.raises(StoreUnavailable, match=r"read-only.*SESSIONS_MCP_LOCAL__DB"):
            await SqliteStore(db).create_session(
                owner="u", title="t", model=None, system=None, agent=None, status=Status.IDLE
            )
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], check=True)
        db.chmod(0o644)
    assert db.read_bytes() == before
