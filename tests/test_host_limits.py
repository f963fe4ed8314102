"""Waits stay below the strictest host's tool-call limit (docs/clients.md), whatever the model asks."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from mcp import Client

from sessions_mcp import tools
from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings


def test_the_cap_is_below_the_strictest_host_limit_in_the_docs() -> None:
    clients = (Path(__file__).resolve().parent.parent / "docs" / "clients.md").read_text()
    [row] = [line for line in clients.splitlines() if line.startswith("| tool-call limit |")]
    limits = [int(n) for n in re.findall(r"(\d+) s", row)]
    assert min(limits) == 180, row  # droid, and Copilot CLI without progress
    assert min(limits) > tools.MAX_CALL_WAIT_S
    assert tools.MAX_CALL_WAIT_S > 45, "the default timeout_s is not cut"
    assert f"{tools.MAX_CALL_WAIT_S:.0f} s" in clients, "docs/clients.md states the cap"


@pytest.mark.anyio
async def test_a_long_wait_returns_at_the_cap_with_a_cursor(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tools, "MAX_CALL_WAIT_S", 0.5)
    async with Client(build_server(make_settings())) as client:
        created = await client.call_tool("create_session", {"prompt": "anyone?"})
        assert created.structured_content is not None
        session_id, cursor = created.structured_content["session"]["id"], created.structured_content["cursor"]
        with anyio.fail_after(60):  # asked for 300 s and 600 s: both come back at the cap
            listed = await client.call_tool("list_messages", {"session_id": session_id, "after": cursor, "wait_s": 300})
            sent = await client.call_tool(
                "send_message", {"session_id": session_id, "text": "still there?", "wait": True, "timeout_s": 600}
            )
    assert listed.structured_content is not None and listed.structured_content["messages"] == []
    assert listed.structured_content["next_cursor"]
    assert sent.structured_content is not None and sent.structured_content["status"] == "awaiting_reply"
