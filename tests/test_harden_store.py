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

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

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
    assert time.monotonic() - started < 8, "initialize waited for the write lock"
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
        assert elapsed < 8, f"five writes took {elapsed:.1f} s with a 1 s busy timeout (queued: 15 s)"
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
        assert time.monotonic() - started < 10


def test_a_call_waits_for_a_frozen_lock_no_longer_than_its_own_timeout(
    frozen_holder: tuple[Path, str, subprocess.Popen[str]],
) -> None:
    db, sid, holder = frozen_holder
    probe, c = start_server(db)  # the default busy timeout: 10 s
    try:
        started = time.monotonic()
        text = c.error("send_message", session_id=sid, text="hurry", role="assistant", timeout_s=2)
        assert time.monotonic() - started < 7, "the call waited its busy timeout (10 s), not its timeout_s (2 s)"
        assert f"pid {holder.pid}" in text, text
    finally:
        probe.close()


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


def call_many(probe: StdioProbe, calls: list[tuple[str, dict[str, Any]]], first_id: int) -> list[dict[str, Any]]:
    """Send every call at once, then collect the answers in call order."""
    for n, (name, arguments) in enumerate(calls):
        probe.send({"jsonrpc": "2.0", "id": first_id + n, "method": "tools/call",
                    "params": {"name": name, "arguments": arguments}})  # fmt: skip
    answers: dict[int, dict[str, Any]] = {}
    while len(answers) < len(calls):
        answer = probe.read(30)
        assert answer is not None, f"{len(calls) - len(answers)} of {len(calls)} calls never answered"
        if "id" in answer:
            answers[answer["id"]] = answer
    return [answers[first_id + n] for n in range(len(calls))]


def test_concurrent_calls_with_one_key_all_get_the_first_result(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    probe_a, a = start_server(db)
    probe_b, _ = start_server(db)
    try:
        sid = a.ok("create_session", title="idem")["session"]["id"]
        args = {
            "session_id": sid,
            "text": "exactly once",
            "role": "assistant",
            "idempotency_key": "k-1",
            "timeout_s": 20,
        }
        call = ("send_message", args)
        for probe in (probe_a, probe_b):  # twenty calls at once, from two server processes
            for n in range(10):
                probe.send({"jsonrpc": "2.0", "id": 700 + n, "method": "tools/call",
                            "params": {"name": call[0], "arguments": call[1]}})  # fmt: skip
        results = []
        for probe in (probe_a, probe_b):
            got = 0
            while got < 10:
                answer = probe.read(30)
                assert answer is not None
                if answer.get("id", 0) >= 700:
                    got += 1
                    assert not answer["result"].get("isError"), answer["result"]["content"][0]["text"]
                    results.append(answer["result"]["structuredContent"])
        assert len({r["message_id"] for r in results}) == 1, "callers got different results for one key"
        assert sum(not r["replayed"] for r in results) == 1
    finally:
        probe_a.close()
        probe_b.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM messages WHERE text = 'exactly once'").fetchone()[0] == 1
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_a_claim_of_a_killed_process_is_taken_over_at_once(tmp_path: Path) -> None:
    from sessions_mcp.idempotent import owner_tag
    from sessions_mcp.store.rows import this_host
    from sessions_mcp.store.sqlite import SqliteStore

    db = tmp_path / "s.db"
    probe, c = start_server(db)
    sid = c.ok("create_session", title="idem")["session"]["id"]
    probe.close()
    # a server that claimed the key and was SIGKILLed before it wrote (its claim is left pending)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    store = SqliteStore(db)
    params = {"session_id": sid, "text": "once", "role": "assistant", "in_reply_to": None}
    import hashlib

    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    dead = f"{victim.pid}@{this_host()}#{'0' * 16}"  # the shape owner_tag() gives, for the dead pid
    assert owner_tag(store).count("@") == 1 and owner_tag(store).count("#") == 1
    assert await store.idem_claim("local", "send_message", "k-dead", digest, stale_after_ms=600_000, owner=dead) is None
    await store.close()

    probe, c = start_server(db)
    try:
        started = time.monotonic()
        first = c.ok("send_message", session_id=sid, text="once", role="assistant", idempotency_key="k-dead")
        assert time.monotonic() - started < 20, "waited for the dead process's claim to go stale (165 s)"
        assert not first["replayed"]
        again = c.ok("send_message", session_id=sid, text="once", role="assistant", idempotency_key="k-dead")
        assert again["replayed"] and again["message_id"] == first["message_id"]
    finally:
        probe.close()


async def test_a_claim_left_by_a_failed_write_and_release_is_taken_over_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import anyio

    from sessions_mcp.errors import StoreUnavailable
    from sessions_mcp.server import Runtime
    from sessions_mcp.settings import load_settings

    rt = Runtime(load_settings(None, local={"db": str(tmp_path / "s.db")}))
    async with rt.running():
        s = rt.service
        sid = (await s.create_session("local", prompt=None, title="t", backend=None, model=None, system=None,
                                      wait=False, timeout_s=5, idempotency_key=None)).session.id  # fmt: skip
        store = rt.store
        real_append, real_release = store.append_message, store.idem_release

        async def disk_full(*a: Any, **k: Any) -> Any:
            raise StoreUnavailable("the filesystem is full")

        store.append_message = disk_full  # type: ignore[method-assign]
        store.idem_release = disk_full  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable):
            await s.send_message("local", session_id=sid, text="x", role="assistant", wait=False, timeout_s=5,
                                 idempotency_key="k-full")  # fmt: skip
        assert "could not release the idempotency key" in caplog.text
        store.append_message, store.idem_release = real_append, real_release  # type: ignore[method-assign]
        with anyio.fail_after(5):
            r = await s.send_message("local", session_id=sid, text="x", role="assistant", wait=False, timeout_s=5,
                                     idempotency_key="k-full")  # fmt: skip
        assert not r.replayed


FULL_DISK = """
set -e
mount -t tmpfs -o size=2m tmpfs "$1"
"$2" -m sessions_mcp || true
"$2" -c "import sqlite3, sys; print('integrity:', sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0], file=sys.stderr)" "$1/s.db"
"""


def test_a_full_disk_is_reported_as_a_full_disk(tmp_path: Path) -> None:
    import os
    import shutil

    mount = tmp_path / "small"
    mount.mkdir()
    # a 2 MiB filesystem of our own, in a private mount namespace (user namespace when not root)
    unshare = [shutil.which("unshare") or "unshare", "-m" if os.geteuid() == 0 else "-rm"]
    command = [*unshare, "sh", "-c", FULL_DISK, "sh", str(mount), sys.executable]
    probe = StdioProbe(mount / "s.db", command=command)
    probe.send(INIT)
    assert probe.read(30) is not None, probe.close()
    probe.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    c = ToolCaller(probe)
    try:
        sid = c.ok("create_session", prompt="before", title="full")["session"]["id"]
        errors = []
        for n in range(12):  # 300,000 characters a message: a few fill the filesystem
            answer = c.call("send_message", session_id=sid, text=f"{n} " + "x" * 300_000, role="assistant")
            if answer["result"].get("isError"):
                errors.append(answer["result"]["content"][0]["text"])
                if len(errors) == 3:
                    break
        assert errors, "the filesystem never filled up"
        for text in errors:
            assert "is full" in text and "nothing was written" in text and "Free space" in text, text
            assert str(mount) in text
        # reads either work or say the same
        answer = c.call("list_messages", session_id=sid, limit=2)
        if answer["result"].get("isError"):
            assert "is full" in answer["result"]["content"][0]["text"]
        assert c.ok("get_session", session_id=sid)["title"] == "full"
    finally:
        stderr = probe.close()
    assert "integrity: ok" in stderr, stderr[-2000:]
