"""Budget 4: the local store at depth, durable appends, and eight writer processes on one file."""

from __future__ import annotations

import json
import os
import random
import secrets
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

from lib import BENCH, PY, Budget, Figure, Report, Spread, pct, ratios, seed_text


async def build_session_db(path: Path, messages: int) -> str:
    """A database with one session of ``messages`` messages: the real schema (migrations run by
    the store), then direct inserts in one transaction, which is far faster than the API."""
    from sessions_mcp.store.sqlite import SqliteStore

    store = SqliteStore(path)
    await store.open()
    await store.close()
    sid = secrets.token_urlsafe(16)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        conn.execute("BEGIN")
        ts = int(time.time() * 1000) - messages
        conn.execute(
            "INSERT INTO sessions (id, owner, title, status, created_at, updated_at, last_seq, message_count)"
            " VALUES (?, 'local', 'depth', 'idle', ?, ?, ?, ?)",
            (sid, ts, ts + messages, messages, messages),
        )

        def rows():
            for seq in range(1, messages + 1):
                text = seed_text(seq)
                role = "user" if seq % 2 else "assistant"
                yield (sid, seq, "m_" + secrets.token_urlsafe(16), role, text,
                       json.dumps([{"type": "text", "text": text}]), ts + seq)  # fmt: skip

        conn.executemany(
            "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            rows(),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sid


async def page_latencies(db: Path, sid: str, total: int, n: int, rng: random.Random) -> list[float]:
    """``list_messages(after=cursor, limit=50)`` through the service, cursors at random depths."""
    from sessions_mcp.ids import encode_cursor
    from sessions_mcp.server import Runtime
    from sessions_mcp.settings import load_settings

    rt = Runtime(load_settings(None, local={"db": str(db)}))
    handle = f"local:{sid}"
    out: list[float] = []
    async with rt.running():
        svc = rt.service
        for _ in range(20):  # warm the connection and the statement cache
            await svc.list_messages("local", session_id=handle, after=None, limit=50, roles=None, wait_s=0)
        for _ in range(n):
            cursor = encode_cursor(handle, str(rng.randrange(0, total - 50)))
            t0 = time.perf_counter()
            page = await svc.list_messages("local", session_id=handle, after=cursor, limit=50, roles=None, wait_s=0)
            out.append((time.perf_counter() - t0) * 1000)
            assert len(page.messages) == 50, len(page.messages)
    return out


def fsync_rate(directory: Path, seconds: float) -> float:
    """The physical limit: 4 KiB write + fsync of one file, per second, in the same directory."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    block = b"\0" * 4096
    count = 0
    try:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            os.write(fd, block)
            os.fsync(fd)
            count += 1
    finally:
        os.close(fd)
        path.unlink()
    return count / seconds


async def append_rate(db: Path, seconds: float) -> tuple[float, str, float]:
    """Appends per second, the session id, and CPU ms (all threads of this process) per append."""
    from sessions_mcp.models import Status
    from sessions_mcp.store.sqlite import SqliteStore

    store = SqliteStore(db)
    await store.open()
    try:
        row, _ = await store.create_session(
            owner="local", title="w", model=None, system=None, agent=None, status=Status.IDLE
        )
        count = 0
        text = seed_text(0)
        parts = [{"type": "text", "text": text}]
        cpu0 = time.process_time()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            await store.append_message("local", row.id, role="assistant", parts=parts, text=text, new_status=None)
            count += 1
        cpu_ms = (time.process_time() - cpu0) * 1000 / max(count, 1)
    finally:
        await store.close()
    return count / seconds, row.id, cpu_ms


async def run(report: Report, smoke: bool) -> None:
    rng = random.Random(8)
    big_n = 5_000 if smoke else 1_000_000
    rounds, calls = (1, 60) if smoke else (5, 300)
    seconds = 0.3 if smoke else 3.0
    writers = 2 if smoke else 8
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=os.environ.get("BENCH_TMP")) as tmp_s:
        tmp = Path(tmp_s)
        # durability first: the big database written below leaves writeback that slows every fsync
        os.sync()
        # --- durable single writer -----------------------------------------------------------
        appends: list[float] = []
        fsyncs: list[float] = []
        cpus: list[float] = []
        for i in range(1 if smoke else 3):
            fsyncs.append(fsync_rate(tmp, seconds))
            rate, _, cpu = await append_rate(tmp / f"w{i}.db", seconds)
            appends.append(rate)
            cpus.append(cpu)
        per = 1000 / Spread.of(appends).median
        fs = 1000 / Spread.of(fsyncs).median
        r = ratios(appends, fsyncs)
        report.figure(
            Figure(
                "4.appends",
                "durable appends/s, one writer (`SqliteStore.append_message`: WAL, synchronous=FULL, one "
                f"transaction and one WAL fsync per message). Per append: {per:.2f} ms wall = one fsync "
                f"({fs:.2f} ms on this filesystem) + {Spread.of(cpus).median:.2f} ms CPU (statement work, JSON, "
                "the worker-thread hop); the fsync bounds it from below",
                Spread.of(
                    appends,
                    "/s",
                ),
                Spread.of(fsyncs, "/s"),
                "4 KiB write + fsync per second on the same filesystem (the physical limit)",
                r,
            )
        )

        # --- eight writer processes -------------------------------------------------------------
        db = tmp / "multi.db"
        _, shared, _ = await append_rate(db, 0.01)
        before = _count(db, shared)
        start_at = time.time() + 2.0  # every worker has imported and opened its store by then
        argv = [PY, str(BENCH / "store_worker.py"), str(db), shared, str(start_at), str(seconds)]
        procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(writers)]
        outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        total = sum(o["count"] for o in outs)
        errors: dict[str, int] = {}
        for o in outs:
            for k, v in o["errors"].items():
                errors[k] = errors.get(k, 0) + v
        after = _count(db, shared)
        seqs_ok = _seqs_contiguous(db, shared)
        integrity = sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0]
        n_err = sum(errors.values()) + (after - before != total) + (not seqs_ok) + (integrity != "ok")
        multi = total / seconds
        report.figure(
            Figure(
                "4.writers8",
                f"{writers} writer processes appending to one session of one database for {seconds:g} s: "
                f"{total:,} appends, errors {errors or 'none'}, rows {after - before:,}, seqs contiguous "
                f"{seqs_ok}, integrity {integrity}, worst append {max(o['worst_ms'] for o in outs):.0f} ms",
                Spread.of([multi], "/s"),
                Spread.of([Spread.of(appends).median], "/s"),
                "one writer (above)",
                Spread.of([multi / Spread.of(appends).median], "×"),
            )
        )
        report.budget(Budget("4.writers8", f"{writers} writer processes on one database: errors", n_err, 0, "<=", "",
                             f"{multi:.0f} appends/s in total"))  # fmt: skip

        (tmp / "multi.db").unlink()
        os.sync()
        # --- depth -------------------------------------------------------------------------
        t0 = time.perf_counter()
        small_sid = await build_session_db(tmp / "small.db", 1000)
        big_sid = await build_session_db(tmp / "big.db", big_n)
        report.timings["4.build_db_s"] = round(time.perf_counter() - t0, 1)
        size_mb = (tmp / "big.db").stat().st_size / 1e6
        small: list[float] = []
        big: list[float] = []
        for _ in range(rounds):
            small.append(pct(await page_latencies(tmp / "small.db", small_sid, 1000, calls, rng), 0.5))
            big.append(pct(await page_latencies(tmp / "big.db", big_sid, big_n, calls, rng), 0.5))
        r = ratios(big, small)
        report.figure(
            Figure(
                "4.depth",
                f"`list_messages(after=cursor, limit=50)` p50 through the service, cursor at a random depth, "
                f"{big_n:,} messages in the session ({size_mb:.0f} MB file)",
                Spread.of(big, " ms"),
                Spread.of(small, " ms"),
                "the same call on a 1,000-message session",
                r,
            )
        )
        report.budget(
            Budget("4.depth", f"list_messages page at {big_n:,} messages vs at 1,000", r.median, 1.2, "<=", "×")
        )


def _count(db: Path, sid: str) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM messages WHERE session_id = ?", (sid,)).fetchone()[0])
    finally:
        conn.close()


def _seqs_contiguous(db: Path, sid: str) -> bool:
    conn = sqlite3.connect(db)
    try:
        lo, hi, n, last = conn.execute(
            "SELECT min(seq), max(seq), count(*), (SELECT last_seq FROM sessions WHERE id = ?) FROM messages"
            " WHERE session_id = ?",
            (sid, sid),
        ).fetchone()
        return bool(lo == 1 and hi == n and last == n)
    finally:
        conn.close()
