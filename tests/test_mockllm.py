"""The mock model the host and agent tests script: every wire, encodings, script stepping, the log."""

from __future__ import annotations

import gzip
import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.mockllm import DONE_TEXT, Call, MockLLM, Say, Turn, iter_log

ECHO_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}}


def post(mock: MockLLM, path: str, body: dict[str, Any], encoding: str = "") -> tuple[str, bytes]:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "x-api-key": "secret-value"}
    if encoding == "gzip":
        raw = gzip.compress(raw)
    elif encoding == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    if encoding:
        headers["Content-Encoding"] = encoding
    req = urllib.request.Request(mock.url + path, data=raw, headers=headers, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.headers.get("Content-Type", ""), resp.read()


def sse(payload: bytes) -> Iterator[dict[str, Any]]:
    for line in payload.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[MockLLM]:
    script = [
        Call("echo", lambda turn, tool: {"text": "ping", "schema_seen": bool(tool and tool.schema)}),
        Say(lambda turn: f"got {turn.last_result.text if turn.last_result else None}"),
    ]
    with MockLLM(script, log_path=tmp_path / "log.jsonl") as m:
        yield m


def test_anthropic_sse_call_then_result_then_text(mock: MockLLM) -> None:
    tools = [{"name": "mcp__srv__echo", "input_schema": ECHO_SCHEMA}]
    first = {"model": "m", "stream": True, "tools": tools, "messages": [{"role": "user", "content": "go"}]}
    kind, body = post(mock, "/v1/messages?beta=true", first, "gzip")
    events = list(sse(body))
    assert kind == "text/event-stream"
    [start] = [e for e in events if e["type"] == "content_block_start"]
    assert start["content_block"]["name"] == "mcp__srv__echo"
    [delta] = [e for e in events if e["type"] == "content_block_delta"]
    assert json.loads(delta["delta"]["partial_json"]) == {"text": "ping", "schema_seen": True}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"
    call_id = start["content_block"]["id"]
    second = first | {
        "stream": False,
        "messages": [
            *first["messages"],
            {"role": "assistant", "content": [start["content_block"]]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call_id,
                        "is_error": True,
                        "content": [{"type": "text", "text": "PONG"}],
                    }
                ],
            },
        ],
    }
    _, body = post(mock, "/v1/messages", second, "zstd")
    assert json.loads(body)["content"] == [{"type": "text", "text": "got PONG"}]
    [result] = mock.results("echo")
    assert result["text"] == "PONG" and result["is_error"] is True and result["name"] == "mcp__srv__echo"
    logged = list(iter_log(mock.log_path)) if mock.log_path else []
    assert [e["auth_headers"] for e in logged] == [["x-api-key"], ["x-api-key"]]
    assert "secret-value" not in mock.log_path.read_text() if mock.log_path else False


def test_responses_namespace_tool_and_function_call_output(mock: MockLLM) -> None:
    tools = [{"type": "namespace", "name": "mcp__srv", "tools": [{"type": "function", "name": "echo"}]}]
    first = {
        "model": "m",
        "stream": True,
        "tools": tools,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go"}]}],
    }
    _, body = post(mock, "/v1/responses", first)
    events = list(sse(body))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    item = events[-1]["response"]["output"][0]
    assert (item["type"], item["name"], item["namespace"]) == ("function_call", "echo", "mcp__srv")
    second = first | {
        "input": [*first["input"], item, {"type": "function_call_output", "call_id": item["call_id"], "output": "PONG"}]
    }
    _, body = post(mock, "/v1/responses", second)
    final = list(sse(body))[-1]["response"]["output"][0]
    assert final["content"][0]["text"] == "got PONG"


def test_chat_completions_with_usage_chunk_and_done(mock: MockLLM) -> None:
    tools = [{"type": "function", "function": {"name": "srv-echo", "parameters": ECHO_SCHEMA}}]
    first = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": tools,
        "messages": [{"role": "user", "content": "go"}],
    }
    _, body = post(mock, "/v1/chat/completions", first)
    assert body.decode().rstrip().endswith("data: [DONE]")
    chunks = list(sse(body))
    call = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"]["name"] == "srv-echo" and chunks[1]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 15
    msgs = [
        *first["messages"],
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": [{"type": "text", "text": "PONG"}]},
    ]
    _, body = post(mock, "/v1/chat/completions", first | {"stream": False, "messages": msgs})
    assert json.loads(body)["choices"][0]["message"]["content"] == "got PONG"


def test_gemini_stream_array_and_schema_requests(mock: MockLLM) -> None:
    tools = [{"functionDeclarations": [{"name": "mcp_srv_echo", "parametersJsonSchema": ECHO_SCHEMA}]}]
    first = {"contents": [{"role": "user", "parts": [{"text": "go"}]}], "tools": tools}
    _, body = post(mock, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", first)
    [chunk] = list(sse(body))
    fc = chunk["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert fc["name"] == "mcp_srv_echo"
    second = first | {
        "contents": [
            *first["contents"],
            {"role": "model", "parts": [{"functionCall": fc}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "mcp_srv_echo", "response": {"output": "PONG"}}}]},
        ]
    }
    _, body = post(mock, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", second)
    assert json.loads(body)[0]["candidates"][0]["content"]["parts"][0]["text"] == "got PONG"
    router = {
        "contents": first["contents"],
        "generationConfig": {
            "responseJsonSchema": {
                "type": "object",
                "properties": {
                    "complexity_score": {"type": "integer", "minimum": 1, "maximum": 100},
                    "complexity_reasoning": {"type": "string"},
                },
            }
        },
    }
    _, body = post(mock, "/v1beta/models/gemini-3.5-flash-lite:generateContent", router)
    answer = json.loads(json.loads(body)["candidates"][0]["content"]["parts"][0]["text"])
    assert answer == {"complexity_score": 1, "complexity_reasoning": "mock"}


def test_models_listing_and_count_tokens(mock: MockLLM) -> None:
    with urllib.request.urlopen(mock.url + "/v1/models", timeout=10) as resp:
        listing = json.loads(resp.read())
    assert "mock-model" in [m["id"] for m in listing["data"]]
    assert json.loads(post(mock, "/v1/messages/count_tokens", {"messages": []})[1]) == {"input_tokens": 10}


def test_deferred_tool_is_searched_then_called() -> None:
    script = [Call("create_session", {"prompt": "x"}), Say("done")]
    listing = "<system-reminder>Deferred tools: mcp__sessions__create_session, mcp__sessions__get_session"
    msgs: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": listing}, {"type": "text", "text": "go"}]}
    ]
    tools = [{"name": "ToolSearch", "input_schema": {}}]
    with MockLLM(script) as mock:
        first = json.loads(post(mock, "/v1/messages", {"messages": msgs, "tools": tools})[1])["content"][0]
        assert first["name"] == "ToolSearch" and first["input"] == {"query": "select:mcp__sessions__create_session"}
        msgs += [
            {"role": "assistant", "content": [first]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": first["id"], "content": "ok"}]},
        ]
        second = json.loads(post(mock, "/v1/messages", {"messages": msgs, "tools": tools})[1])["content"][0]
        assert second["name"] == "mcp__sessions__create_session" and second["input"] == {"prompt": "x"}


def test_keyed_scripts_count_calls_from_the_latest_trigger() -> None:
    def branch(turn: Turn) -> Call | Say:
        return Say("saw error") if turn.last_result and "boom" in turn.last_result.text else Say("no error")

    scripts = {"FIRST": [Call("echo"), branch], "PLAIN": [Say("plain answer")]}
    tools = [{"type": "function", "function": {"name": "echo"}}]
    with MockLLM(scripts) as mock:
        msgs: list[dict[str, Any]] = [{"role": "user", "content": "FIRST please"}]
        reply = json.loads(post(mock, "/v1/chat/completions", {"messages": msgs, "tools": tools})[1])
        call = reply["choices"][0]["message"]["tool_calls"][0]
        msgs += [reply["choices"][0]["message"], {"role": "tool", "tool_call_id": call["id"], "content": "boom"}]
        reply = json.loads(post(mock, "/v1/chat/completions", {"messages": msgs, "tools": tools})[1])
        assert reply["choices"][0]["message"]["content"] == "saw error"
        msgs += [reply["choices"][0]["message"], {"role": "user", "content": "PLAIN now"}]
        reply = json.loads(post(mock, "/v1/chat/completions", {"messages": msgs, "tools": tools})[1])
        assert reply["choices"][0]["message"]["content"] == "plain answer"
        msgs += [reply["choices"][0]["message"], {"role": "user", "content": "unscripted"}]
        reply = json.loads(post(mock, "/v1/chat/completions", {"messages": msgs, "tools": tools})[1])
        assert reply["choices"][0]["message"]["content"] == "plain answer"  # latest trigger still PLAIN
        assert mock.wait_for(lambda e: e["action"]["text"] == "saw error", timeout=1)["wire"] == "chat"
    with MockLLM([]) as mock:
        reply = json.loads(post(mock, "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})[1])
        assert reply["choices"][0]["message"]["content"] == DONE_TEXT


def test_a_slow_answer_notices_the_client_hanging_up() -> None:
    with MockLLM([Say("late", delay_s=30)]) as mock:
        sock = socket.create_connection(("127.0.0.1", mock.port))
        body = json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode()
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        mock.wait_for(lambda e: e["action"]["text"] == "late", 10)  # decided, answer held back
        assert mock.wait_delayed(lambda e: e["action"]["text"] == "late", 1)["wire"] == "chat"
        sock.close()
        entry = mock.wait_for(lambda e: bool(e.get("hung_up")), timeout=10)
    assert entry["hung_up_after_s"] < 10 and entry["action"]["text"] == "late"


def test_a_server_still_connecting_is_searched_for_by_keyword() -> None:
    script = [Call("create_session", {"prompt": "x"}), Say("done")]
    note = "The following MCP servers are still connecting: sessions. Call ToolSearch with a keyword."
    msgs: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": note}]}]
    tools = [{"name": "ToolSearch", "input_schema": {}}]
    with MockLLM(script) as mock:

        def next_block() -> dict[str, Any]:
            return json.loads(post(mock, "/v1/messages", {"messages": msgs, "tools": tools})[1])["content"][0]

        def answer(block: dict[str, Any], result: str) -> None:
            msgs.extend(
                [
                    {"role": "assistant", "content": [block]},
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "tool_use_id": block["id"], "content": result}],
                    },
                ]
            )

        first = next_block()
        assert (first["name"], first["input"]) == ("ToolSearch", {"query": "create_session"})
        answer(first, '{"type": "tool_reference", "tool_name": "mcp__sessions__create_session"}')
        second = next_block()
        assert second["input"] == {"query": "select:mcp__sessions__create_session"}
        answer(second, "loaded")
        assert next_block()["name"] == "mcp__sessions__create_session"
