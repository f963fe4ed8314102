"""The PostgreSQL store itself: migrations, races between replicas, the change log, turn claims."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import psycopg
import pytest

from sessions_mcp.errors import SchemaTooNew, StoreUnavailable
from sessions_mcp.models import Status
from sessions_mcp.store import create_store
from sessions_mcp.store.base import TURN_LOST, this_host
from sessions_mcp.store.migrations import SQLITE_MIGRATIONS
from sessions_mcp.store.postgres import POSTGRES_MIGRATIONS, PostgresStore, redact_url

pytestmark = pytest.mark.anyio

Open = Callable[[], Any]


def test_migration_names_match_sqlite() -> None:
    """A migration added to one store and not the other fails here."""
    assert [n for n, _ in POSTGRES_MIGRATIONS] == [n for n, _ in SQLITE_MIGRATIONS]


async def test_postgres_url_selects_this_store(pg_settings: Callable[..., Any], pg_url: str) -> None:
    store = create_store(pg_settings().local)
    assert isinstance(store, PostgresStore)


def test_importing_the_package_does_not_import_the_driver() -> None:
    code = "import sys, sessions_mcp.server, sessions_mcp.store; print('psycopg' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


async def test_replicas_starting_together_migrate_once(stores: Open, pg_url: str) -> None:
    opened: list[PostgresStore] = []

    async def one() -> None:
        opened.append(await stores())

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(one)
    facts = await opened[0].describe()
    assert facts["migrations"] == [n for n, _ in POSTGRES_MIGRATIONS]
    assert facts["kind"] == "postgres" and facts["schema_version"] == POSTGRES_MIGRATIONS[-1][0]
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT name, count(*) FROM schema_migrations GROUP BY name").fetchall()
    assert sorted(rows) == [(n, 1) for n, _ in POSTGRES_MIGRATIONS]


async def test_database_from_a_newer_version_is_refused(stores: Open, pg_url: str) -> None:
    await stores()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES ('9999_from_the_future', 0)")
    newer = PostgresStore(pg_url)
    with pytest.raises(SchemaTooNew, match=r"9999_from_the_future.*upgrade sessions-mcp"):
        await newer.open()
    await newer.close()


async def test_password_never_appears_in_location_or_errors() -> None:
    secret = "s3cret-Pa55"
    for url in (
        f"postgresql://alice:{secret}@127.0.0.1:1/db",
        f"postgresql://alice@127.0.0.1:1/db?password={secret}&sslmode=disable",
        f"postgresql://alice:{secret}@127.0.0.1:notaport/db",
    ):
        store = PostgresStore(url, connect_timeout_s=2)
        assert secret not in store.location and "***" in store.location
        with pytest.raises(StoreUnavailable) as info:
            await store.open()
        assert secret not in str(info.value)
        assert "SESSIONS_MCP_LOCAL__DB" in str(info.value)
        await store.close()
    assert redact_url("postgresql://bob:x@h/db") == "postgresql://bob:***@h/db"


async def test_owner_isolation(stores: Open) -> None:
    store: PostgresStore = await stores()
    row, _ = await store.create_session(
        owner="alice", title="mine", model=None, system=None, agent=None, status=Status.IDLE
    )
    assert await store.get_session("mallory", row.id) is None
    assert await store.append_message("mallory", row.id, role="user", parts=[], text="x", new_status=None) is None
    assert await store.list_messages("mallory", row.id, after_seq=0, limit=10) is None
    assert await store.list_sessions("mallory", statuses=None, query=None, after=None, limit=10) == []
    assert not await store.delete_session("mallory", row.id)
    assert (await store.get_session("alice", row.id)) is not None


async def test_concurrent_writers_on_three_replicas_lose_nothing(stores: Open) -> None:
    replicas: list[PostgresStore] = [await stores() for _ in range(3)]
    sessions = []
    for i in range(2):
        row, _ = await replicas[i].create_session(
            owner="team", title=f"s{i}", model=None, system=None, agent=None, status=Status.IDLE
        )
        sessions.append(row.id)
    per_writer = 25

    async def writer(r: int, w: int) -> None:
        for n in range(per_writer):
            sid = sessions[n % 2]
            text = f"r{r}-w{w}-n{n}"
            got = await replicas[r].append_message(
                "team", sid, role="user", parts=[{"type": "text", "text": text}], text=text, new_status=None
            )
            assert got is not None

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for r in range(3):
            for w in range(3):
                tg.start_soon(writer, r, w)
    elapsed = time.monotonic() - started
    total = 3 * 3 * per_writer
    texts: list[str] = []
    for sid in sessions:
        result = await replicas[2].list_messages("team", sid, after_seq=0, limit=1000)
        assert result is not None
        session, msgs, more = result
        assert not more
        assert [m.seq for m in msgs] == list(range(1, len(msgs) + 1)), "seqs must be gap-free"
        assert session.last_seq == session.message_count == len(msgs)
        assert len({m.id for m in msgs}) == len(msgs)
        texts += [m.text for m in msgs]
    assert sorted(texts) == sorted(f"r{r}-w{w}-n{n}" for r in range(3) for w in range(3) for n in range(per_writer))
    print(f"\n{total} appends from 9 writers on 3 replicas in {elapsed:.2f}s ({total / elapsed:.0f}/s)")


async def test_dedupe_keys_hold_across_replicas(stores: Open) -> None:
    replicas: list[PostgresStore] = [await stores() for _ in range(3)]
    created: list[str] = []
    appended: list[str] = []

    async def create(r: int) -> None:
        row, _ = await replicas[r].create_session(
            owner="o", title="t", model=None, system=None, agent=None, status=Status.AWAITING_REPLY,
            first_message=("user", [{"type": "text", "text": "hi"}], "hi"), dedupe_key="create-1",
        )  # fmt: skip
        created.append(row.id)

    async with anyio.create_task_group() as tg:
        for r in range(3):
            tg.start_soon(create, r)
    assert len(set(created)) == 1

    async def append(r: int) -> None:
        got = await replicas[r].append_message(
            "o", created[0], role="user", parts=[], text="again", new_status=None, dedupe_key="send-1"
        )
        assert got is not None
        appended.append(got[1].id)

    async with anyio.create_task_group() as tg:
        for r in range(3):
            tg.start_soon(append, r)
    assert len(set(appended)) == 1
    result = await replicas[0].list_messages("o", created[0], after_seq=0, limit=10)
    assert result is not None and [m.text for m in result[1]] == ["hi", "again"]


async def test_idempotency_claim_has_one_winner(stores: Open) -> None:
    replicas: list[PostgresStore] = [await stores() for _ in range(3)]
    results: list[Any] = []

    async def claim(r: int) -> None:
        results.append(await replicas[r % 3].idem_claim("p", "send_message", "k1", "h", stale_after_ms=60_000))

    async with anyio.create_task_group() as tg:
        for r in range(6):
            tg.start_soon(claim, r)
    assert sum(r is None for r in results) == 1
    await replicas[1].idem_complete("p", "send_message", "k1", '{"ok": true}')
    rec = await replicas[2].idem_claim("p", "send_message", "k1", "h", stale_after_ms=60_000)
    assert rec is not None and rec.state == "done" and rec.result == '{"ok": true}'
    assert (await replicas[0].idem_claim("p", "send_message", "k2", "h", stale_after_ms=60_000)) is None
    await replicas[0].idem_release("p", "send_message", "k2")
    assert (await replicas[1].idem_claim("p", "send_message", "k2", "h", stale_after_ms=60_000)) is None


async def test_write_on_one_replica_is_seen_by_another_through_notify(stores: Open) -> None:
    """With the safety poll off, only NOTIFY can tell replica ``a`` of ``b``'s writes (within 2 s here;
    the latency itself is measured by bench 6, not asserted under a loaded test run)."""
    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    a.safety_poll_s = 3600  # only NOTIFY may say so here
    row, _ = await b.create_session(owner="o", title=None, model=None, system=None, agent=None, status=Status.IDLE)
    with anyio.fail_after(5):
        while not (await a.describe())["listening"]:
            await anyio.sleep(0.01)
        while await a.external_write_seen():  # drain the initial "maybe"
            await anyio.sleep(0.01)
    worst = 0.0
    for i in range(5):
        started = time.monotonic()
        await b.append_message("o", row.id, role="user", parts=[], text=f"m{i}", new_status=None)
        with anyio.fail_after(2):
            while not await a.external_write_seen():
                await anyio.sleep(0.005)
        worst = max(worst, time.monotonic() - started)
        changes = await a.changes_since(0)
        assert changes[-1].writer == b.writer_id and changes[-1].session_id == row.id
    print(f"\nworst notify latency across replicas: {worst * 1000:.0f} ms")


async def test_change_log_never_skips_a_late_commit(stores: Open, pg_url: str) -> None:
    """A change committed after a later-numbered one is still delivered, and a rolled-back seq is skipped."""
    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    row, _ = await b.create_session(owner="o", title=None, model=None, system=None, agent=None, status=Status.IDLE)
    base = await a.last_change()
    slow = psycopg.connect(pg_url)
    try:
        slow.execute("INSERT INTO changes (session_id, owner, kind, writer, at) VALUES (%s, 'o', 'message', 'x', 0)",
                     (row.id,))  # fmt: skip
        await b.append_message("o", row.id, role="user", parts=[], text="later seq, earlier commit", new_status=None)
        assert await a.changes_since(base) == []  # the lower seq may still commit
        assert await a.external_write_seen()  # keeps the follower looking
        slow.commit()
        got = await a.changes_since(base)
        assert [c.seq for c in got] == [base + 1, base + 2]
        base = got[-1].seq
        slow.execute("INSERT INTO changes (session_id, owner, kind, writer, at) VALUES (%s, 'o', 'message', 'x', 0)",
                     (row.id,))  # fmt: skip
        await b.append_message("o", row.id, role="user", parts=[], text="after a rollback", new_status=None)
        assert await a.changes_since(base) == []
        slow.rollback()
        # base + 1 was rolled back: skipped once no transaction older than it runs (xmin is
        # cluster-wide, so other tests on this server may hold it a little), never delivered
        with anyio.fail_after(8):
            while not (got := await a.changes_since(base)):
                await anyio.sleep(0.02)
        assert [c.seq for c in got] == [base + 2]
    finally:
        slow.close()


async def test_turn_is_claimed_by_exactly_one_replica(stores: Open) -> None:
    replicas: list[PostgresStore] = [await stores() for _ in range(3)]
    row, _ = await replicas[0].create_session(
        owner="o", title=None, model=None, system=None, agent="command", status=Status.RUNNING,
        first_message=("user", [{"type": "text", "text": "go"}], "go"),
    )  # fmt: skip
    wins: list[str] = []

    async def claim(r: int) -> None:
        if await replicas[r].turn_claim(
            "o", row.id, upto_seq=1, runner=f"runner{r}", pid=os.getpid(), host=this_host(), lease_ms=20_000
        ):
            wins.append(f"runner{r}")

    async with anyio.create_task_group() as tg:
        for r in range(3):
            tg.start_soon(claim, r)
    assert len(wins) == 1
    winner = wins[0]
    other = next(f"runner{r}" for r in range(3) if f"runner{r}" != winner)
    assert await replicas[1].turn_heartbeat(winner, [row.id], lease_ms=20_000) == [row.id]
    assert await replicas[1].turn_heartbeat(other, [row.id], lease_ms=20_000) == []
    assert await replicas[2].turn_release(row.id, runner=winner) == 1
    # a finished turn is never run again, by anyone
    assert not await replicas[0].turn_claim(
        "o", row.id, upto_seq=1, runner=other, pid=os.getpid(), host=this_host(), lease_ms=20_000
    )
    assert not await replicas[0].turn_claim(
        "mallory", row.id, upto_seq=2, runner=other, pid=os.getpid(), host=this_host(), lease_ms=20_000
    )


async def test_turns_of_dead_replicas_are_failed_once(stores: Open) -> None:
    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    rows = []
    for _ in range(3):
        row, _ = await a.create_session(
            owner="o", title=None, model=None, system=None, agent="command", status=Status.RUNNING,
            first_message=("user", [{"type": "text", "text": "go"}], "go"),
        )  # fmt: skip
        rows.append(row)
    host = this_host()
    # 0: its process is gone (same host); 1: another host stopped renewing; 2: alive and well
    assert await a.turn_claim("o", rows[0].id, upto_seq=1, runner="dead", pid=dead.pid, host=host, lease_ms=60_000)
    assert await a.turn_claim("o", rows[1].id, upto_seq=1, runner="far", pid=1, host="elsewhere", lease_ms=-1)
    assert await a.turn_claim("o", rows[2].id, upto_seq=1, runner="live", pid=os.getpid(), host=host, lease_ms=60_000)
    base = await b.last_change()
    failed = await b.turn_recover(host=host, error=TURN_LOST)
    assert sorted(failed) == sorted([(rows[0].id, "o"), (rows[1].id, "o")])
    assert await b.turn_recover(host=host, error=TURN_LOST) == []
    for i, want in ((0, Status.FAILED), (1, Status.FAILED), (2, Status.RUNNING)):
        got = await b.get_session("o", rows[i].id)
        assert got is not None and got.status is want
    got = await b.get_session("o", rows[0].id)
    assert got is not None and got.error == TURN_LOST
    assert {(c.session_id, c.kind) for c in await a.changes_since(base)} == {
        (rows[0].id, "status"),
        (rows[1].id, "status"),
    }
    # recovered turns are done: nobody runs them again
    assert not await b.turn_claim("o", rows[0].id, upto_seq=1, runner="b", pid=os.getpid(), host=host, lease_ms=1000)


async def test_mirror_outbox_rows_go_to_one_replica_at_a_time(stores: Open) -> None:
    replicas: list[PostgresStore] = [await stores() for _ in range(3)]
    for i in range(10):
        await replicas[i % 3].mirror_enqueue(f"s{i}", "o")
    await replicas[0].mirror_enqueue("s0", "o")  # a second change to s0: version 2
    claimed: list[list[Any]] = []

    async def claim(r: int) -> None:
        claimed.append(await replicas[r].mirror_claim(lease_ms=60_000, limit=4))

    async with anyio.create_task_group() as tg:
        for r in range(3):
            tg.start_soon(claim, r)
    ids = [row.session_id for rows in claimed for row in rows]
    assert sorted(ids) == sorted(f"s{i}" for i in range(10))  # disjoint and complete
    assert await replicas[0].mirror_claim(lease_ms=60_000) == []  # all leased
    s0 = next(row for rows in claimed for row in rows if row.session_id == "s0")
    assert s0.version == 2 and not s0.created
    await replicas[1].mirror_progress("s0", created=True, title="t", sent_seq=3, parent="p1")
    await replicas[1].mirror_done("s0", s0.version)
    await replicas[2].mirror_failed("s1", "remote said no", retry_at_ms=0)
    again = await replicas[0].mirror_claim(lease_ms=60_000)
    assert [(r.session_id, r.attempts, r.last_error) for r in again] == [("s1", 1, "remote said no")]
    stats = await replicas[0].mirror_stats(failed_after=1)
    assert (stats.pending, stats.failed, stats.mirrored, stats.last_error) == (9, 1, 1, "remote said no")
    assert await replicas[0].mirror_next_due() is not None
    await replicas[0].mirror_forget("s1")
    assert (await replicas[0].mirror_stats(failed_after=1)).pending == 8


async def test_opening_a_server_that_never_answers_can_be_cancelled() -> None:
    """A TCP peer that accepts but never speaks: open() honours the caller's deadline, leaves nothing open."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        store = PostgresStore(f"postgresql://u:pw@127.0.0.1:{port}/db", connect_timeout_s=30)
        started = time.monotonic()
        with pytest.raises(TimeoutError), anyio.fail_after(0.5):
            await store.open()
        assert time.monotonic() - started < 2
        await store.close()


async def test_turns_nobody_started_are_found(stores: Open) -> None:
    store: PostgresStore = await stores()
    orphan, _ = await store.create_session(
        owner="o", title=None, model=None, system=None, agent="command", status=Status.RUNNING,
        first_message=("user", [{"type": "text", "text": "go"}], "go"),
    )  # fmt: skip
    claimed, _ = await store.create_session(
        owner="o", title=None, model=None, system=None, agent="command", status=Status.RUNNING,
        first_message=("user", [{"type": "text", "text": "go"}], "go"),
    )  # fmt: skip
    await store.create_session(
        owner="o", title=None, model=None, system=None, agent="openai", status=Status.RUNNING,
        first_message=("user", [{"type": "text", "text": "go"}], "go"),
    )  # fmt: skip
    assert await store.turn_claim("o", claimed.id, upto_seq=1, runner="r", pid=os.getpid(), host="h", lease_ms=60_000)
    assert await store.turn_orphans(agents=["command"], older_than_ms=-1000) == [(orphan.id, "o")]
    assert await store.turn_orphans(agents=["command"], older_than_ms=60_000) == []
    assert await store.turn_orphans(agents=[], older_than_ms=-1000) == []


async def test_store_and_listener_survive_dropped_connections(stores: Open, pg_url: str) -> None:
    """Every server connection is killed (a failover, a restart): writes go on, notifications resume."""
    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    a.safety_poll_s = 3600
    row, _ = await b.create_session(owner="o", title=None, model=None, system=None, agent=None, status=Status.IDLE)
    with anyio.fail_after(10):
        while not ((await a.describe())["listening"] and (await b.describe())["listening"]):
            await anyio.sleep(0.01)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'sessions-mcp'"
        ).fetchone()
    assert killed is not None and killed[0] >= 4  # two pools and two listeners
    # the pools hand out fresh connections; the listener reconnects, and says "maybe" meanwhile
    assert await b.append_message("o", row.id, role="user", parts=[], text="after", new_status=None) is not None
    with anyio.fail_after(5):
        while not (await a.describe())["listening"]:
            await anyio.sleep(0.02)
        while await a.external_write_seen():
            await anyio.sleep(0.01)
    started = time.monotonic()
    await b.append_message("o", row.id, role="user", parts=[], text="notified again", new_status=None)
    with anyio.fail_after(2):
        while not await a.external_write_seen():
            await anyio.sleep(0.005)
    assert time.monotonic() - started < 0.5


async def test_a_lost_notification_only_delays_the_wake_up(stores: Open) -> None:
    """If NOTIFY never arrives (e.g. a pooler in transaction mode), the safety poll still finds the write."""
    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    a.safety_poll_s = 0.3
    b._channel = "nobody_listens_here"  # b's notifications go nowhere
    row, _ = await b.create_session(owner="o", title=None, model=None, system=None, agent=None, status=Status.IDLE)
    with anyio.fail_after(5):
        while not (await a.describe())["listening"]:
            await anyio.sleep(0.01)
        while await a.external_write_seen():
            await anyio.sleep(0.01)
    base = await a.last_change()
    await b.append_message("o", row.id, role="user", parts=[], text="quiet write", new_status=None)
    started = time.monotonic()
    with anyio.fail_after(2):
        while not await a.external_write_seen():
            await anyio.sleep(0.02)
    assert time.monotonic() - started < 1.0
    assert [c.session_id for c in await a.changes_since(base)] == [row.id]


async def test_a_long_transaction_elsewhere_cannot_stall_the_change_log(
    stores: Open, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """xmin is cluster-wide: an unrelated open transaction must not hold a rolled-back gap forever."""
    from sessions_mcp.store import postgres as pg_module

    monkeypatch.setattr(pg_module, "GAP_PATIENCE_S", 0.3)
    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    row, _ = await b.create_session(owner="o", title=None, model=None, system=None, agent=None, status=Status.IDLE)
    base = await a.last_change()
    with psycopg.connect(pg_url) as long_tx, psycopg.connect(pg_url) as burner:
        long_tx.execute("SELECT pg_current_xact_id()")  # holds xmin back until it ends
        burner.execute("INSERT INTO changes (session_id, owner, kind, writer, at) VALUES ('x', 'o', 'message', 'x', 0)")
        burner.rollback()  # base + 1 is burned
        await b.append_message("o", row.id, role="user", parts=[], text="after the gap", new_status=None)
        assert await a.changes_since(base) == []
        started = time.monotonic()
        with anyio.fail_after(3):
            while not (got := await a.changes_since(base)):
                await anyio.sleep(0.05)
        assert [c.seq for c in got] == [base + 2]
        assert time.monotonic() - started < 1.5
        long_tx.rollback()


async def test_notify_wakes_the_change_feed_at_once(stores: Open) -> None:
    """The follower waits on NOTIFY itself: with the poll and the safety poll at an hour, a commit on
    another replica still wakes a waiter."""
    from sessions_mcp.store.feed import ChangeFeed

    a: PostgresStore = await stores()
    b: PostgresStore = await stores()
    a.safety_poll_s = 3600
    feed = ChangeFeed(a, poll_interval=3600)
    async with anyio.create_task_group() as tg:
        await feed.start(tg)
        async with feed.interested():
            with anyio.fail_after(10):
                while not (await a.describe())["listening"]:
                    await anyio.sleep(0.01)
            for i in range(3):
                ticket = feed.ticket()
                await b.create_session(owner="o", title=f"t{i}", model=None, system=None, agent=None,
                                       status=Status.IDLE)  # fmt: skip
                assert await ticket.wait(60), "only NOTIFY could have woken it"
        tg.cancel_scope.cancel()
