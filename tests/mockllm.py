"""A scriptable mock model server on 127.0.0.1 for driving real coding-agent CLIs offline.

It speaks the four wire shapes the CLIs use (see REAL-AGENTS.md), streaming or not:

- Anthropic Messages: ``POST …/messages`` (SSE when ``stream``), ``…/messages/count_tokens``;
- OpenAI Responses: ``POST …/responses`` (SSE);
- OpenAI Chat Completions: ``POST …/chat/completions`` (SSE when ``stream``);
- Gemini: ``POST …/models/M:generateContent``, ``:streamGenerateContent`` (SSE with ``alt=sse``,
  else a JSON array), ``:countTokens``;
- ``GET …/models`` (one list that fits the OpenAI, Anthropic and Gemini readers).

Request bodies may be gzip or zstd encoded. Every request is appended to :attr:`MockLLM.log` (and
to ``log_path`` as one JSON line): method, path, the *names* of auth headers (never values), the
parsed body, the conversation the mock read from it (:class:`Item` as dicts) and what it answered.

What it answers is a **script**: a list of steps, each a :class:`Call` (ask the host to call a
tool), a :class:`Say` (answer text, ending the turn) or a plain function of the :class:`Turn` that
returns one of them (to branch on earlier tool results). The step to play is the number of
non-helper tool calls the model already made in the current turn, read from the request itself,
so the mock holds no state between requests and side requests (titles, memory, routers) that carry
the same conversation get the same answer. When the script is exhausted it says ``MOCK_DONE``.

Tool names are matched loosely, because every host prefixes MCP tools its own way
(``mcp__srv__t``, ``mcp_srv_t``, ``srv___t``, ``srv-t``, Codex namespaces): ``Call("create_session")``
calls the offered tool whose name is ``create_session`` or ends in a separator plus it. When the
tool is not offered but a tool-search tool is (Claude Code, droid and Qwen defer MCP tools), the mock
first calls that with ``select:<full name>``; when a ``WaitForMcpServers`` tool is offered instead
(Claude Code while servers start), it calls that.

A step's ``delay_s`` holds the answer back (a slow model); when the CLI drops the request meanwhile
(a cancelled turn), the log entry gets ``hung_up_after_s``.

Several scripts can be given as ``{trigger: steps}``: the latest user text that contains a trigger
picks the script, and only calls after that message count (multi-turn sessions, e.g. over ACP).

Use it in a test::

    with MockLLM([Call("create_session", {"prompt": "hi"}), Say("done")]) as mock:
        run_the_cli(base_url=mock.url)
    assert mock.answered("call", tool="create_session")

Run ``python tests/mockllm.py`` to try a CLI by hand: it prints its URL and answers every request with text.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

AUTH_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key", "proxy-authorization")
SEARCH_TOOLS = ("ToolSearch", "tool_search", "search_tools", "ToolSearchTool")
WAIT_TOOLS = ("WaitForMcpServers",)
DONE_TEXT = "MOCK_DONE: the script has no more steps"
MODEL_IDS = ("mock-model", "gemini-2.5-flash", "claude-opus-5-5")


# --- what the mock reads from a request -------------------------------------------------------


@dataclass
class Item:
    """One conversation entry in wire-neutral form.

    ``kind`` is ``user`` (typed text, including system-reminder blocks), ``assistant`` (model text),
    ``call`` (the model asked for a tool: ``name``, ``args``, ``call_id``) or ``result`` (a tool
    result: ``call_id``, ``text``, ``is_error`` when the wire says so, else None; ``name`` when the
    wire carries it or the matching call is known).
    """

    kind: str
    text: str = ""
    name: str = ""
    args: dict[str, Any] = field(default_factory=dict[str, Any])
    call_id: str = ""
    is_error: bool | None = None


@dataclass
class Tool:
    """A tool the host offered: ``name`` as the model must call it, ``namespace`` (Codex), schema."""

    name: str
    schema: dict[str, Any] = field(default_factory=dict[str, Any])
    namespace: str = ""

    @property
    def full(self) -> str:
        return f"{self.namespace}__{self.name}" if self.namespace else self.name


@dataclass
class Turn:
    """What a step function sees: the current turn's items, the offered tools, every string of the body."""

    items: list[Item]
    tools: list[Tool]
    body_text: str
    wire: str
    history: list[Item] = field(default_factory=list[Item])
    """The whole conversation in the request, earlier turns included."""

    @property
    def results(self) -> list[Item]:
        """Tool results of this turn, oldest first (helper calls such as ToolSearch excluded)."""
        helpers = {i.call_id for i in self.items if i.kind == "call" and _is_helper(i.name)}
        return [i for i in self.items if i.kind == "result" and i.call_id not in helpers]

    @property
    def last_result(self) -> Item | None:
        return self.results[-1] if self.results else None

    def tool(self, wanted: str | Sequence[str]) -> Tool | None:
        """The offered tool that matches ``wanted`` (a name or candidates, first match wins)."""
        for name in [wanted] if isinstance(wanted, str) else wanted:
            for t in self.tools:
                if _matches(t.name, name) or _matches(t.full, name):
                    return t
        return None


# --- the script ---------------------------------------------------------------------------------


@dataclass
class Call:
    """Ask the host to call ``tool`` (a name or a list of candidate names) with ``args``.

    ``args`` may be a function of the :class:`Turn` and the resolved :class:`Tool` (or None when the
    tool is only known from a deferred listing), e.g. to pass on a session id from the last result.
    """

    tool: str | Sequence[str]
    args: Mapping[str, Any] | Callable[[Turn, Tool | None], Mapping[str, Any]] = field(default_factory=dict[str, Any])
    delay_s: float = 0.0


@dataclass
class Say:
    """Answer ``text`` (or a function of the :class:`Turn`) and end the turn, after ``delay_s``."""

    text: str | Callable[[Turn], str]
    delay_s: float = 0.0


Step = Call | Say | Callable[[Turn], "Call | Say"]


@dataclass
class Action:
    """What the mock answered: ``say`` with text, or ``call`` with a tool (and namespace) and args."""

    kind: str
    text: str = ""
    tool: str = ""
    namespace: str = ""
    args: dict[str, Any] = field(default_factory=dict[str, Any])
    delay_s: float = 0.0
    call_id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:12])


def _matches(offered: str, wanted: str) -> bool:
    if offered == wanted:
        return True
    return offered.endswith(wanted) and not offered[-len(wanted) - 1].isalnum()


def _is_helper(name: str) -> bool:
    return any(_matches(name, h) for h in (*SEARCH_TOOLS, *WAIT_TOOLS))


def _deferred_name(body_text: str, wanted: str) -> str | None:
    """A prefixed tool name mentioned in the request (a deferred-tools listing) ending in ``wanted``.

    Paths such as ``-tmp-x-probe`` also end in a tool's name, so names that look like MCP tool
    names (``mcp…``, a ``__`` separator) win over the rest, and a leading ``-`` never matches; the
    bare name counts too (Claude Code defers its own ``ReadMcpResourceTool``).
    """
    pattern = r"(?<![A-Za-z0-9_\-])((?:[A-Za-z0-9_][A-Za-z0-9_\-]*[_\-])?" + re.escape(wanted) + r")(?![A-Za-z0-9_\-])"
    found = re.findall(pattern, body_text)
    if not found:
        return None
    return max(found, key=lambda n: (n.startswith("mcp") or "__" in n, "-" not in n))


class Script:
    """Steps (or ``{trigger: steps}``) turned into one :class:`Action` per request."""

    def __init__(self, steps: Sequence[Step] | Mapping[str, Sequence[Step]]) -> None:
        self.scripts: dict[str | None, list[Step]] = (
            {k: list(v) for k, v in steps.items()} if isinstance(steps, Mapping) else {None: list(steps)}
        )

    def _current(self, items: list[Item]) -> tuple[list[Step], list[Item]]:
        if None in self.scripts:
            return self.scripts[None], items
        for index in range(len(items) - 1, -1, -1):
            if items[index].kind != "user":
                continue
            for trigger, steps in self.scripts.items():
                if trigger is not None and trigger in items[index].text:
                    return steps, items[index + 1 :]
        return [], items

    def decide(self, items: list[Item], tools: list[Tool], body_text: str, wire: str) -> Action:
        steps, turn_items = self._current(items)
        turn = Turn(turn_items, tools, body_text, wire, items)
        done = sum(1 for i in turn_items if i.kind == "call" and not _is_helper(i.name))
        if done >= len(steps):
            return Action("say", text=DONE_TEXT)
        step = steps[done]
        if not isinstance(step, Call | Say):
            step = step(turn)
        if isinstance(step, Say):
            return Action("say", text=step.text(turn) if callable(step.text) else step.text, delay_s=step.delay_s)
        return self._call(step, turn)

    def _call(self, step: Call, turn: Turn) -> Action:
        tool = turn.tool(step.tool)
        name = tool.name if tool else None
        namespace = tool.namespace if tool else ""
        wanted = [step.tool] if isinstance(step.tool, str) else list(step.tool)
        if tool is None:
            searched = [i for i in turn.items if i.kind == "call" and _is_helper(i.name)]
            for w in wanted:
                deferred = _deferred_name(turn.body_text, w)
                if deferred is None:
                    continue
                if any(deferred in json.dumps(s.args) for s in searched):
                    name = deferred  # loaded by an earlier search: callable by name now
                    break
                search = turn.tool(SEARCH_TOOLS)
                if search is not None:
                    return Action("call", tool=search.name, namespace=search.namespace,
                                  args={"query": f"select:{deferred}"})  # fmt: skip
            if name is None:
                # Not even listed: the server may still be connecting. Claude Code then asks the model
                # to search by keyword (its ToolSearch waits for connecting servers); older versions
                # offered a WaitForMcpServers tool.
                search = turn.tool(SEARCH_TOOLS)
                if search is not None and not any(s.args.get("query") == wanted[0] for s in searched):
                    return Action("call", tool=search.name, namespace=search.namespace, args={"query": wanted[0]})
                waiter = turn.tool(WAIT_TOOLS)
                waited = any(i.kind == "call" and _matches(i.name, WAIT_TOOLS[0]) for i in turn.items)
                if waiter is not None and not waited:
                    return Action("call", tool=waiter.name, args={})
                return Action("say", text=f"MOCK_NO_TOOL: none of {wanted} is offered")
        args = step.args(turn, tool) if callable(step.args) else step.args
        return Action("call", tool=name or wanted[0], namespace=namespace, args=dict(args), delay_s=step.delay_s)


# --- reading the four wires -----------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """Text of a content value that may be a string, a list of parts, or a dict."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_text_of(c) for c in content)  # pyright: ignore[reportUnknownVariableType]
    if isinstance(content, dict):
        for key in ("text", "output", "content", "result"):
            if key in content:
                return _text_of(content[key])
        return json.dumps(content)
    return str(content)


def _args(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw  # pyright: ignore[reportUnknownVariableType]
    try:
        parsed = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {"_raw": raw}
    return parsed if isinstance(parsed, dict) else {"_raw": parsed}


def read_anthropic(body: dict[str, Any]) -> tuple[list[Item], list[Tool]]:
    items: list[Item] = []
    for msg in body.get("messages", []):
        role = msg.get("role")
        content = msg.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for b in blocks:
            kind = b.get("type")
            if kind == "text":
                items.append(Item("user" if role == "user" else "assistant", text=b.get("text", "")))
            elif kind == "tool_use":
                items.append(Item("call", name=b.get("name", ""), args=b.get("input") or {}, call_id=b.get("id", "")))
            elif kind == "tool_result":
                items.append(Item("result", text=_text_of(b.get("content")), call_id=b.get("tool_use_id", ""),
                                  is_error=bool(b.get("is_error", False))))  # fmt: skip
    tools = [Tool(t["name"], t.get("input_schema") or {}) for t in body.get("tools", []) if "name" in t]
    return items, tools


def read_responses(body: dict[str, Any]) -> tuple[list[Item], list[Tool]]:
    items: list[Item] = []
    raw = body.get("input", [])
    for it in [{"type": "message", "role": "user", "content": raw}] if isinstance(raw, str) else raw:
        kind = it.get("type", "message")
        if kind == "message":
            role = it.get("role")
            if role in ("user", "assistant"):
                items.append(Item(role, text=_text_of(it.get("content"))))
        elif kind in ("function_call", "custom_tool_call"):
            name = it.get("name", "")
            ns = it.get("namespace") or ""
            items.append(Item("call", name=f"{ns}__{name}" if ns else name,
                              args=_args(it.get("arguments", it.get("input"))), call_id=it.get("call_id", "")))  # fmt: skip
        elif kind in ("function_call_output", "custom_tool_call_output"):
            items.append(Item("result", text=_text_of(it.get("output")), call_id=it.get("call_id", "")))
    tools: list[Tool] = []
    for t in body.get("tools", []):
        if t.get("type") == "namespace":
            tools += [Tool(s["name"], s.get("parameters") or {}, t.get("name", "")) for s in t.get("tools", [])]
        elif "name" in t:
            tools.append(Tool(t["name"], t.get("parameters") or {}))
    return items, tools


def read_chat(body: dict[str, Any]) -> tuple[list[Item], list[Tool]]:
    items: list[Item] = []
    for msg in body.get("messages", []):
        role = msg.get("role")
        if role == "user":
            items.append(Item("user", text=_text_of(msg.get("content"))))
        elif role == "assistant":
            if msg.get("content"):
                items.append(Item("assistant", text=_text_of(msg.get("content"))))
            for tc in msg.get("tool_calls") or []:
                fn = tc.get("function") or {}
                items.append(Item("call", name=fn.get("name", ""), args=_args(fn.get("arguments")),
                                  call_id=tc.get("id", "")))  # fmt: skip
        elif role == "tool":
            items.append(Item("result", text=_text_of(msg.get("content")), call_id=msg.get("tool_call_id", "")))
    tools = [
        Tool(t["function"]["name"], t["function"].get("parameters") or {})
        for t in body.get("tools", [])
        if isinstance(t.get("function"), dict)
    ]
    return items, tools


def read_gemini(body: dict[str, Any]) -> tuple[list[Item], list[Tool]]:
    items: list[Item] = []
    counter = itertools.count()
    open_calls: dict[str, list[str]] = {}
    for content in body.get("contents", []):
        role = content.get("role", "user")
        for part in content.get("parts", []):
            if "text" in part and not part.get("thought"):
                items.append(Item("user" if role == "user" else "assistant", text=part["text"]))
            elif "functionCall" in part:
                fc = part["functionCall"]
                cid = fc.get("id") or f"g{next(counter)}"
                open_calls.setdefault(fc.get("name", ""), []).append(cid)
                items.append(Item("call", name=fc.get("name", ""), args=fc.get("args") or {}, call_id=cid))
            elif "functionResponse" in part:
                fr = part["functionResponse"]
                name = fr.get("name", "")
                pending = open_calls.get(name) or [""]
                cid = fr.get("id") or pending.pop(0)
                response = fr.get("response") or {}
                is_error = "error" in response if isinstance(response, dict) else None
                items.append(Item("result", text=_text_of(response), name=name, call_id=cid, is_error=is_error))
    tools: list[Tool] = []
    for group in body.get("tools", []):
        for fd in group.get("functionDeclarations", []) or []:
            tools.append(Tool(fd["name"], fd.get("parametersJsonSchema") or fd.get("parameters") or {}))
    return items, tools


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed JSON value (where a deferred-tools listing may hide)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():  # pyright: ignore[reportUnknownVariableType]
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:  # pyright: ignore[reportUnknownVariableType]
            yield from _strings(v)


def _name_results(items: list[Item]) -> list[Item]:
    names = {i.call_id: i.name for i in items if i.kind == "call"}
    for i in items:
        if i.kind == "result" and not i.name:
            i.name = names.get(i.call_id, "")
    return items


# --- writing the four wires -----------------------------------------------------------------------


def _sse(event: str | None, data: Any) -> bytes:
    head = f"event: {event}\n" if event else ""
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"{head}data: {payload}\n\n".encode()


def anthropic_reply(action: Action, model: str, stream: bool) -> tuple[str, list[bytes] | dict[str, Any]]:
    msg_id = "msg_" + uuid.uuid4().hex[:16]
    if action.kind == "call":
        block: dict[str, Any] = {"type": "tool_use", "id": "toolu_" + action.call_id, "name": action.tool, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(action.args)}
        full_block = block | {"input": action.args}
        stop = "tool_use"
    else:
        block = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": action.text}
        full_block = {"type": "text", "text": action.text}
        stop = "end_turn"
    usage = {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    message = {"id": msg_id, "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": usage}  # fmt: skip
    if not stream:
        return "application/json", message | {"content": [full_block], "stop_reason": stop}
    return "text/event-stream", [
        _sse("message_start", {"type": "message_start", "message": message}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        ),
        _sse("message_stop", {"type": "message_stop"}),
    ]


def responses_reply(action: Action, model: str, stream: bool) -> tuple[str, list[bytes] | dict[str, Any]]:
    resp_id = "resp_" + uuid.uuid4().hex[:16]
    if action.kind == "call":
        item: dict[str, Any] = {"type": "function_call", "id": "fc_" + action.call_id, "call_id": action.call_id,
                                "name": action.tool, "arguments": json.dumps(action.args), "status": "completed"}  # fmt: skip
        if action.namespace:
            item["namespace"] = action.namespace
    else:
        item = {"type": "message", "id": "msg_" + action.call_id, "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": action.text, "annotations": []}]}  # fmt: skip
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 15}  # fmt: skip
    base = {"id": resp_id, "object": "response", "created_at": int(time.time()), "model": model}
    done = base | {"status": "completed", "output": [item], "usage": usage}
    if not stream:
        return "application/json", done
    seq = itertools.count()
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": base | {"status": "in_progress", "output": []}}),
        ("response.output_item.added", {"output_index": 0, "item": item}),
    ]
    if action.kind == "say":
        events.append(("response.output_text.delta",
                       {"item_id": item["id"], "output_index": 0, "content_index": 0, "delta": action.text}))  # fmt: skip
    events += [
        ("response.output_item.done", {"output_index": 0, "item": item}),
        ("response.completed", {"response": done}),
    ]
    return "text/event-stream", [
        _sse(name, {"type": name, "sequence_number": next(seq)} | data) for name, data in events
    ]


def chat_reply(action: Action, model: str, stream: bool, usage_chunk: bool) -> tuple[str, list[bytes] | dict[str, Any]]:
    chat_id = "chatcmpl-" + uuid.uuid4().hex[:16]
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    if action.kind == "call":
        call = {
            "id": action.call_id,
            "type": "function",
            "function": {"name": action.tool, "arguments": json.dumps(action.args)},
        }
        message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
        delta: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call | {"index": 0}]}
    else:
        message = {"role": "assistant", "content": action.text}
        finish = "stop"
        delta = {"role": "assistant", "content": action.text}
    base = {"id": chat_id, "created": int(time.time()), "model": model}
    if not stream:
        return "application/json", base | {"object": "chat.completion", "usage": usage,
                                           "choices": [{"index": 0, "message": message, "finish_reason": finish}]}  # fmt: skip
    chunk = base | {"object": "chat.completion.chunk"}
    out = [
        _sse(None, chunk | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}),
        _sse(None, chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
    ]
    if usage_chunk:
        out.append(_sse(None, chunk | {"choices": [], "usage": usage}))
    return "text/event-stream", [*out, _sse(None, "[DONE]")]


def _fill_schema(schema: Any) -> Any:
    """A minimal value that fits a JSON schema (Gemini's router and next-speaker checks ask for one)."""
    if not isinstance(schema, dict):
        return None
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")  # pyright: ignore[reportUnknownVariableType]
    kind = str(kind).lower()
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties") or {}
        return {k: _fill_schema(v) for k, v in props.items()}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    return "mock"


def gemini_reply(
    action: Action, model: str, mode: str, json_schema: Any
) -> tuple[str, list[bytes] | dict[str, Any] | list[Any]]:
    if json_schema is not None:
        parts: list[dict[str, Any]] = [{"text": json.dumps(_fill_schema(json_schema))}]
    elif action.kind == "call":
        parts = [{"functionCall": {"name": action.tool, "args": action.args}}]
    else:
        parts = [{"text": action.text}]
    answer = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        "modelVersion": model,
        "responseId": uuid.uuid4().hex[:16],
    }
    if mode == "sse":
        return "text/event-stream", [_sse(None, answer)]
    if mode == "array":
        return "application/json", [answer]
    return "application/json", answer


# --- the server -----------------------------------------------------------------------------------


def _decode(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding == "gzip":
        return gzip.decompress(raw)
    if encoding == "zstd":
        try:
            import zstandard  # pyright: ignore[reportMissingImports]

            return zstandard.ZstdDecompressor().decompressobj().decompress(raw)  # pyright: ignore
        except ImportError:
            from compression import zstd  # pyright: ignore[reportMissingImports]  # Python >= 3.14

            return zstd.decompress(raw)  # pyright: ignore
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


class MockLLM:
    """The mock model server. ``with MockLLM(script) as mock:`` serves on ``mock.url`` in a thread.

    ``script`` is a list of steps or ``{trigger: steps}`` (see the module docstring). ``log`` holds
    one dict per request; :meth:`wait_for` blocks until a logged request matches.
    """

    def __init__(
        self,
        script: Sequence[Step] | Mapping[str, Sequence[Step]] = (),
        *,
        log_path: Path | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.script = Script(script)
        self.log: list[dict[str, Any]] = []
        self.delayed: list[dict[str, Any]] = []
        """Requests a ``delay_s`` step is holding back, logged on arrival (see :meth:`wait_delayed`)."""
        self.log_path = log_path
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer((host, 0), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None
        self._decided: list[dict[str, Any]] = []  # answered or still being answered (a slow step)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """Base URL without a path, e.g. ``http://127.0.0.1:41234`` (append ``/v1`` where the CLI wants it)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MockLLM:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="mockllm", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> MockLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading the log ---

    def answered(self, kind: str, tool: str | None = None) -> list[dict[str, Any]]:
        """Logged requests the mock answered with ``kind`` (``call``/``say``), for ``tool`` if given."""
        with self._cond:
            entries = list(self.log)
        return [
            e
            for e in entries
            if e.get("action", {}).get("kind") == kind
            and (tool is None or _matches(e["action"].get("tool", ""), tool) or e["action"].get("tool") == tool)
        ]

    def results(self, tool: str) -> list[dict[str, Any]]:
        """Every tool result for ``tool`` that reached the mock (as Item dicts), first sighting of each call."""
        seen: dict[str, dict[str, Any]] = {}
        with self._cond:
            entries = list(self.log)
        for e in entries:
            for item in e.get("items", []):
                if item["kind"] == "result" and _matches(item["name"], tool) and item["call_id"] not in seen:
                    seen[item["call_id"]] = item
        return list(seen.values())

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        """The first request for which ``predicate`` holds, waiting up to ``timeout`` seconds for it.

        Requests count as soon as the mock has decided its answer (``action`` is set), before the
        answer is sent, so a test can act while a slow step is still being answered.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in [*self.log, *(d for d in self._decided if not any(d is e for e in self.log))]:
                    if predicate(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching request after {timeout} s ({len(self.log)} logged)")
                self._cond.wait(left)

    def wait_delayed(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 60.0) -> dict[str, Any]:
        """The first request held back by a step's ``delay_s`` for which ``predicate`` holds, as soon as it
        arrives (the log has it only once answered): e.g. to interrupt a turn while the model is "thinking"."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for entry in self.delayed:
                    if predicate(entry):
                        return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no matching delayed request after {timeout} s")
                self._cond.wait(left)

    def _delaying(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self.delayed.append(entry)
            self._cond.notify_all()

    def _record(self, entry: dict[str, Any]) -> None:
        """Log ``entry`` (once in :attr:`log`; the file gets a new line each time, e.g. a later hang-up)."""
        with self._cond:
            if not any(e is entry for e in self.log):
                self.log.append(entry)
            if self.log_path is not None:
                with self.log_path.open("a") as f:
                    f.write(json.dumps(entry, default=str) + "\n")
            self._cond.notify_all()

    # --- serving ---

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                # the CLI may hang up (killed, or it timed out a slow answer): nothing left to answer
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    super().handle()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the JSON log is the record

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                entry = mock._entry(self, "GET", path, None)
                if path.rstrip("/").endswith("/models"):
                    data = [{"id": m, "object": "model", "type": "model", "created": 0, "owned_by": "mock",
                             "display_name": m} for m in MODEL_IDS]  # fmt: skip
                    models = [{"name": f"models/{m}", "displayName": m, "supportedGenerationMethods":
                               ["generateContent", "streamGenerateContent", "countTokens"]} for m in MODEL_IDS]  # fmt: skip
                    self._json(200, {"object": "list", "data": data, "models": models, "has_more": False}, entry)
                else:
                    self._json(404, {"error": {"message": f"mock: no GET {path}"}}, entry)

            def do_POST(self) -> None:
                split = urlsplit(self.path)
                path, query = split.path, parse_qs(split.query)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else self._read_chunked()
                try:
                    body = json.loads(_decode(raw, self.headers.get("Content-Encoding", "")) or b"{}")
                except (ValueError, OSError) as exc:
                    entry = mock._entry(self, "POST", path, None)
                    self._json(400, {"error": {"message": f"mock: unreadable body: {exc}"}}, entry)
                    return
                entry = mock._entry(self, "POST", path, body)
                try:
                    self._route(path, query, body, entry)
                except (BrokenPipeError, ConnectionResetError):
                    entry["hung_up"] = True
                    mock._record(entry)

            def _read_chunked(self) -> bytes:
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    return b""
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()

            def _route(
                self, path: str, query: dict[str, list[str]], body: dict[str, Any], entry: dict[str, Any]
            ) -> None:
                stream = bool(body.get("stream"))
                model = str(body.get("model") or "mock-model")
                if path.endswith("/count_tokens"):
                    self._json(200, {"input_tokens": 10}, entry)
                elif path.endswith("/messages"):
                    items, tools = read_anthropic(body)
                    action = mock._decide(entry, "anthropic", items, tools, body)
                    self._send(*anthropic_reply(action, model, stream), entry)
                elif path.endswith("/responses"):
                    items, tools = read_responses(body)
                    action = mock._decide(entry, "responses", items, tools, body)
                    self._send(*responses_reply(action, model, stream or "stream" not in body), entry)
                elif path.endswith("/chat/completions"):
                    items, tools = read_chat(body)
                    action = mock._decide(entry, "chat", items, tools, body)
                    usage = bool((body.get("stream_options") or {}).get("include_usage"))
                    self._send(*chat_reply(action, model, stream, usage), entry)
                elif ":countTokens" in path:
                    self._json(200, {"totalTokens": 10}, entry)
                elif ":generateContent" in path or ":streamGenerateContent" in path:
                    model = path.rsplit("/", 1)[-1].split(":")[0]
                    items, tools = read_gemini(body)
                    config = body.get("generationConfig") or {}
                    schema = config.get("responseJsonSchema") or config.get("responseSchema")
                    if schema is not None:
                        action = Action("say", text="(schema)")
                        entry["action"] = asdict(action) | {"schema": True}
                        entry["items"] = [asdict(i) for i in _name_results(items)]
                    else:
                        action = mock._decide(entry, "gemini", items, tools, body)
                    mode = "json" if ":generateContent" in path else ("sse" if query.get("alt") == ["sse"] else "array")
                    self._send(*gemini_reply(action, model, mode, schema), entry)
                else:
                    self._json(404, {"error": {"message": f"mock: no POST {path}"}}, entry)

            def _json(self, status: int, data: Any, entry: dict[str, Any]) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                entry["status"] = status
                mock._record(entry)  # before the last byte leaves: a test reading the answer finds it logged
                self.wfile.write(payload)

            def _wait_or_hang_up(self, delay: float, entry: dict[str, Any]) -> bool:
                """Wait ``delay`` s before answering; False (and ``hung_up_after_s`` logged) if the CLI
                closed the connection meanwhile (a cancelled turn) or the mock is stopping."""
                started = time.monotonic()
                while (left := delay - (time.monotonic() - started)) > 0:
                    if mock._stop.is_set():
                        return False
                    readable, _, _ = select.select([self.connection], [], [], min(left, 0.05))
                    if not readable:
                        continue
                    if self.connection.recv(1, socket.MSG_PEEK):  # data, not EOF: just wait out the delay
                        return not mock._stop.wait(max(0.0, delay - (time.monotonic() - started)))
                    entry["hung_up_after_s"] = round(time.monotonic() - started, 3)
                    entry["hung_up"] = True
                    mock._record(entry)
                    self.close_connection = True
                    return False
                return True

            def _send(self, content_type: str, payload: Any, entry: dict[str, Any]) -> None:
                delay = float(entry.get("action", {}).get("delay_s") or 0)
                if delay:
                    mock._delaying(entry)
                if delay and not self._wait_or_hang_up(delay, entry):
                    return
                if content_type != "text/event-stream":
                    self._json(200, payload, entry)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in payload:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.flush()
                entry["status"] = 200
                mock._record(entry)  # before the closing chunk, as in _json
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler

    def _entry(self, handler: BaseHTTPRequestHandler, method: str, path: str, body: Any) -> dict[str, Any]:
        headers = {k.lower(): v for k, v in handler.headers.items() if k.lower() not in AUTH_HEADERS}
        auth = sorted({k.lower() for k in handler.headers if k.lower() in AUTH_HEADERS})
        return {"t": time.time(), "method": method, "path": handler.path, "route": path, "headers": headers,
                "auth_headers": auth, "body": body}  # fmt: skip

    def _decide(
        self, entry: dict[str, Any], wire: str, items: list[Item], tools: list[Tool], body: dict[str, Any]
    ) -> Action:
        items = _name_results(items)
        try:
            action = self.script.decide(items, tools, "\n".join(_strings(body)), wire)
        except Exception as exc:  # a script bug must show in the test, not hang the CLI
            action = Action("say", text=f"MOCK_SCRIPT_ERROR: {type(exc).__name__}: {exc}")
        entry["wire"] = wire
        entry["items"] = [asdict(i) for i in items]
        entry["tools"] = [t.full for t in tools]
        entry["action"] = asdict(action)
        with self._cond:
            self._decided.append(entry)
            self._cond.notify_all()
        return action


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Mock model server (answers MOCK_DONE) for trying a CLI by hand.")
    parser.add_argument("--log", type=Path, help="JSON-lines request log")
    args = parser.parse_args(argv)
    mock = MockLLM([Say("MOCK_REPLY_OK: hello from the mock model")], log_path=args.log)
    with mock, contextlib.suppress(KeyboardInterrupt):
        print(mock.url, flush=True)
        threading.Event().wait()
    return 0


def iter_log(path: Path) -> Iterator[dict[str, Any]]:
    """Entries of a JSON-lines log written with ``log_path``."""
    with path.open() as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


if __name__ == "__main__":
    raise SystemExit(main())
