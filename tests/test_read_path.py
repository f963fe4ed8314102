"""The message read path publishes stored JSON as it is: the same answer the models would give.

A page is built from the parts' stored JSON, without a model per row (bench budget 2). These
tests hold that shortcut to the models: every kind of part, rows written before parts were
stored in canonical form, cut messages, and a row whose parts are not valid at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from sessions_mcp.models import Message, Part, Status, canonical_parts
from sessions_mcp.results import ListMessagesResult
from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings
from sessions_mcp.store.sqlite import SqliteStore

from .conftest import client_for

pytestmark = pytest.mark.anyio

PARTS: list[dict[str, Any]] = [
    {"type": "thinking", "text": "look at the config first"},
    {"type": "tool_call", "id": "c1", "name": "read_file", "input": {"path": "setup.cfg"}},
    {"type": "tool_result", "tool_call_id": "c1", "output": "[metadata]\nname = demo"},
    {"type": "plan", "entries": [{"text": "read"}, {"text": "fix", "status": "in_progress"}]},
    {"type": "attachment", "media_type": "image/png", "name": "shot.png"},
    {"type": "raw", "backend_type": "x-custom", "data": {"k": [1, 2]}},
    {"type": "text", "text": "Done: the name is demo."},
]


def by_models(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the public ``Message.parts`` serializes to when built through the models."""
    return [p.model_dump(mode="json") for p in TypeAdapter(list[Part]).validate_python(parts)]


async def test_written_parts_are_stored_in_canonical_form(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        row, _ = await store.create_session(
            owner="o", title=None, model=None, system=None, agent=None, status=Status.IDLE,
            first_message=("user", [{"type": "text", "text": "hi"}], "hi"),
        )  # fmt: skip
        await store.append_message("o", row.id, role="tool", text="t", parts=PARTS, new_status=None)
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    stored = [json.loads(r[0]) for r in conn.execute("SELECT parts FROM messages ORDER BY seq")]
    conn.close()
    assert stored == [[{"type": "text", "text": "hi"}], by_models(PARTS)]
    assert stored[1][2]["text"] == "[metadata]\nname = demo"  # a default the model fills in is stored
    assert canonical_parts(stored[1], trust=True) is stored[1]  # read back as it is


async def test_a_page_equals_the_models_answer_for_new_and_old_rows(
    make_settings: Callable[..., Settings], db_path: Path
) -> None:
    settings = make_settings()
    async with client_for(build_server(settings), "legacy") as c:
        created = await c.call_tool("create_session", {"prompt": "inspect setup.cfg", "agent": "none"})
        assert created.structured_content is not None
        sid = created.structured_content["session"]["id"]
    native = sid.split(":", 1)[1]
    # a row as an earlier version wrote it: defaults left out, and so not in canonical form
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(
            "INSERT INTO messages (session_id, seq, id, role, text, parts, created_at) VALUES (?, 2, 'm-old', 'tool', 'x', ?, 1764000000123)",
            (native, json.dumps(PARTS)),
        )
        conn.execute("UPDATE sessions SET last_seq = 2, message_count = 2 WHERE id = ?", (native,))
    conn.close()
    async with client_for(build_server(settings), "legacy") as c:
        r = await c.call_tool("list_messages", {"session_id": sid})
        assert not r.is_error, r.content
        page = r.structured_content
        assert page is not None
        # the same page through the models: validate what was published and dump it again
        assert ListMessagesResult.model_validate(page).model_dump(mode="json") == page
        old = page["messages"][1]
        assert old["parts"] == by_models(PARTS)
        assert old["created_at"] == "2025-11-24T16:00:00.123000Z"
        assert Message.model_validate(old).text == old["text"]
        assert "[tool call: read_file]" in old["text"] and "Done: the name is demo." in old["text"]

        # a message cut at max_chars: the piece is one text part, the cursor continues inside it
        cut = await c.call_tool(
            "list_messages", {"session_id": sid, "after": page["messages"][0]["cursor"], "max_chars": 5}
        )
        assert cut.structured_content is not None
        piece = cut.structured_content["messages"][0]
        assert piece["truncated"] and piece["parts"] == [{"type": "text", "text": piece["text"]}]
        assert (
            ListMessagesResult.model_validate(cut.structured_content).model_dump(mode="json") == cut.structured_content
        )


async def test_a_row_with_invalid_parts_is_a_clear_error_not_a_crash(
    make_settings: Callable[..., Settings], db_path: Path
) -> None:
    settings = make_settings()
    async with client_for(build_server(settings), "legacy") as c:
        created = await c.call_tool("create_session", {"prompt": "hello", "agent": "none"})
        assert created.structured_content is not None
        sid = created.structured_content["session"]["id"]
        conn = sqlite3.connect(db_path)
        with conn:
            conn.execute("UPDATE messages SET parts = ? WHERE seq = 1", (json.dumps([{"type": "nonsense"}]),))
        conn.close()
        bad = await c.call_tool("list_messages", {"session_id": sid})
        assert bad.is_error
        assert "internal error" in str(bad.content) and "nothing was lost" in str(bad.content)
        ok = await c.call_tool("get_session", {"session_id": sid})
        assert not ok.is_error  # the server lives on


@pytest.mark.parametrize(
    "ms", [0, 1, 999, 1000, 1764000000000, 1764000000123, 1764000000120, -1, -1500, 253402300799999]
)
def test_message_times_are_written_as_pydantic_writes_them(ms: int) -> None:
    from datetime import UTC, datetime, timedelta

    from pydantic_core import to_jsonable_python

    from sessions_mcp.models import iso_from_ms

    exact = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert iso_from_ms(ms) == to_jsonable_python(exact)
