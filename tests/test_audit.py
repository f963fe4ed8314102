"""The audit trail writes exactly the JSON a log tool expects, redacted, and never fails a call."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import time

import pytest

from sessions_mcp.audit import AuditTrail, session_digest
from sessions_mcp.http_app import RedactSecrets, audit_record

KEYS = ["event", "time", "principal", "tool", "session", "outcome", "latency_ms"]


@pytest.mark.parametrize("principal", ["alice", 'quote"back\\slash', "ünïcode ✓"])
@pytest.mark.parametrize("session_id", ["local:abc", None])
def test_line_is_the_json_of_the_record(principal: str, session_id: str | None) -> None:
    out = io.StringIO()
    trail = AuditTrail()
    trail.write_to(out)
    trail.tool_call(
        principal=principal, tool="get_session", session_id=session_id, outcome="ok", started=time.perf_counter()
    )
    line = out.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    record = audit_record(line)
    assert record is not None and list(record) == KEYS
    assert record["principal"] == principal and record["tool"] == "get_session" and record["outcome"] == "ok"
    assert record["session"] == (hashlib.sha256(session_id.encode()).hexdigest()[:16] if session_id else None)
    assert isinstance(record["latency_ms"], float) and record["latency_ms"] >= 0
    assert line == json.dumps(record) + "\n"  # byte-identical to json.dumps: any JSON-lines tool reads it
    assert session_id is None or session_id not in line


def test_secrets_are_redacted_and_a_closed_stream_is_ignored() -> None:
    out = io.StringIO()
    trail = AuditTrail()
    trail.write_to(out, RedactSecrets(["s3cr3t-token"]).redact)
    trail.tool_call(principal="s3cr3t-token", tool="get_session", session_id="x", outcome="ok", started=0.0)
    assert "s3cr3t-token" not in out.getvalue() and "[redacted]" in out.getvalue()
    out.close()
    trail.tool_call(principal="p", tool="get_session", session_id="x", outcome="ok", started=0.0)  # no raise


def test_without_a_stream_lines_go_to_the_logger(caplog: pytest.LogCaptureFixture) -> None:
    trail = AuditTrail()
    with caplog.at_level(logging.WARNING, logger="sessions_mcp.audit"):
        assert not trail.enabled
    with caplog.at_level(logging.INFO, logger="sessions_mcp.audit"):
        assert trail.enabled
        trail.tool_call(principal="p", tool="list_sessions", session_id=None, outcome="ok", started=0.0)
    assert [audit_record(r.getMessage())["tool"] for r in caplog.records] == ["list_sessions"]  # type: ignore[index]
    assert session_digest("local:abc") == hashlib.sha256(b"local:abc").hexdigest()[:16]


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.mark.anyio
async def test_calls_ending_in_one_loop_turn_share_one_write() -> None:
    out = CountingStream()
    trail = AuditTrail()
    trail.write_to(out)
    for tool in ("get_session", "list_messages", "send_message"):
        trail.tool_call(principal="p", tool=tool, session_id="local:x", outcome="ok", started=time.perf_counter())
    assert out.getvalue() == ""  # written at the end of this turn of the loop
    await asyncio.sleep(0)
    assert out.writes == 1
    assert [audit_record(line)["tool"] for line in out.getvalue().splitlines()] == [  # type: ignore[index]
        "get_session", "list_messages", "send_message",
    ]  # fmt: skip
    trail.tool_call(principal="p", tool="rename_session", session_id=None, outcome="ok", started=0.0)
    trail.flush()  # what happens at exit, too
    assert out.getvalue().splitlines()[-1].startswith('{"event": "tool_call"') and out.writes == 2
