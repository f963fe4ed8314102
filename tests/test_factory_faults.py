"""Faults over real HTTP: the emulator behind uvicorn on 127.0.0.1, the real MCP server and client.

Every injected failure must end as a clear tool error within the call's time, never duplicate a
message, never show a secret, and leave the server serving the next call.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from sessions_mcp.server import build_server
from sessions_mcp.service import FINAL_READ_GRACE_S
from sessions_mcp.settings import load_settings

from .conftest import client_for
from .emulators.factory import FactoryEmulator, Served

pytestmark = pytest.mark.anyio
CANARY = "fk-CANARY-c0ffee1234567890"


@pytest.fixture
def emu() -> Iterator[tuple[FactoryEmulator, str]]:
    emulator = FactoryEmulator(api_key=CANARY, reply_delay_s=0.1)
    with Served(emulator.app) as served:
        yield emulator, served.url
    assert not emulator.unexpected


def _client(url: str, tmp_path: Path, era: str, timeout_s: float = 1.0) -> Client:
    settings = load_settings(
        None,
        backends=["factory"],
        local={"db": str(tmp_path / "s.db")},
        factory={"api_key": CANARY, "base_url": url, "timeout_s": timeout_s},
    )
    return client_for(build_server(settings), era)


@pytest.fixture
async def mcp(emu: tuple[FactoryEmulator, str], tmp_path: Path, era: str) -> AsyncIterator[Client]:
    async with _client(emu[1], tmp_path, era) as c:
        yield c


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def err(client: Client, tool: str, *, within: float, **args: Any) -> str:
    started = time.monotonic()
    with anyio.fail_after(within + 5):
        r = await client.call_tool(tool, args)
    assert r.is_error, r.structured_content
    assert time.monotonic() - started < within, "the error took longer than the call's time"
    text = r.content[0].text  # type: ignore[union-attr]
    assert CANARY not in text and "CANARY" not in text
    return text


LEAK = {"title": "bad", "detail": f"key {CANARY} refused", "errors": [{"message": f"Authorization: Bearer {CANARY}"}]}

FAULTS = [
    pytest.param({"status": 401, "body": LEAK}, "FACTORY_API_KEY", id="401"),
    pytest.param({"status": 403}, "FACTORY_API_KEY", id="403"),
    pytest.param({"status": 402}, "plan", id="402"),
    pytest.param({"status": 404}, "unknown session", id="404"),
    pytest.param({"status": 429, "retry_after": "90"}, "retry in 90 s", id="429"),
    pytest.param({"status": 500, "times": 20, "body": LEAK}, "500", id="500"),
    pytest.param({"status": 502, "times": 20, "html": True}, "502", id="502-html"),
    pytest.param({"status": 200, "malformed": True}, "not JSON", id="malformed"),
]


@pytest.mark.parametrize(("fault", "words"), FAULTS)
async def test_each_fault_is_a_clear_tool_error_and_the_server_keeps_serving(
    mcp: Client, emu: tuple[FactoryEmulator, str], fault: dict[str, Any], words: str
) -> None:
    emulator, _ = emu
    sid = (await ok(mcp, "create_session", title="faulty"))["session"]["id"]
    emulator.inject(method="GET", path_contains="/api/v0/sessions/", **fault)
    text = await err(mcp, "get_session", within=10, session_id=sid)
    assert words in text, text
    emulator.faults.clear()
    assert (await ok(mcp, "get_session", session_id=sid))["title"] == "faulty"


async def test_faults_while_waiting_end_the_wait_with_an_error(mcp: Client, emu: tuple[FactoryEmulator, str]) -> None:
    emulator, _ = emu
    emulator.reply_delay_s = 30
    sid = (await ok(mcp, "create_session", title="w"))["session"]["id"]
    emulator.inject(500, times=100, method="GET", path_contains="/messages")
    text = await err(mcp, "send_message", within=25, session_id=sid, text="hello", wait=True, timeout_s=20)
    assert "Factory failed on its side (500)" in text
    emulator.faults.clear()
    page = await ok(mcp, "list_messages", session_id=sid)
    assert [m["text"] for m in page["messages"]] == ["hello"]  # written once, not lost, not doubled


async def test_unreachable_api(tmp_path: Path, era: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    async with _client(f"http://127.0.0.1:{port}", tmp_path, era) as c:
        text = await err(c, "create_session", within=25, title="x")
        assert "cannot reach Factory" in text and "base URL" in text
        text = await err(c, "list_sessions", within=25)
        assert "cannot reach Factory" in text


async def test_stalled_reads_time_out(mcp: Client, emu: tuple[FactoryEmulator, str]) -> None:
    emulator, _ = emu
    sid = (await ok(mcp, "create_session", title="stall"))["session"]["id"]
    emulator.inject(method="GET", path_contains="/api/v0/sessions/", times=10, delay_s=1.5)
    text = await err(mcp, "get_session", within=15, session_id=sid)
    assert "ReadTimeout" in text
    emulator.faults.clear()
    await ok(mcp, "get_session", session_id=sid)


async def test_a_hung_read_never_holds_a_wait_past_its_timeout(mcp: Client, emu: tuple[FactoryEmulator, str]) -> None:
    """send_message(wait=True, timeout_s=2) with every message read stalling past the HTTP read timeout
    (so each one would retry for ~6 s): the call still returns at its timeout, 'running', message written."""
    emulator, _ = emu
    emulator.reply_delay_s = 30
    sid = (await ok(mcp, "create_session", title="hung"))["session"]["id"]
    emulator.inject(method="GET", path_contains="/messages", times=100, delay_s=1.5)
    started = time.monotonic()
    with anyio.fail_after(20):
        r = await ok(mcp, "send_message", session_id=sid, text="hello", wait=True, timeout_s=2)
    took = time.monotonic() - started
    assert took < 2 + FINAL_READ_GRACE_S + 1.0, f"the wait took {took:.1f} s"
    assert r["status"] == "running" and [m["text"] for m in r["messages"]] == ["hello"]
    emulator.faults.clear()
    page = await ok(mcp, "list_messages", session_id=sid)
    assert [m["text"] for m in page["messages"]] == ["hello"]  # written once


async def test_post_that_may_have_landed_is_never_replayed(mcp: Client, emu: tuple[FactoryEmulator, str]) -> None:
    emulator, _ = emu
    sid = (await ok(mcp, "create_session", title="once"))["session"]["id"]
    native = sid.partition(":")[2]
    # the server stores the message but the answer comes too late (read timeout)
    emulator.inject(502, method="POST", path_contains="/messages", after_handling=True, delay_s=1.5)
    text = await err(mcp, "send_message", within=10, session_id=sid, text="only once", wait=False)
    assert "not repeated" in text and "check whether it took effect" in text
    # the server stores it and answers 502
    emulator.inject(502, method="POST", path_contains="/messages", after_handling=True)
    await err(mcp, "send_message", within=10, session_id=sid, text="second", wait=False)
    assert emulator.user_texts(native) == ["only once", "second"]
    # an idempotency key replays the stored result instead of posting again
    a = await ok(mcp, "send_message", session_id=sid, text="keyed", wait=False, idempotency_key="k1")
    b = await ok(mcp, "send_message", session_id=sid, text="keyed", wait=False, idempotency_key="k1")
    assert a["message_id"] == b["message_id"] and emulator.user_texts(native).count("keyed") == 1


async def test_no_secret_in_tool_errors_or_logs(
    mcp: Client, emu: tuple[FactoryEmulator, str], caplog: pytest.LogCaptureFixture
) -> None:
    emulator, _ = emu
    caplog.set_level(logging.DEBUG)
    sid = (await ok(mcp, "create_session", title="canary"))["session"]["id"]
    texts: list[str] = []
    for status in (400, 401, 403, 500, 503):
        emulator.inject(status, body=LEAK, times=10)
        r = await mcp.call_tool("get_session", {"session_id": sid})
        assert r.is_error
        texts.append(str(r.content))
        emulator.faults.clear()
    r = await mcp.call_tool("get_session", {"session_id": sid})
    texts.append(str(r.structured_content))
    blob = "\n".join(texts) + "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    assert CANARY not in blob and "c0ffee1234567890" not in blob
    assert any(h == f"Bearer {CANARY}" for h in emulator.auth_headers)  # the key was really sent
