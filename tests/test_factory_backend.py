"""The Factory backend against the in-process emulator (``httpx2.ASGITransport``): mapping,
pagination, status rules, waiting with progress, retries and the doctor checks."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from sessions_mcp._http import Redactor, RetryPolicy, parse_retry_after
from sessions_mcp.backends.factory import FactoryBackend, create_backend
from sessions_mcp.backends.requests import CreateRequest, MessageQuery, SendRequest, SessionQuery
from sessions_mcp.errors import (
    AuthError,
    BadCursor,
    ConfigError,
    PaymentRequired,
    ProtocolError,
    RateLimited,
    Unavailable,
    UnknownSession,
)
from sessions_mcp.models import (
    AttachmentPart,
    RawPart,
    Status,
    TextPart,
    ThinkingPart,
    ToolCallPart,
    ToolResultPart,
)
from sessions_mcp.service import SessionService
from sessions_mcp.settings import Settings, load_settings
from sessions_mcp.store.sqlite import SqliteStore

from .emulators.factory import API_KEY, FactoryEmulator

pytestmark = pytest.mark.anyio
P = "local"


def settings(**factory: Any) -> Settings:
    return load_settings(
        None, backends=["factory"], factory={"api_key": API_KEY, "base_url": "http://factory", **factory}
    )


@pytest.fixture
def emu() -> FactoryEmulator:
    return FactoryEmulator(reply_delay_s=0.1)


@pytest.fixture
async def backend(emu: FactoryEmulator, tmp_path: Path) -> AsyncIterator[FactoryBackend]:
    be = create_backend(settings(), SqliteStore(tmp_path / "s.db"), transport=httpx2.ASGITransport(app=emu.app))
    yield be
    await be.aclose()
    assert not emu.unexpected


def make(emu: FactoryEmulator, transport: httpx2.AsyncBaseTransport | None = None, **kw: Any) -> FactoryBackend:
    return FactoryBackend(
        settings(**kw).factory,
        transport=transport or httpx2.ASGITransport(app=emu.app),
        policy=RetryPolicy(wait_initial_s=0.01, wait_max_s=0.05, wait_jitter_s=0.0),
    )


async def until(check: Callable[[], Any], timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():
            await anyio.sleep(0.02)


async def test_create_with_prompt_then_reply_and_idle(backend: FactoryBackend, emu: FactoryEmulator) -> None:
    created = await backend.create_session(CreateRequest(principal=P, prompt="hello", title="t1"))
    sid = created.session.native_id
    assert created.session.status is Status.RUNNING and created.session.title == "t1"
    assert [m.text for m in created.written] == ["hello"]
    assert emu.sessions[sid].title == "t1"
    # create sends only documented fields; title goes through PATCH
    assert ("POST", "/api/v0/sessions") in emu.requests and ("PATCH", f"/api/v0/sessions/{sid}") in emu.requests

    async def answered() -> bool:
        page = await backend.list_messages(MessageQuery(P, sid, after=created.written[0].position, limit=50))
        return page.status is Status.IDLE and any(m.text == "echo: hello" for m in page.items)

    await until(answered)
    page = await backend.list_messages(MessageQuery(P, sid, after=None, limit=50))
    assert [m.role for m in page.items] == ["user", "assistant"]
    assert page.items[0].created_at.tzinfo is not None
    assert abs(page.items[0].created_at.timestamp() - time.time()) < 60


async def test_content_blocks_map_to_parts_without_loss(backend: FactoryBackend, emu: FactoryEmulator) -> None:
    sid = (await backend.create_session(CreateRequest(principal=P))).session.native_id
    emu.add_message(
        sid,
        "assistant",
        [
            {"type": "thinking", "thinking": "let me see", "signature": "sig"},
            {"type": "redacted_thinking", "data": "xx"},
            {"type": "text", "text": "Reading the file."},
            {"type": "tool_use", "id": "tu_1", "name": "Read", "input": {"path": "/a"}},
            {"type": "image", "source": {"type": "base64", "mediaType": "image/png", "data": "iVBORw0K"}},
            {"type": "document", "name": "spec.pdf", "source": {"type": "url", "url": "https://x/spec.pdf"}},
            {"type": "hologram", "beam": 3},
        ],
    )
    emu.add_message(
        sid, "tool", [{"type": "tool_result", "toolUseId": "tu_1", "content": "file body", "isError": True}]
    )
    page = await backend.list_messages(MessageQuery(P, sid, after=None, limit=10))
    parts = page.items[0].parts
    assert isinstance(parts[0], ThinkingPart) and parts[0].text == "let me see"
    assert isinstance(parts[1], ThinkingPart) and parts[1].redacted
    assert isinstance(parts[2], TextPart)
    assert isinstance(parts[3], ToolCallPart) and parts[3].input == {"path": "/a"} and parts[3].id == "tu_1"
    assert isinstance(parts[4], AttachmentPart) and parts[4].media_type == "image/png" and parts[4].data_b64
    assert isinstance(parts[5], AttachmentPart) and parts[5].url == "https://x/spec.pdf"
    assert isinstance(parts[6], RawPart) and parts[6].data == {"type": "hologram", "beam": 3}
    tool = page.items[1]
    assert tool.role == "tool"
    result = tool.parts[0]
    assert isinstance(result, ToolResultPart) and result.tool_call_id == "tu_1" and result.is_error
    assert "[tool error] file body" in tool.text


async def test_positions_walk_cursor_pages(backend: FactoryBackend, emu: FactoryEmulator) -> None:
    sid = (await backend.create_session(CreateRequest(principal=P))).session.native_id
    for i in range(250):
        emu.add_message(sid, "user" if i % 2 == 0 else "assistant", [{"type": "text", "text": f"m{i}"}])
    seen: list[str] = []
    after = None
    while True:
        page = await backend.list_messages(MessageQuery(P, sid, after=after, limit=60))
        seen += [m.text for m in page.items]
        if not page.items:
            break
        after = page.items[-1].position
    assert seen == [f"m{i}" for i in range(250)]
    # a fresh backend (another process, after a restart) resumes from a stored position
    fresh = make(emu)
    page = await fresh.list_messages(MessageQuery(P, sid, after=after, limit=5))
    assert page.items == []
    mid = (await fresh.list_messages(MessageQuery(P, sid, after=None, limit=150))).items[-1].position
    page = await fresh.list_messages(MessageQuery(P, sid, after=mid, limit=3, roles=["assistant"]))
    assert [m.text for m in page.items] == ["m151", "m153", "m155"] and page.has_more
    with pytest.raises(BadCursor):
        await fresh.list_messages(MessageQuery(P, sid, after="7.msg_gone", limit=3))
    await fresh.aclose()


async def test_status_stays_running_until_the_turn_is_seen(emu: FactoryEmulator, tmp_path: Path) -> None:
    # the service is slow to flip: right after the post it still says idle
    emu.start_lag_s = 0.4
    be = make(emu)
    sid = (await be.create_session(CreateRequest(principal=P))).session.native_id
    svc = SessionService({"factory": be}, SqliteStore(tmp_path / "svc.db"))
    progress: list[str] = []

    async def on_progress(text: str) -> None:
        progress.append(text)

    with anyio.fail_after(10):
        r = await svc.send_message(
            P, session_id=f"factory:{sid}", text="late", role="user", wait=True, timeout_s=8, idempotency_key=None,
            progress=on_progress,
        )  # fmt: skip
    assert r.status is Status.IDLE
    assert [m.text for m in r.messages] == ["late", "echo: late"]
    assert any("echo: late" in p for p in progress)
    await be.aclose()


async def test_waiting_polls_with_backoff(emu: FactoryEmulator, tmp_path: Path) -> None:
    emu.reply_delay_s = 60
    be = make(emu)
    sid = (await be.create_session(CreateRequest(principal=P))).session.native_id
    svc = SessionService({"factory": be}, SqliteStore(tmp_path / "svc.db"))
    before = len(emu.requests)
    started = time.monotonic()
    r = await svc.send_message(
        P, session_id=f"factory:{sid}", text="slow", role="user", wait=True, timeout_s=3, idempotency_key=None
    )
    assert r.status is Status.RUNNING and time.monotonic() - started < 8
    polls = [p for m, p in emu.requests[before:] if m == "GET" and p == f"/api/v0/sessions/{sid}"]
    # 0.25 s growing by 1.6x to 3 s: about 6 watch polls in 3 s (12 at a fixed 0.25 s), plus the
    # reads of the service itself (after the post, before and after waiting, after a change)
    assert 3 <= len(polls) <= 11, len(polls)
    await be.aclose()


async def test_rename_interrupt_delete(backend: FactoryBackend, emu: FactoryEmulator) -> None:
    emu.reply_delay_s = 30
    created = await backend.create_session(CreateRequest(principal=P, prompt="long job"))
    sid = created.session.native_id
    assert (await backend.get_session(P, sid)).status is Status.RUNNING
    assert (await backend.rename_session(P, sid, "renamed")).title == "renamed"
    stopped = await backend.interrupt_session(P, sid)
    assert stopped.status is Status.IDLE
    await backend.interrupt_session(P, sid)  # idempotent
    await backend.delete_session(P, sid)
    for call in (
        backend.get_session(P, sid),
        backend.list_messages(MessageQuery(P, sid, after=None, limit=5)),
        backend.send_message(SendRequest(P, sid, "x", "user")),
        backend.delete_session(P, sid),
    ):
        with pytest.raises(UnknownSession, match=f"factory:{sid}"):
            await call


async def test_list_sessions_pages_and_filters(backend: FactoryBackend) -> None:
    ids = {
        (await backend.create_session(CreateRequest(principal=P, title=f"s{i}"))).session.native_id for i in range(5)
    }
    seen: list[str] = []
    cursor = None
    while True:
        page = await backend.list_sessions(SessionQuery(principal=P, cursor=cursor, limit=2))
        seen += [r.native_id for r in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids)
    page = await backend.list_sessions(SessionQuery(principal=P, query="S3", limit=10))
    assert [r.title for r in page.items] == ["s3"]
    page = await backend.list_sessions(SessionQuery(principal=P, statuses=frozenset({Status.RUNNING}), limit=10))
    assert page.items == []


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, AuthError, "FACTORY_API_KEY"),
        (403, AuthError, "FACTORY_API_KEY"),
        (402, PaymentRequired, "plan"),
        (400, Exception, "400"),
    ],
)
async def test_status_codes_map_to_errors(
    emu: FactoryEmulator, status: int, error: type[Exception], words: str
) -> None:
    be = make(emu)
    emu.inject(status, method="GET")
    with pytest.raises(error, match=words):
        await be.list_sessions(SessionQuery(principal=P))
    await be.aclose()


async def test_retries_only_where_safe(emu: FactoryEmulator) -> None:
    be = make(emu)
    sid = (await be.create_session(CreateRequest(principal=P))).session.native_id
    # idempotent GET: 503 twice, then fine
    emu.inject(503, times=2, method="GET", retry_after="0")
    before = len(emu.requests)
    assert (await be.get_session(P, sid)).native_id == sid
    assert len(emu.requests) - before == 3
    # POST message: 503 is not replayed
    emu.inject(503, method="POST", path_contains="/messages")
    before = len(emu.requests)
    with pytest.raises(Unavailable, match="503"):
        await be.send_message(SendRequest(P, sid, "once", "user"))
    assert len(emu.requests) - before == 1
    # POST message handled, then the answer is lost: still not replayed, no duplicate
    emu.inject(502, method="POST", path_contains="/messages", after_handling=True, html=True)
    with pytest.raises(Unavailable, match="502"):
        await be.send_message(SendRequest(P, sid, "twice?", "user"))
    assert emu.user_texts(sid) == ["twice?"]
    # interrupt is documented idempotent: retried
    emu.inject(500, method="POST", path_contains="/interrupt")
    await be.interrupt_session(P, sid)
    await be.aclose()


async def test_connect_errors_are_retried_even_for_post(emu: FactoryEmulator) -> None:
    inner = httpx2.ASGITransport(app=emu.app)
    failures = {"left": 2}

    class Flaky(httpx2.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.method == "POST" and request.url.path.endswith("/messages") and failures["left"]:
                failures["left"] -= 1
                raise httpx2.ConnectError("connection refused")
            return await inner.handle_async_request(request)

    be = make(emu, transport=Flaky())
    sid = (await be.create_session(CreateRequest(principal=P))).session.native_id
    await be.send_message(SendRequest(P, sid, "exactly once", "user"))
    assert emu.user_texts(sid) == ["exactly once"] and failures["left"] == 0
    await be.aclose()


async def test_retry_after_honoured_up_to_a_cap(emu: FactoryEmulator) -> None:
    be = make(emu)
    emu.inject(429, method="GET", retry_after="0.3")
    started = time.monotonic()
    await be.list_sessions(SessionQuery(principal=P))
    assert time.monotonic() - started >= 0.3
    emu.inject(429, method="GET", retry_after="120")
    started = time.monotonic()
    with pytest.raises(RateLimited) as info:
        await be.list_sessions(SessionQuery(principal=P))
    assert info.value.retry_after == 120 and time.monotonic() - started < 1
    assert "120" in str(info.value)
    await be.aclose()


async def test_malformed_json_is_a_protocol_error(emu: FactoryEmulator) -> None:
    be = make(emu)
    emu.inject(method="GET", malformed=True)
    with pytest.raises(ProtocolError, match="not JSON"):
        await be.list_sessions(SessionQuery(principal=P))
    await be.aclose()


async def test_no_key_names_the_setting(emu: FactoryEmulator) -> None:
    be = FactoryBackend(load_settings(None, backends=["factory"]).factory, transport=httpx2.ASGITransport(app=emu.app))
    with pytest.raises(ConfigError, match="FACTORY_API_KEY"):
        await be.create_session(CreateRequest(principal=P))
    checks = await be.diagnose()
    assert checks[0].level == "fail" and "FACTORY_API_KEY" in checks[0].fix
    assert emu.requests == []


async def test_diagnose(emu: FactoryEmulator) -> None:
    ok = await make(emu).diagnose()
    assert [c.level for c in ok] == ["ok", "ok"] and "accepted" in ok[0].detail
    bad = await make(emu, api_key="fk-wrong-key-123456").diagnose()
    assert bad[0].level == "fail" and "FACTORY_API_KEY" in bad[0].fix and bad[1].level == "ok"
    assert "fk-wrong-key-123456" not in repr(bad)
    down = await FactoryBackend(
        settings(base_url="http://127.0.0.1:9").factory, policy=RetryPolicy(attempts=1)
    ).diagnose()
    assert down[1].level == "fail" and "SESSIONS_MCP_FACTORY__BASE_URL" in down[1].fix


async def test_no_secret_in_errors_or_logs(emu: FactoryEmulator, caplog: pytest.LogCaptureFixture) -> None:
    canary = "fk-CANARY-7f3a9c1e5b"
    emu.api_key = canary
    be = make(emu, api_key=canary)
    caplog.set_level(logging.DEBUG)
    leak = {"title": "bad", "detail": f"your key {canary} is wrong", "errors": [{"message": f"Bearer {canary}"}]}
    texts: list[str] = []
    for status in (400, 401, 500, 503):
        emu.inject(status, method="GET", body=leak, times=5)
        try:
            await be.get_session(P, "sess_x")
        except Exception as exc:
            texts.append(str(exc) + repr(exc))
    assert len(texts) == 4
    emu.faults.clear()
    await be.aclose()
    blob = "\n".join(texts) + "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert canary not in blob and "CANARY" not in blob
    assert "***" in "\n".join(texts)


def test_redactor_and_retry_after_parsing() -> None:
    r = Redactor(["s3cr3t-value"])
    assert r("a s3cr3t-value b Bearer abcdef123456 fk-abcdefghij token=zzzzzz") == "a *** b Bearer *** *** token=***"
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
