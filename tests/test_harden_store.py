"""The store under a frozen lock holder, dead idempotency owners and concurrent repeats
(issue 19 items 3, 8, 10), against real server processes and real SQLite files."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import server_command, server_env
from .test_harden_arguments import ToolCaller
from .test_harden_stdio import INIT, StdioProbe

pytestmark = pytest.mark.slow

HOLDER = """
import os, signal, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN IMMEDIATE")
c.execute("UPDATE sessions SET title = title")
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)  # frozen while holding the write lock
"""


def start_server(db: Path, **env: str) -> tuple[StdioProbe, ToolCaller]:
    probe = StdioProbe(db, **env)
    started = time.monotonic()
    probe.send(INIT)
    answer = probe.read(30)
    assert answer is not None and answer.get("id") == 1, answer
    assert time.monotonic() - started < 5, "initialize waited for the write lock"
    probe.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return probe, ToolCaller(probe)


@pytest.fixture
def frozen_holder(tmp_path: Path) -> Iterator[tuple[Path, str, subprocess.Popen[str]]]:
    db = tmp_path / "s.db"
    probe, c = start_server(db)
    sid = c.ok("create_session", prompt="before the freeze", title="frozen")["session"]["id"]
    probe.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        yield db, sid, holder
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_frozen_lock_holder_delays_a_call_by_one_busy_timeout_at_most(
    frozen_holder: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    db, sid, holder = frozen_holder
    probe, c = start_server(db, SESSIONS_MCP_LOCAL__BUSY_TIMEOUT_S="1")
    try:
        # reads never need the write lock
        assert c.ok("get_session", session_id=sid)["title"] == "frozen"
        assert [m["text"] for m in c.ok("list_messages", session_id=sid)["messages"]] == ["before the freeze"]
        assert c.ok("list_sessions")["sessions"]
        # five writes at once: each waits one busy timeout (1 s) at most, not one behind another
        started = time.monotonic()
        for n in range(5):
            probe.send({
                "jsonrpc": "2.0", "id": 500 + n, "method": "tools/call",
                "params": {"name": "send_message", "arguments": {
                    "session_id": sid, "text": f"write {n}", "role": "assistant", "timeout_s": 5}},
            })  # fmt: skip
        answers: dict[int, dict[str, Any]] = {}
        while len(answers) < 5:
            answer = probe.read(15)
            assert answer is not None, f"only {len(answers)} of 5 writes answered"
            answers[answer["id"]] = answer
        elapsed = time.monotonic() - started
        assert elapsed < 4, f"five writes took {elapsed:.1f} s with a 1 s busy timeout"
        for answer in answers.values():
            text = answer["result"]["content"][0]["text"]
            assert answer["result"]["isError"] and "locked by another process" in text, text
            assert f"pid {holder.pid}" in text and "stopped" in text, f"the error does not name the holder: {text}"
    finally:
        stderr = probe.close()
    assert "Traceback" not in stderr

    # the terminal views only read
    for argv in (["ls"], ["show", sid]):
        started = time.monotonic()
        done = subprocess.run(
            [*server_command(), *argv], env=server_env(db, SESSIONS_MCP_LOCAL__BUSY_TIMEOUT_S="1"),
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "frozen" in done.stdout
        assert time.monotonic() - started < 5


def test_the_store_is_intact_after_the_frozen_holder_is_killed(
    frozen_holder: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    db, sid, holder = frozen_holder
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    probe, c = start_server(db)
    try:
        c.ok("send_message", session_id=sid, text="after", role="assistant")
    finally:
        probe.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert json.dumps(conn.execute("SELECT count(*) FROM messages").fetchone()) == "[2]"
