"""The local mailbox as agent-to-agent delegation: inbox semantics under concurrent questions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
import pytest

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

from .conftest import ERAS, client_for
from .test_stdio import ok

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
async def store_settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Any:
    if request.param == "sqlite":
        yield make_settings()
        return
    from . import pg

    url = await anyio.to_thread.run_sync(pg.new_schema_url)
    try:
        yield make_settings(local={"db": url})
    finally:
        await anyio.to_thread.run_sync(pg.drop_schema_url, url)


@pytest.mark.parametrize("era", ERAS)
async def test_question_asked_while_answering_stays_in_the_inbox(store_settings: Settings, era: str) -> None:
    async with client_for(build_server(store_settings), era) as c:
        created = await ok(c, "create_session", prompt="question 1", title="mailbox")
        sid = created["session"]["id"]
        # agent B reads the inbox and the question ...
        seen = await ok(c, "list_messages", session_id=sid)
        # ... while agent A asks a second question
        await ok(c, "send_message", session_id=sid, text="question 2", wait=False)
        # B answers what it read: question 2 is still open
        r = await ok(
            c, "send_message", session_id=sid, text="answer 1", role="assistant", in_reply_to=seen["next_cursor"]
        )
        assert r["status"] == "awaiting_reply"
        inbox = await ok(c, "list_sessions", status="awaiting_reply")
        assert sid in [s["id"] for s in inbox["sessions"]]
        # B reads on and answers the rest: now the session is idle
        rest = await ok(c, "list_messages", session_id=sid, after=seen["next_cursor"], roles=["user"])
        assert [m["text"] for m in rest["messages"]] == ["question 2"]
        r = await ok(
            c, "send_message", session_id=sid, text="answer 2", role="assistant", in_reply_to=rest["next_cursor"]
        )
        assert r["status"] == "idle"
        # without in_reply_to an answer closes the request, as before
        await ok(c, "send_message", session_id=sid, text="question 3", wait=False)
        r = await ok(c, "send_message", session_id=sid, text="answer 3", role="assistant")
        assert r["status"] == "idle"


async def test_in_reply_to_is_checked(make_settings: Callable[..., Settings]) -> None:
    async with client_for(build_server(make_settings()), "auto") as c:
        a = (await ok(c, "create_session", prompt="a"))["session"]["id"]
        b = await ok(c, "create_session", prompt="b")
        r: Any = await c.call_tool(
            "send_message", {"session_id": a, "text": "x", "role": "assistant", "in_reply_to": b["cursor"]}
        )
        assert r.is_error and "cursor" in r.content[0].text
        r = await c.call_tool("send_message", {"session_id": a, "text": "x", "in_reply_to": b["cursor"]})
        assert r.is_error and "role='assistant'" in r.content[0].text
