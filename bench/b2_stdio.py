"""Budget 2: stdio tool-call latency of sessions-mcp against a bare SDK echo tool, same run."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

from lib import (
    Budget,
    Figure,
    RawStdio,
    Report,
    Spread,
    bare_server_argv,
    interleaved,
    ours_argv,
    pct,
    ratios,
    seed_session,
    server_env,
    timed_calls,
)


async def run(report: Report, smoke: bool) -> None:
    rounds, n, warm = (1, 40, 10) if smoke else (5, 400, 100)
    with tempfile.TemporaryDirectory(prefix="bench-stdio-") as tmp:
        db = Path(tmp) / "sessions.db"
        sid = "local:" + await seed_session(db, 100)
        bare = await RawStdio.start(bare_server_argv(), server_env())
        ours = await RawStdio.start(ours_argv(), server_env(db))
        servers = [bare, ours]
        try:
            get_args = {"session_id": sid}
            list_args = {"session_id": sid, "limit": 50}
            page = await ours.call("list_messages", list_args)
            page_bytes = len(json.dumps(page))
            (Path(tmp) / "page.json").write_text(json.dumps(page))
            same = await RawStdio.start([*bare_server_argv(), "--page", str(Path(tmp) / "page.json")], server_env())
            servers.append(same)
            # the same number of bytes through the bare SDK: the floor for moving that page
            big = {"text": "x" * (page_bytes // 2)}
            calls = {
                "echo": (bare, "echo", {"text": "hi"}),
                "echo_big": (bare, "echo", big),
                "page": (same, "page", {}),
                "get_session": (ours, "get_session", get_args),
                "list_messages": (ours, "list_messages", list_args),
            }
            for client, name, args in calls.values():
                await timed_calls(client, name, args, warm)
            p50: dict[str, list[float]] = {k: [] for k in calls}
            p95: dict[str, list[float]] = {k: [] for k in calls}
            for _ in range(rounds):
                lat = await interleaved(
                    {
                        key: functools.partial(timed_calls, client, name, args)
                        for key, (client, name, args) in calls.items()
                    },
                    n,
                )
                for key, values in lat.items():
                    p50[key].append(pct(values, 0.5))
                    p95[key].append(pct(values, 0.95))
        finally:
            for server in servers:
                await server.close()

    ref = Spread.of(p50["echo"], " ms")
    for key, limit, label in (("get_session", 1.3, "get_session"), ("list_messages", 2.0, "list_messages(limit=50)")):
        r = ratios(p50[key], p50["echo"])
        report.figure(
            Figure(
                f"2.{key}",
                f"stdio `{label}` p50, {n} sequential calls per round (p95 {Spread.of(p95[key]).median:.2f} ms)",
                Spread.of(p50[key], " ms"),
                ref,
                f"bare echo tool p50 (p95 {Spread.of(p95['echo']).median:.2f} ms)",
                r,
            )
        )
        report.budget(Budget(f"2.{key}", f"stdio {label} p50 vs bare echo p50", r.median, limit, "<=", "×"))
    r = ratios(p50["list_messages"], p50["echo_big"])
    report.figure(
        Figure(
            "2.list_messages_vs_same_bytes",
            f"stdio `list_messages(limit=50)` p50 (answer is {page_bytes:,} bytes of JSON)",
            Spread.of(p50["list_messages"], " ms"),
            Spread.of(p50["echo_big"], " ms"),
            "bare echo of a string giving the same answer size",
            r,
        )
    )
    r = ratios(p50["list_messages"], p50["page"])
    report.figure(
        Figure(
            "2.list_messages_vs_same_result",
            "stdio `list_messages(limit=50)` p50: what the store and the service add",
            Spread.of(p50["list_messages"], " ms"),
            Spread.of(p50["page"], " ms"),
            "bare SDK tool returning the identical 50-message result, published as sessions-mcp publishes it "
            "(same outputSchema, result not re-validated)",
            r,
        )
    )
