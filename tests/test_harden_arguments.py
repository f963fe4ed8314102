"""Hostile tool arguments against the real stdio server (issue 19 items 6, 9, 13, 14).

Bounded fields with clear errors, listings that stay small, cursors and arguments refused in our
words (never an internal error or pydantic's text), an id that finds its session, and errors that
quote only a prefix of what was sent.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessions_mcp.ids import encode_cursor

from .test_harden_stdio import INIT, StdioProbe

pytestmark = pytest.mark.slow


class ToolCaller:
    def __init__(self, probe: StdioProbe) -> None:
        self.probe = probe
        self.next_id = 10

    def raw(self, name: str, arguments_json: str) -> dict[str, Any]:
        """tools/call with the arguments spliced in as raw JSON text (NaN and friends included)."""
        self.next_id += 1
        line = (
            f'{{"jsonrpc":"2.0","id":{self.next_id},"method":"tools/call",'
            f'"params":{{"name":"{name}","arguments":{arguments_json}}}}}'
        )
        self.probe.send_raw(line.encode())
        while True:
            answer = self.probe.read(30)
            assert answer is not None, f"no answer to {name}"
            if answer.get("id") == self.next_id:
                return answer

    def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        return self.raw(name, json.dumps(arguments))

    def ok(self, name: str, **arguments: Any) -> dict[str, Any]:
        answer = self.call(name, **arguments)
        result = answer["result"]
        assert not result.get("isError"), result
        return result["structuredContent"]

    def error(self, name: str, arguments_json: str | None = None, **arguments: Any) -> str:
        answer = self.raw(name, arguments_json) if arguments_json is not None else self.call(name, **arguments)
        result = answer.get("result")
        assert result is not None and result.get("isError"), answer
        text = result["content"][0]["text"]
        assert "validation error for" not in text and "errors.pydantic.dev" not in text, text
        assert "internal error" not in text, text
        return text


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ToolCaller, Path, StdioProbe]]:
    db = tmp_path / "s.db"
    probe = StdioProbe(db)
    try:
        probe.send(INIT)
        assert probe.read(30) is not None
        probe.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield ToolCaller(probe), db, probe
    finally:
        probe.close()


def test_forged_cursors_and_bad_arguments_are_refused_in_our_words(server: tuple[ToolCaller, Path, StdioProbe]) -> None:
    c, _, probe = server
    sid = c.ok("create_session", prompt="hello", title="cursors")["session"]["id"]

    for position in ("9223372036854775808", str(2**70), "1_0", " 0", "٠", "-1", "1e3"):
        text = c.error("list_messages", session_id=sid, after=encode_cursor(sid, position))
        assert "bad cursor" in text, (position, text)
    array = base64.urlsafe_b64encode(b'["s", 1]').rstrip(b"=").decode()
    text = c.error("list_messages", session_id=sid, after=array)
    assert "bad cursor" in text and "another session" not in text, text
    forged_page = base64.urlsafe_b64encode(b'{"local":5}').rstrip(b"=").decode()
    assert "bad cursor for list_sessions" in c.error("list_sessions", cursor=forged_page)

    text = c.error("send_message", session_id=sid, text="hi", role="USER")
    assert "'user'" in text and "'assistant'" in text and "'tool'" not in text, text
    text = c.error("list_messages", f'{{"session_id":"{sid}","wait_s":NaN}}')
    assert "wait_s" in text and "finite" in text, text
    text = c.error("list_messages", session_id=sid, limit="many")
    assert "limit must be an integer" in text, text
    assert "session_id is required" in c.error("list_messages")

    assert "Traceback" not in probe.close(), "a bad argument was logged as a crash"


def test_free_text_fields_are_bounded_and_listings_stay_small(server: tuple[ToolCaller, Path, StdioProbe]) -> None:
    c, db, _ = server
    huge = "m" * 1_000_000
    for field in ("model", "title", "agent", "backend"):
        answer = c.call("create_session", **{field: huge})
        text = answer["result"]["content"][0]["text"]
        assert answer["result"]["isError"], field
        assert field in text and len(text) < 600, (field, text[:200])
    for field, limit in (("system", 100_000), ("idempotency_key", 200)):
        answer = c.call("create_session", **{field: "s" * (limit + 1)})
        assert answer["result"]["isError"] and len(answer["result"]["content"][0]["text"]) < 600, field
    assert "query" in c.error("list_sessions", query="q" * 100_000)

    # rows written before the bounds existed are clipped in listings
    ids = [c.ok("create_session", title=f"s{i}", model="gpt")["session"]["id"] for i in range(40)]
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sessions SET model = ?, title = ?, agent = ?", (huge, huge, huge))
    listing = c.call("list_sessions", limit=200)
    assert len(json.dumps(listing)) < 200_000, "a listing of 40 sessions grew with their free-text fields"
    assert {s["id"] for s in listing["result"]["structuredContent"]["sessions"]} == set(ids)
    c.probe.send({"jsonrpc": "2.0", "id": 999, "method": "resources/read", "params": {"uri": "sessions://index"}})
    index = c.probe.read(30)
    assert index is not None and index.get("id") == 999, index
    assert len(json.dumps(index)) < 200_000, "sessions://index grew with the sessions' free-text fields"


def test_list_sessions_finds_a_session_by_the_id_the_tools_hand_out(
    server: tuple[ToolCaller, Path, StdioProbe],
) -> None:
    c, _, _ = server
    wanted = c.ok("create_session", title="needle")["session"]["id"]
    c.ok("create_session", title="haystack")
    found = c.ok("list_sessions", query=wanted)["sessions"]
    assert [s["id"] for s in found] == [wanted]
    assert c.ok("list_sessions", query=wanted.partition(":")[2])["sessions"][0]["id"] == wanted


def test_errors_quote_only_a_prefix_of_huge_input(server: tuple[ToolCaller, Path, StdioProbe]) -> None:
    c, _, _ = server
    big = "local:" + "x" * 10_000_000
    for tool, args in (
        ("get_session", {"session_id": big}),
        ("list_messages", {"session_id": big}),
        ("send_message", {"session_id": big, "text": "hi"}),
        ("create_session", {"backend": "y" * 10_000_000}),
        ("send_message", {"session_id": "local:abc", "text": "hi", "idempotency_key": "k" * 10_000_000}),
    ):
        answer = c.call(tool, **args)
        assert len(json.dumps(answer)) < 2_000, f"{tool} repeated the whole bad input"
