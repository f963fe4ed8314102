"""Budget 6: a thousand waiting ``list_messages(wait_s=…)`` calls on one server.

Idle CPU while they wait (against a bare SDK server holding as many ``anyio.sleep`` calls), and
how fast a reply wakes its waiter when it is written through the same server or another process.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from lib import (
    Budget,
    Figure,
    RawStdio,
    Report,
    Spread,
    bare_server_argv,
    cpu_s,
    ours_argv,
    ours_stats_argv,
    pct,
    server_env,
)


async def seed_sessions(db: Path, n: int) -> list[str]:
    from sessions_mcp.models import Status
    from sessions_mcp.store.sqlite import SqliteStore

    store = SqliteStore(db)
    await store.open()
    try:
        out: list[str] = []
        for i in range(n):
            row, _ = await store.create_session(
                owner="local", title=f"w{i}", model=None, system=None, agent=None, status=Status.IDLE
            )
            out.append("local:" + row.id)
        return out
    finally:
        await store.close()


async def settle(client: RawStdio, want: int, key: str, timeout: float = 60.0) -> int:
    """Wait until every call is parked (``key`` counter reaches ``want``); returns the task count."""
    deadline = time.monotonic() + timeout
    while True:
        stats = (await client.call("bench_stats", {}))["structuredContent"]
        if stats[key] >= want:
            await asyncio.sleep(0.5)  # let the last answers and thread hand-offs finish
            return int(stats["tasks"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {stats[key]} of {want} calls parked after {timeout:g} s")
        await asyncio.sleep(0.1)


async def idle_cpu(pid: int, seconds: float) -> float:
    """Percent of one core used by ``pid`` over ``seconds`` of doing nothing but holding calls."""
    c0, t0 = cpu_s(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return 100 * (cpu_s(pid) - c0) / (time.perf_counter() - t0)


async def run(report: Report, smoke: bool) -> None:
    n = 50 if smoke else 1000
    wakes = 2 if smoke else 20
    window = 0.5 if smoke else 16.0  # two heartbeat periods (8 s) of every waiter
    with tempfile.TemporaryDirectory(prefix="bench-wait-") as tmp:
        db = Path(tmp) / "sessions.db"
        sids = await seed_sessions(db, n)
        # --- reference: the bare SDK holding n sleeping calls ----------------------------------------
        bare = await RawStdio.start([*bare_server_argv(), "--stats"], server_env())
        sleeps = [asyncio.ensure_future(bare.call("bench_sleep", {"seconds": 600})) for _ in range(n)]
        bare_tasks = await settle(bare, n, "tasks")
        bare_cpu = await idle_cpu(bare.pid, window)
        for s in sleeps:
            s.cancel()
        await bare.close()

        # --- ours ---------------------------------------------------------------------------------
        server = await RawStdio.start(ours_stats_argv(), server_env(db))
        other = await RawStdio.start(ours_argv(), server_env(db))  # a second server on the same database
        try:
            waiters: dict[str, asyncio.Future[Any]] = {
                sid: asyncio.ensure_future(server.call("list_messages", {"session_id": sid, "wait_s": 300}))
                for sid in sids
            }
            tasks = await settle(server, n, "waiting")
            ours_cpu = await idle_cpu(server.pid, window)
            same: list[float] = []
            cross: list[float] = []
            for i in range(wakes):
                for via, into in ((server, same), (other, cross)):
                    sid = sids[len(same) + len(cross)]
                    t0 = time.perf_counter()
                    await via.call("send_message", {"session_id": sid, "text": f"reply {i}", "role": "assistant"})
                    result = await asyncio.wait_for(waiters.pop(sid), 10)
                    into.append((time.perf_counter() - t0) * 1000)
                    got = result["structuredContent"]["messages"]
                    assert got and got[0]["text"] == f"reply {i}", got
            still = sum(not f.done() for f in waiters.values())
        finally:
            for f in waiters.values():
                f.cancel()
            await server.close()
            await other.close()

        # the same with a progress token on every call, as clients that reset their timeout on
        # progress send: each waiter then gets a heartbeat notification every 8 s
        tokened = await RawStdio.start(ours_stats_argv(), server_env(db))
        try:
            pending = [
                asyncio.ensure_future(
                    tokened.request(
                        "tools/call",
                        {"name": "list_messages", "arguments": {"session_id": sid, "wait_s": 300},
                         "_meta": {"progressToken": i}},
                    )
                )
                for i, sid in enumerate(sids[2 * wakes :])
            ]  # fmt: skip
            await settle(tokened, len(pending), "waiting")
            token_cpu = await idle_cpu(tokened.pid, window)
        finally:
            for f in pending:
                f.cancel()
            await tokened.close()

    report.figure(
        Figure(
            "6.idle_cpu",
            f"server CPU while {n:,} `list_messages(wait_s=300)` calls wait ({tasks} asyncio tasks), "
            f"{window:g} s window",
            Spread.of([ours_cpu], "% of a core"),
            Spread.of([bare_cpu], "% of a core"),
            f"bare SDK server holding {n:,} `anyio.sleep` calls ({bare_tasks} tasks)",
            notes="the waiters hold no progress token; each still wakes every 8 s for a heartbeat",
        )
    )
    report.figure(
        Figure(
            "6.idle_cpu_progress",
            f"the same with a `progressToken` on each of {len(pending):,} waiting calls (a heartbeat "
            "notification per waiter every 8 s)",
            Spread.of([token_cpu], "% of a core"),
        )
    )
    report.budget(Budget("6.idle_cpu", f"idle CPU with {n:,} waiting calls", ours_cpu, 2.0, "<=", "% of a core"))
    report.figure(
        Figure(
            "6.wake_same",
            f"`send_message(role='assistant')` through the same server → its waiter answers, {wakes} wakes "
            f"with {n:,} calls waiting (p50; max {max(same):.1f} ms); {still} untouched waiters still waiting",
            Spread.of(same, " ms"),
        )
    )
    report.budget(Budget("6.wake_same", "reply wakes its waiter, same process (max)", max(same), 50, "<=", " ms",
                         f"p50 {pct(same, 0.5):.1f} ms"))  # fmt: skip
    report.figure(
        Figure(
            "6.wake_cross",
            f"`send_message` through a second sessions-mcp process on the same database → waiter answers, "
            f"{wakes} wakes (p50; max {max(cross):.1f} ms); the writer pokes the waiter's wake-up socket",
            Spread.of(cross, " ms"),
        )
    )
    report.budget(Budget("6.wake_cross_p50", "reply wakes its waiter, another process (p50)", pct(cross, 0.5), 10,
                         "<=", " ms"))  # fmt: skip
    report.budget(Budget("6.wake_cross", "reply wakes its waiter, another process (max)", max(cross), 50, "<=",
                         " ms", f"p50 {pct(cross, 0.5):.1f} ms"))  # fmt: skip
