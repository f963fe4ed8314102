"""Hardening of the stdio transport (issue 19 items 7 and 15), against the real `sessions-mcp` process.

Every line a client writes gets an answer, the way JSON-RPC prescribes (a parse error with a null
id where the id cannot be known); SIGINT stops a server whose stdin is a pipe at once.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import server_command, server_env

INIT = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "0"}},
}  # fmt: skip


class StdioProbe:
    """A raw line-level client of a server subprocess; every read is bounded."""

    def __init__(self, db: Path, *, command: list[str] | None = None, **extra_env: str) -> None:
        env = server_env(db, **extra_env)
        self.proc = subprocess.Popen(
            command or server_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.buffer = b""
        self.stderr = ""

    def send_raw(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode())

    def read(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """The next line the server writes, or None when nothing came within ``timeout``."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def close(self) -> str:
        """Stop the server (EOF, then kill) and return what it wrote on stderr."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read().decode("utf-8", "replace")
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.stderr


@pytest.fixture
def probe(tmp_path: Path):
    p = StdioProbe(tmp_path / "s.db")
    try:
        p.send(INIT)
        answer = p.read(30)
        assert answer is not None and answer.get("id") == 1, answer
        p.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield p
    finally:
        p.close()


# (line, expected error code, expected id): what the probe sent and what JSON-RPC says to answer
BAD_LINES: list[tuple[bytes, int, Any]] = [
    (b'{"jsonrpc":"2.0","id":2,"method":"ping"', -32700, None),  # truncated
    (b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x\\ud800"}}', -32700, 3),  # lone surrogate
    (b"[" * 100_000 + b"]" * 100_000, -32700, None),  # 100,000-deep nesting
    (b'[{"jsonrpc":"2.0","id":4,"method":"ping"}]', -32600, None),  # a batch
    (b'{"jsonrpc":"1.0","id":5,"method":"ping"}', -32600, 5),
    (b'{"id":6,"method":"ping"}', -32600, 6),  # no jsonrpc member
    (b'{"jsonrpc":"2.0","id":7,"method":"ping","params":[1,2]}', -32602, 7),  # array params
    (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', -32600, None),  # float id
    (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', -32600, None),  # null id
    (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', -32600, None),  # boolean id
    (b"not json at all", -32700, None),
]


@pytest.mark.slow
def test_every_unparseable_line_is_answered_and_the_server_keeps_serving(probe: StdioProbe) -> None:
    for n, (line, code, expected_id) in enumerate(BAD_LINES):
        probe.send_raw(line)
        answer = probe.read(10)
        assert answer is not None, f"no answer to bad line #{n} {line[:60]!r}"
        assert answer.get("jsonrpc") == "2.0"
        assert answer.get("id") == expected_id, (line[:60], answer)
        assert answer["error"]["code"] == code, (line[:60], answer)
        assert len(answer["error"]["message"]) < 300
    # a notification (no id) with an id inside its params is still a notification: no answer to it
    probe.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}})
    probe.send({"jsonrpc": "2.0", "id": 100, "method": "ping"})
    assert probe.read(10) == {"jsonrpc": "2.0", "id": 100, "result": {}}


@pytest.mark.slow
def test_sigint_stops_the_stdio_server_while_stdin_is_an_idle_pipe(probe: StdioProbe) -> None:
    started = time.monotonic()
    probe.proc.send_signal(signal.SIGINT)
    try:
        code = probe.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("SIGINT was ignored while stdin stayed open and silent")
    assert code in (130, -signal.SIGINT, 0), probe.close()
    assert time.monotonic() - started < 5
    assert "Traceback" not in probe.close()


@pytest.mark.slow
def test_answers_larger_than_the_pipe_reach_a_client_that_reads_late(probe: StdioProbe) -> None:
    """Answers go into a non-blocking pipe: a full pipe makes the server wait for room, not lose bytes."""
    big = "x" * 300_000
    for i in range(3):  # ~1 MB of answers, far more than a 64 KB pipe holds, before reading any
        probe.send({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                    "params": {"name": "create_session", "arguments": {"prompt": big, "agent": "none"}}})  # fmt: skip
    probe.send({"jsonrpc": "2.0", "id": 20, "method": "ping"})
    answers = [probe.read(30) for _ in range(4)]
    assert all(a is not None for a in answers), answers
    by_id = {a["id"]: a for a in answers if a is not None}
    assert sorted(by_id) == [10, 11, 12, 20]
    for i in range(3):
        result = by_id[10 + i]["result"]
        assert not result.get("isError"), result
        text = result["structuredContent"]["messages"][0]["text"]
        assert len(text) >= 10_000 and big.startswith(text)  # whole, cut only where max_chars says


def test_requests_from_a_file_are_answered_in_order(tmp_path: Path) -> None:
    """stdin that the event loop cannot wait on (a regular file) is read by a thread, to the end."""
    lines = [INIT, {"jsonrpc": "2.0", "method": "notifications/initialized"}]
    lines += [{"jsonrpc": "2.0", "id": 2 + i, "method": "ping"} for i in range(5)]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(m) + "\n" for m in lines))
    with requests.open("rb") as stdin:
        done = subprocess.run(
            server_command(), stdin=stdin, capture_output=True, env=server_env(tmp_path / "s.db"), timeout=60
        )
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [a["id"] for a in answers] == [1, 2, 3, 4, 5, 6], done.stderr.decode()[-2000:]
    assert done.returncode == 0


@pytest.mark.anyio
async def test_the_transport_leaves_pipes_as_it_found_them() -> None:
    """Pipes are switched to non-blocking mode while served, and back when the server stops."""
    import anyio

    from sessions_mcp.stdio import stdio_transport

    rin, win = os.pipe()
    rout, wout = os.pipe()
    try:
        async with stdio_transport(rin, wout):
            assert not os.get_blocking(rin) and not os.get_blocking(wout)
            os.close(win)  # EOF: the client went away
            win = -1
            await anyio.sleep(0)
        assert os.get_blocking(rin) and os.get_blocking(wout)
    finally:
        for fd in (rin, win, rout, wout):
            if fd >= 0:
                os.close(fd)
