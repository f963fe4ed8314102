"""The openai agent against an OpenAI-compatible chat-completions endpoint served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from mcp import Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sessions_mcp.server import build_server
from sessions_mcp.settings import Settings

from .conftest import client_for

pytestmark = pytest.mark.anyio

KEY = "sk-test-0123456789abcdef"


class FakeOpenAI:
    """Behaviour picked by the requested model name; every request is recorded."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.release = anyio.Event()
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.completions, methods=["POST"])])

    def count(self, model: str) -> int:
        return sum(1 for r in self.requests if r["model"] == model)

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        self.auth.append(request.headers.get("authorization"))
        model = body["model"]
        if model == "stream-model":
            return StreamingResponse(self.stream(["Hel", "lo", " there"]), media_type="text/event-stream")
        if model == "slow-stream":
            return StreamingResponse(self.stream(["first ", "second"], wait=True), media_type="text/event-stream")
        if model == "json-model":
            return JSONResponse(
                {"id": "c1", "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "whole answer"}, "finish_reason": "stop"}
                ]}
            )  # fmt: skip
        if model == "limited-once" and self.count(model) == 1:
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"})
        if model == "limited-once":
            return StreamingResponse(self.stream(["after the wait"]), media_type="text/event-stream")
        if model == "always-limited":
            return JSONResponse({"error": {"message": "quota"}}, status_code=429, headers={"Retry-After": "0"})
        if model == "limited-long":
            return JSONResponse(
                {"error": {"message": "come back tomorrow"}}, status_code=429, headers={"Retry-After": "3600"}
            )
        if model == "bad-key":
            return JSONResponse({"error": {"message": f"Incorrect API key provided: {KEY}"}}, status_code=401)
        if model == "broken":
            return Response(
                "<html>upstream internal-host-7 exploded</html>", status_code=500, headers={"Retry-After": "0"}
            )
        if model == "dies-mid-stream":
            return StreamingResponse(self.dies(), media_type="text/event-stream")
        return JSONResponse({"error": {"message": f"model {model} not found"}}, status_code=404)

    async def stream(self, pieces: list[str], wait: bool = False) -> AsyncIterator[str]:
        for i, piece in enumerate(pieces):
            if wait and i == 1:
                await self.release.wait()
            chunk = {
                "id": "c",
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {"content": piece}}],
            }
            yield f"data: {json.dumps(chunk)}\n\n"
        yield ": keep-alive comment\n\n"
        yield 'data: {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
        yield "data: [DONE]\n\n"

    async def dies(self) -> AsyncIterator[str]:
        chunk = {"choices": [{"index": 0, "delta": {"content": "partial"}}]}
        yield f"data: {json.dumps(chunk)}\n\n"
        yield f"data: {json.dumps({'error': {'message': 'the model crashed'}})}\n\n"


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    api = FakeOpenAI()
    server = uvicorn.Server(uvicorn.Config(api.app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:
                await anyio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield api, f"http://127.0.0.1:{port}/v1"
        server.should_exit = True


@asynccontextmanager
async def served(make_settings: Callable[..., Settings], base_url: str, **local: Any) -> AsyncIterator[Client]:
    local = {"agent": "openai", "openai_base_url": base_url, "openai_model": "stream-model",
             "openai_api_key": KEY, **local}  # fmt: skip
    async with client_for(build_server(make_settings(local=local)), "auto") as c:
        yield c


async def ok(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    r = await client.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


async def test_streamed_reply_with_system_prompt_history_and_key(
    fake: tuple[FakeOpenAI, str], make_settings: Callable[..., Settings]
) -> None:
    api, url = fake
    async with served(make_settings, url, openai_system="You are terse.") as c:
        first = await ok(c, "create_session", prompt="hi", timeout_s=20)
        assert first["status"] == "idle" and first["session"]["agent"] == "openai"
        assert [m["text"] for m in first["messages"]] == ["hi", "Hello there"]
        second = await ok(c, "send_message", session_id=first["session"]["id"], text="again", timeout_s=20)
        assert [m["text"] for m in second["messages"]] == ["again", "Hello there"]
    assert api.auth == [f"Bearer {KEY}"] * 2
    assert api.requests[0]["stream"] is True and api.requests[0]["model"] == "stream-model"
    assert api.requests[1]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello there"},
        {"role": "user", "content": "again"},
    ]


async def test_stream_reaches_the_waiting_caller_while_the_model_is_still_writing(
    fake: tuple[FakeOpenAI, str], make_settings: Callable[..., Settings]
) -> None:
    api, url = fake
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")
        if message and "first" in message:
            api.release.set()

    async with served(make_settings, url, openai_model="slow-stream") as c:
        r = await c.call_tool("create_session", {"prompt": "go", "timeout_s": 20}, progress_callback=on_progress)
    assert not r.is_error and r.structured_content is not None
    assert r.structured_content["messages"][1]["text"] == "first second"
    assert "first " in seen


async def test_non_streaming_answer_and_session_model_and_system_override(
    fake: tuple[FakeOpenAI, str], make_settings: Callable[..., Settings]
) -> None:
    api, url = fake
    async with served(make_settings, url, openai_system="default system") as c:
        r = await ok(c, "create_session", prompt="q", model="json-model", system="session system", timeout_s=20)
    assert r["status"] == "idle" and r["messages"][1]["text"] == "whole answer"
    assert api.requests[0]["messages"][0] == {"role": "system", "content": "session system"}


async def test_a_429_is_retried_after_retry_after(
    fake: tuple[FakeOpenAI, str], make_settings: Callable[..., Settings]
) -> None:
    api, url = fake
    async with served(make_settings, url, openai_model="limited-once") as c:
        r = await ok(c, "create_session", prompt="q", timeout_s=20)
    assert r["status"] == "idle" and r["messages"][1]["text"] == "after the wait"
    assert api.count("limited-once") == 2


@pytest.mark.parametrize(
    ("model", "expected", "requests"),
    [
        ("always-limited", "rate limiting requests (429): quota", 4),
        ("limited-long", "rate limiting requests (429): come back tomorrow; retry in 3600 s", 1),
        ("bad-key", "rejected the credentials (401)", 1),
        ("broken", "failed on its side (500)", 4),
        ("no-such-model", "model no-such-model not found", 1),
    ],
)
async def test_errors_fail_the_turn_with_a_mapped_message_and_no_secret(
    fake: tuple[FakeOpenAI, str],
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
    model: str,
    expected: str,
    requests: int,
) -> None:
    api, url = fake
    caplog.set_level(logging.DEBUG)
    async with served(make_settings, url, openai_model=model) as c:
        r = await ok(c, "create_session", prompt="q", timeout_s=30)
        assert r["status"] == "failed"
        error = r["session"]["error"]
        again = await ok(c, "get_session", session_id=r["session"]["id"])
    assert expected in error
    assert KEY not in error and KEY not in caplog.text and KEY not in json.dumps(again)
    assert api.count(model) == requests
    if model == "bad-key":
        assert "OPENAI_API_KEY" in error


async def test_an_error_in_the_stream_keeps_the_partial_reply(
    fake: tuple[FakeOpenAI, str], make_settings: Callable[..., Settings]
) -> None:
    _, url = fake
    async with served(make_settings, url, openai_model="dies-mid-stream") as c:
        r = await ok(c, "create_session", prompt="q", timeout_s=20)
    assert r["status"] == "failed" and "the model crashed" in r["session"]["error"]
    assert r["messages"][1]["text"] == "partial"


async def test_an_unreachable_endpoint_fails_the_turn_with_advice(make_settings: Callable[..., Settings]) -> None:
    async with served(make_settings, "http://127.0.0.1:9/v1") as c:
        r = await ok(c, "create_session", prompt="q", timeout_s=30)
    assert r["status"] == "failed"
    assert "cannot reach" in r["session"]["error"] and "OPENAI_BASE_URL" in r["session"]["error"]


async def test_no_model_configured_says_what_to_set(
    fake: tuple[FakeOpenAI, str], make_settings: Callable[..., Settings]
) -> None:
    _, url = fake
    async with served(make_settings, url, openai_model="") as c:
        r = await ok(c, "create_session", prompt="q", timeout_s=20)
    assert r["status"] == "failed" and "SESSIONS_MCP_LOCAL__OPENAI_MODEL" in r["session"]["error"]
