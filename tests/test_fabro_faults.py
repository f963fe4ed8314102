"""Fabro faults through the whole server (MCP client -> tools -> backend -> HTTP -> emulator).

Each fault ends as a clear tool error or a correct result within the call's timeout, and the
server keeps serving afterwards.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from sessions_mcp.server import build_server
from sessions_mcp.settings import load_settings

from .conftest import client_for
from .emulators.fabro import FabroEmulator, new_keypair, running

pytestmark = pytest.mark.anyio
USER = "fault-tester"


@pytest.fixture
def keypair() -> tuple[str, Any]:
    return new_keypair()


@pytest.fixture
def emu(keypair: tuple[str, Any]) -> Iterator[FabroEmulator]:
    with running(keypair[1], (USER,)) as e:
        yield e


@asynccontextmanager
async def served(emu: FabroEmulator, tmp_path: Path, pem: str, **fabro: Any) -> AsyncIterator[Client]:
    cfg: dict[str, Any] = {"base_url": emu.url, "jwt_private_key": pem, "jwt_subject": f"https://github.com/{USER}"}
    cfg.update(fabro)
    settings = load_settings(None, backends=["fabro"], local={"db": str(tmp_path / "s.db")}, fabro=cfg)
    async with client_for(build_server(settings), "auto") as c:
        yield c


async def call(c: Client, tool: str, progress: Any = None, **args: Any) -> dict[str, Any]:
    r = await c.call_tool(tool, args, progress_callback=progress)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def error_text(c: Client, tool: str, **args: Any) -> str:
    r = await c.call_tool(tool, args)
    assert r.is_error, r.structured_content
    return r.content[0].text  # type: ignore[union-attr]


def texts(result: dict[str, Any]) -> list[str]:
    return [m["text"] for m in result["messages"]]


async def test_stream_cut_mid_reply_still_returns_the_reply_once(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(emu, tmp_path, keypair[0]) as c:
        sid = (await call(c, "create_session", prompt="warm up", timeout_s=10))["session"]["id"]
        streams_before = sum(1 for m, p, _ in emu.requests if m == "GET" and p.endswith("/events"))
        emu.faults.cut_stream_after_deltas = 1
        with anyio.fail_after(15):
            r = await call(c, "send_message", session_id=sid, text="cut me", wait=True, timeout_s=10)
        assert r["status"] == "idle"
        assert texts(r) == ["cut me", "echo: cut me"]

        def streams_opened() -> int:
            return sum(1 for m, p, _ in emu.requests if m == "GET" and p.endswith("/events")) - streams_before

        # the reply can land (and be read from the turns) before the reader's reconnect, which
        # follows a short back-off: wait for the reconnect itself rather than count too early
        with anyio.fail_after(5):
            while streams_opened() < 1:
                await anyio.sleep(0.02)
        assert streams_opened() >= 1, "the cut stream was not reopened"  # the held one is reused
        emu.faults.cut_stream_after_deltas = 0
        page = await call(c, "list_messages", session_id=sid)
        assert texts(page).count("echo: cut me") == 1
        again = await call(c, "send_message", session_id=sid, text="after", wait=True, timeout_s=10)
        assert texts(again) == ["after", "echo: after"]


async def test_malformed_frames_are_skipped(emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]) -> None:
    progress: list[str] = []

    async def on_progress(_p: float, _t: float | None, message: str | None) -> None:
        progress.append(message or "")
        if (message or "").startswith("echo"):
            emu.release_agent()  # the first delta arrived live: let the reply finish

    async with served(emu, tmp_path, keypair[0]) as c:
        sid = (await call(c, "create_session", prompt="first", timeout_s=10))["session"]["id"]
        emu.faults.malformed_frames = True
        emu.hold_agent()
        with anyio.fail_after(15):
            r = await call(c, "send_message", on_progress, session_id=sid, text="garbled", wait=True, timeout_s=10)
        assert r["status"] == "idle" and texts(r) == ["garbled", "echo: garbled"]
        streamed = [p for p in progress if p.startswith("echo")]
        assert streamed and streamed[-1] == "echo: garbled"
        assert not any("not json" in p or "42" in p for p in progress)


async def test_expired_token_is_a_clear_auth_error_and_recovers(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(emu, tmp_path, keypair[0]) as c:
        emu.faults.clock_offset_s = 3600  # the server's clock is an hour ahead: every token has expired
        with anyio.fail_after(10):
            msg = await error_text(c, "create_session", prompt="hello", timeout_s=5)
        assert "401" in msg and "clock" in msg and "JWT_PRIVATE_KEY" in msg
        assert "eyJ" not in msg and "BEGIN" not in msg  # no token, no key
        assert not emu.sessions, "a rejected create must not create anything"
        emu.faults.clock_offset_s = 0
        r = await call(c, "create_session", prompt="hello", timeout_s=10)
        assert r["status"] == "idle" and texts(r) == ["hello", "echo: hello"]


async def test_subject_not_allowed_is_403(emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]) -> None:
    async with served(emu, tmp_path, keypair[0], jwt_subject="https://github.com/mallory") as c:
        msg = await error_text(c, "list_sessions", backend="fabro")
        assert "403" in msg and "allowed_usernames" in msg and "Access denied." in msg


async def test_5xx_reads_are_retried_and_posts_are_not(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(emu, tmp_path, keypair[0]) as c:
        created = await call(c, "create_session", prompt="base", timeout_s=10)
        sid = created["session"]["id"]
        fid = sid.partition(":")[2]
        emu.faults.fail_match = f"GET /api/v1/sessions/{fid}"
        emu.faults.fail_statuses = [502, 503]
        got = await call(c, "get_session", session_id=sid)
        assert got["id"] == sid and emu.faults.fail_statuses == []
        failed = [s for m, p, s in emu.requests if m == "GET" and p.endswith(fid)]
        assert failed[-3:] == [502, 503, 200]

        emu.faults.fail_match = f"POST /api/v1/sessions/{fid}/messages"
        emu.faults.fail_statuses = [502]
        posts_before = sum(1 for m, p, _ in emu.requests if m == "POST" and p.endswith("/messages"))
        with anyio.fail_after(15):
            msg = await error_text(c, "send_message", session_id=sid, text="lost", timeout_s=5)
        assert "502" in msg and "Fabro" in msg
        posts = sum(1 for m, p, _ in emu.requests if m == "POST" and p.endswith("/messages"))
        assert posts - posts_before == 1, "a POST must not be replayed"
        assert [t.get("content") for t in emu.sessions[fid].turns].count("lost") == 0
        r = await call(c, "send_message", session_id=sid, text="works", wait=True, timeout_s=10)
        assert texts(r) == ["works", "echo: works"]


async def test_slow_responses_end_within_the_timeout(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(emu, tmp_path, keypair[0], timeout_s=0.5) as c:
        sid = (await call(c, "create_session", prompt="quick", timeout_s=10))["session"]["id"]
        emu.faults.response_delay_s = 3.0
        started = time.monotonic()
        with anyio.fail_after(10):
            msg = await error_text(c, "get_session", session_id=sid)
        assert time.monotonic() - started < 8
        assert "cannot reach Fabro" in msg and "Timeout" in msg
        emu.faults.response_delay_s = 0
        got = await call(c, "get_session", session_id=sid)
        assert got["status"] == "idle"


async def test_agent_error_event_fails_the_turn_until_the_next_message(
    emu: FabroEmulator, tmp_path: Path, keypair: tuple[str, Any]
) -> None:
    async with served(emu, tmp_path, keypair[0]) as c:
        sid = (await call(c, "create_session", prompt="ok", timeout_s=10))["session"]["id"]
        emu.faults.agent_error = "model overloaded"
        with anyio.fail_after(15):
            r = await call(c, "send_message", session_id=sid, text="fail please", wait=True, timeout_s=10)
        assert r["status"] == "failed" and r["session"]["error"] == "model overloaded"
        assert texts(r) == ["fail please"]
        got = await call(c, "get_session", session_id=sid)
        assert got["status"] == "failed"
        again = await call(c, "send_message", session_id=sid, text="retry", wait=True, timeout_s=10)
        assert again["status"] == "idle" and again["session"]["error"] is None
        assert texts(again) == ["retry", "echo: retry"]


async def test_the_emulator_rejects_requests_that_break_the_contract(emu: FabroEmulator) -> None:
    async with httpx2.AsyncClient(base_url=emu.url) as raw:
        r = await raw.post("/api/v1/sessions", json={"content": "x", "model": None})
    assert r.status_code == 401  # no credentials
    assert any("request POST /api/v1/sessions" in v for v in emu.violations), emu.violations
    emu.violations.clear()
