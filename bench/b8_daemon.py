"""Budgets 1 (warm and first start) and 7 (five editors) of the per-user daemon behind stdio.

Rounds interleave the bare SDK's cold start with ours, so drift cancels within a round:
bare cold start, then ours with no daemon running (the first start: the relay starts the daemon),
then ours again with that daemon running (the warm start). Memory: one in-process server after the
handshake and a few calls, against five connections doing the same on one daemon (the daemon plus
the five processes the clients hold). Every daemon is stopped by PID at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from b1_startup import cold_start
from lib import Budget, Figure, RawStdio, Report, Spread, bare_server_argv, ours_argv, ratios, rss_kb, server_env

CALLS = 20


def daemon_pids(directory: Path) -> list[int]:
    pids: list[int] = []
    for meta in directory.glob("daemon-*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids.append(int(json.loads(meta.read_text())["pid"]))
    return [p for p in pids if Path(f"/proc/{p}").exists()]


def stop_daemons(directory: Path) -> None:
    """SIGTERM each daemon by PID and wait until it is gone (SIGKILL after 10 s)."""
    pids = daemon_pids(directory)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pids:
        pids = [p for p in pids if _alive(p)]
        if time.monotonic() > deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _connect_and_call(env: dict[str, str], sid_holder: list[str]) -> RawStdio:
    client = await RawStdio.start(ours_argv(), env)
    if not sid_holder:
        created = await client.call("create_session", {"prompt": "memory", "title": "rss"})
        sid_holder.append(created["structuredContent"]["session"]["id"])
    for _ in range(CALLS):
        await client.call("get_session", {"session_id": sid_holder[0]})
        await client.call("list_messages", {"session_id": sid_holder[0], "limit": 50})
    return client


async def memory(tmp: Path, run_dir: Path) -> tuple[float, float, list[float]]:
    """(one in-process server's RSS, the total with five daemon connections, its parts), in MB."""
    db = tmp / "mem.db"
    sid: list[str] = []
    single = await _connect_and_call(server_env(db), sid)
    one = rss_kb(single.pid) / 1024
    await single.close()
    env = server_env(db, SESSIONS_MCP_DAEMON="on", SESSIONS_MCP_DAEMON__DIR=str(run_dir))
    clients = [await _connect_and_call(env, sid) for _ in range(5)]
    try:
        [daemon] = daemon_pids(run_dir)
        parts = [rss_kb(daemon) / 1024] + [rss_kb(c.pid) / 1024 for c in clients]
    finally:
        for c in clients:
            await c.close()
    return one, sum(parts), parts


def run(report: Report, smoke: bool) -> None:
    rounds = 1 if smoke else 9
    with tempfile.TemporaryDirectory(prefix="bench-daemon-") as tmp_s:
        tmp = Path(tmp_s)
        run_dir = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))  # short: a socket path has <= 107 bytes
        try:
            db = tmp / "sessions.db"
            env_bare = server_env()
            env_ours = server_env(db, SESSIONS_MCP_DAEMON="on", SESSIONS_MCP_DAEMON__DIR=str(run_dir))
            cold_start(ours_argv(), env_ours)  # create the database, warm .pyc files and the page cache
            stop_daemons(run_dir)
            if not smoke:
                cold_start(bare_server_argv(), env_bare)
            bare: list[float] = []
            first: list[float] = []
            warm: list[float] = []
            for _ in range(rounds):
                bare.append(cold_start(bare_server_argv(), env_bare))
                first.append(cold_start(ours_argv(), env_ours))
                warm.append(cold_start(ours_argv(), env_ours))
                stop_daemons(run_dir)
            one, total, parts = asyncio.run(memory(tmp, run_dir))
        finally:
            stop_daemons(run_dir)
            for f in run_dir.iterdir():
                f.unlink()
            run_dir.rmdir()
    r_warm, r_first = ratios(warm, bare), ratios(first, bare)
    report.figure(Figure("1.warm_start", "stdio: spawn `python -m sessions_mcp` → first `initialize` answer, "
                         "its daemon already running", Spread.of(warm, " ms"), Spread.of(bare, " ms"),
                         "bare MCPServer cold start, one echo tool", r_warm))  # fmt: skip
    report.figure(Figure("1.first_start", "stdio: the same with no daemon running (the relay starts the daemon, "
                         "then hands it the connection)", Spread.of(first, " ms"), Spread.of(bare, " ms"),
                         "bare MCPServer cold start, one echo tool", r_first))  # fmt: skip
    report.budget(Budget("1.warm", "stdio warm start (daemon running) → first initialize", r_warm.median, 0.15, "<=",
                         "×", f"ours {Spread.of(warm).median:.0f} ms vs bare cold {Spread.of(bare).median:.0f} ms"))  # fmt: skip
    report.budget(Budget("1.first", "stdio first start (no daemon) → first initialize", r_first.median, 1.3, "<=",
                         "×", f"ours {Spread.of(first).median:.0f} ms vs bare cold {Spread.of(bare).median:.0f} ms"))  # fmt: skip
    detail = f"daemon {parts[0]:.1f} MB + 5 × {sum(parts[1:]) / 5:.1f} MB waiters vs {one:.1f} MB"
    report.figure(Figure("7.five_connections", "total RSS of five stdio connections (five editors) on one daemon, "
                         f"each after the handshake and {2 * CALLS} calls: {detail}", Spread.of([total], " MB"),
                         Spread.of([one], " MB"), "one in-process server after the same calls",
                         Spread.of([total / one], "×")))  # fmt: skip
    report.budget(Budget("7.five", "five connections on one daemon: total RSS vs one in-process server",
                         total / one, 1.5, "<=", "×", detail))  # fmt: skip
