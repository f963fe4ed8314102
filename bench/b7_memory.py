"""Budget 7: RSS and task/thread/fd counts over many tool calls, against the bare SDK doing the same."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from pathlib import Path
from typing import Any

from lib import (
    Budget,
    Figure,
    RawStdio,
    Report,
    Spread,
    bare_server_argv,
    ours_stats_argv,
    rss_kb,
    seed_session,
    server_env,
)

CONCURRENCY = 4  # calls in flight: keeps the server busy without measuring the client's pauses


async def drive(
    client: RawStdio, calls: list[tuple[str, dict[str, Any]]], total: int, marks: list[int]
) -> list[dict[str, Any]]:
    """Make ``total`` calls cycling through ``calls``; sample RSS and counters at each mark."""
    samples: list[dict[str, Any]] = []
    cycle = itertools.cycle(calls)
    done = 0
    for mark in marks:
        todo = mark - done

        async def worker(share: int) -> None:
            for _ in range(share):
                name, args = next(cycle)
                await client.call(name, args)

        shares = [todo // CONCURRENCY + (1 if i < todo % CONCURRENCY else 0) for i in range(CONCURRENCY)]
        await asyncio.gather(*(worker(s) for s in shares))
        done = mark
        stats = (await client.call("bench_stats", {}))["structuredContent"]
        samples.append({"calls": mark, "rss_kb": rss_kb(client.pid), **stats})
    return samples


async def run(report: Report, smoke: bool) -> None:
    total = 1_200 if smoke else 100_000
    marks = [1000, *(total * k // 10 for k in range(1, 11))]
    marks = sorted(set(marks))
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        db = Path(tmp) / "sessions.db"
        sid = "local:" + await seed_session(db, 60)
        ours = await RawStdio.start(ours_stats_argv(), server_env(db))
        try:
            page = (await ours.call("list_messages", {"session_id": sid, "limit": 10}))["structuredContent"]
            # cheap calls, so 100,000 of them fit in the run; one in eight is an error answer
            calls: list[tuple[str, dict[str, Any]]] = [
                ("get_session", {"session_id": sid}),
                ("list_messages", {"session_id": sid, "limit": 5}),
                ("get_session", {"session_id": sid}),
                ("list_messages", {"session_id": sid, "after": page["next_cursor"], "limit": 5}),
                ("get_session", {"session_id": sid}),
                ("get_session", {"session_id": "local:nope"}),
                ("get_session", {"session_id": sid}),
                ("list_sessions", {"limit": 2}),
            ]
            ours_samples = await drive(_Tolerant(ours), calls, total, marks)  # type: ignore[arg-type]
        finally:
            await ours.close()
        bare = await RawStdio.start([*bare_server_argv(), "--stats"], server_env())
        try:
            bare_samples = await drive(bare, [("echo", {"text": "hello"})], total, marks)
        finally:
            await bare.close()

    def growth(samples: list[dict[str, Any]]) -> float:
        return (samples[-1]["rss_kb"] - samples[0]["rss_kb"]) / 1024

    g_ours, g_bare = growth(ours_samples), growth(bare_samples)
    first, last = ours_samples[0], ours_samples[-1]
    curve = ", ".join(f"{s['calls'] // 1000}k: {s['rss_kb'] / 1024:.1f}" for s in ours_samples)
    report.figure(
        Figure(
            "7.rss",
            f"RSS growth from call 1,000 to call {total:,} (8-call mix: get_session, pages, list_sessions, an error; "
            f"{CONCURRENCY} in flight). RSS MB by calls: {curve}",
            Spread.of([g_ours], " MB"),
            Spread.of([g_bare], " MB"),
            f"bare echo server, same number of calls (RSS {bare_samples[0]['rss_kb'] / 1024:.1f} → "
            f"{bare_samples[-1]['rss_kb'] / 1024:.1f} MB)",
        )
    )
    report.budget(Budget("7.rss", f"RSS growth, calls 1,000 → {total:,}", g_ours, 10.0, "<=", " MB",
                         f"{first['rss_kb'] / 1024:.1f} → {last['rss_kb'] / 1024:.1f} MB"))  # fmt: skip
    counters = ("tasks", "fds")  # threads are anyio's worker pool: bounded (40), they come and go
    grew = {k: (first[k], last[k]) for k in counters if last[k] > first[k]}
    report.figure(
        Figure(
            "7.counts",
            "asyncio tasks / open fds (threads) after 1,000 calls → after all calls: "
            + ", ".join(f"{k} {first[k]} → {last[k]}" for k in (*counters, "threads"))
            + f"; GC objects {first['gc_objects']:,} → {last['gc_objects']:,}",
            Spread.of([float(sum(last[k] - first[k] for k in counters))]),
            Spread.of([float(sum(bare_samples[-1][k] - bare_samples[0][k] for k in counters))]),
            "bare echo server, same counters",
        )
    )
    report.budget(Budget("7.counts", "growth in asyncio task + open fd counts", float(sum(max(0, b - a) for a, b in grew.values())),
                         0, "<=", "", str(grew or "none")))  # fmt: skip
    report.timings["7.samples"] = len(ours_samples)


class _Tolerant:
    """Lets the deliberate error call through (an ``isError`` answer is part of the mix)."""

    def __init__(self, inner: RawStdio) -> None:
        self.inner = inner
        self.pid = inner.pid

    async def call(self, name: str, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("session_id") == "local:nope":
            result = await self.inner.request("tools/call", {"name": name, "arguments": args})
            assert result.get("isError"), result
            return result
        return await self.inner.call(name, args)
