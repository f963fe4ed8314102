"""Real A2A agents for tests: ``a2a-sdk``'s own server classes (``DefaultRequestHandler``,
``InMemoryTaskStore``, JSON-RPC/REST routes) with an ``AgentExecutor`` of ours, under uvicorn on
127.0.0.1 in a thread.

The executor's behaviour follows the prompt: ``ask ...`` goes ``input-required`` and finishes
with the answer; ``slow ...`` works until cancelled or released; ``fail``/``reject``/``auth``
end in those states; anything else answers ``echo: <text>`` as a streamed artifact and the final
status message ``done``. Faults are injected by an ASGI wrapper (5xx, cut streams, bad cards).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes, create_rest_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    TaskState,
)
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class Behaviour:
    """Knobs a test turns while the agent runs (read from the agent's thread)."""

    hold: threading.Event = field(default_factory=threading.Event)
    """While set, ``echo`` turns wait (the contract suite's ``slow()``)."""
    released: threading.Event = field(default_factory=threading.Event)
    cancelled: list[str] = field(default_factory=list[str])
    prompts: list[str] = field(default_factory=list[str])


class ScriptedAgent(AgentExecutor):
    """An agent whose behaviour follows the prompt (see the module docstring)."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.b = behaviour

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        text = context.get_user_input()
        self.b.prompts.append(text)
        task = context.current_task
        resumed = task is not None and task.status.state == TaskState.TASK_STATE_INPUT_REQUIRED
        if task is None:
            assert context.message is not None
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        up = TaskUpdater(event_queue, task.id, task.context_id)
        await up.start_work(up.new_agent_message([new_text_part(f"working on {text[:40]}")]))
        if resumed:
            await up.add_artifact([new_text_part(f"echo: {text}")], name="answer")
            await up.complete(up.new_agent_message([new_text_part("thanks")]))
            return
        if text.startswith("ask"):
            await up.requires_input(up.new_agent_message([new_text_part("which colour?")]))
            return
        if text.startswith("fail"):
            await up.failed(up.new_agent_message([new_text_part("boom")]))
            return
        if text.startswith("reject"):
            await up.reject(up.new_agent_message([new_text_part("not my job")]))
            return
        if text.startswith("auth"):
            await up.requires_auth(up.new_agent_message([new_text_part("log in at https://example.test")]))
            return
        if text.startswith("slow") or self.b.hold.is_set():
            await up.add_artifact([new_text_part("partial ")], name="answer", artifact_id="a1")
            while not self.b.released.is_set():
                await asyncio.sleep(0.02)
            await up.add_artifact([new_text_part(f"echo: {text}")], artifact_id="a1", append=True, last_chunk=True)
            await up.complete(up.new_agent_message([new_text_part("done")]))
            return
        await up.add_artifact([new_text_part("echo: ")], name="answer", artifact_id="a1")
        await up.add_artifact([new_text_part(text)], artifact_id="a1", append=True, last_chunk=True)
        await up.complete(up.new_agent_message([new_text_part("done")]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        self.b.cancelled.append(context.task_id or "")
        up = TaskUpdater(event_queue, context.task_id or "", context.context_id or "")
        await up.cancel(up.new_agent_message([new_text_part("stopped")]))


@dataclass
class Faults:
    """Injected by the ASGI wrapper, counted down per request."""

    rpc_status: int = 0
    rpc_count: int = 0
    cut_stream_after: int = 0
    """Abort the next streamed response after this many body chunks."""
    garble_stream_at: int = 0
    """Replace this body chunk of the next streamed response with an event A2A does not define."""
    card_body: bytes | None = None
    token: str | None = None
    """Bearer token the RPC routes require (the card stays public)."""
    only_v03: bool = False
    hang: threading.Event | None = None
    """While set, RPC requests get no answer (until the test clears it or the server stops)."""
    seen_auth: list[str] = field(default_factory=list[str])
    seen_versions: list[str] = field(default_factory=list[str])


class _Guard:
    """ASGI wrapper: auth, version checks and faults in front of the SDK's routes."""

    def __init__(self, app: Any, faults: Faults) -> None:
        self.app = app
        self.f = faults

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path = scope["path"]
        f = self.f
        if path.endswith("agent-card.json"):
            if f.card_body is not None:
                await Response(f.card_body, media_type="application/json")(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        f.seen_auth.append(headers.get("authorization", ""))
        f.seen_versions.append(headers.get("a2a-version", ""))
        if f.token is not None and headers.get("authorization") != f"Bearer {f.token}":
            await JSONResponse({"error": "unauthorized"}, status_code=401)(scope, receive, send)
            return
        if f.only_v03 and headers.get("a2a-version", "").startswith("1"):
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32009, "message": "version 1.0 not supported"}}
            await JSONResponse(body, status_code=200)(scope, receive, send)
            return
        if f.hang is not None:
            while f.hang.is_set():
                await asyncio.sleep(0.02)
        if f.rpc_count > 0:
            f.rpc_count -= 1
            await JSONResponse({"error": "injected"}, status_code=f.rpc_status)(scope, receive, send)
            return
        cut, garble = f.cut_stream_after, f.garble_stream_at
        if cut <= 0 and garble <= 0:
            await self.app(scope, receive, send)
            return
        sent = 0
        streaming = False

        async def cutting_send(message: Any) -> None:
            nonlocal sent, streaming
            if message["type"] == "http.response.start":
                streaming = any(k == b"content-type" and b"event-stream" in v for k, v in message["headers"])
            if streaming and message["type"] == "http.response.body" and message.get("more_body"):
                sent += 1
                if cut and sent > cut:
                    f.cut_stream_after = 0
                    raise ConnectionAbortedError("stream cut by the test")
                if garble and sent == garble:
                    f.garble_stream_at = 0
                    bogus = b'data: {"jsonrpc": "2.0", "id": 1, "result": {"surprise": true}}\r\n\r\n'
                    message = {**message, "body": bogus}
            await send(message)

        await self.app(scope, receive, cutting_send)


class A2AAgent:
    """One agent server; use as a context manager (or :func:`serving`)."""

    def __init__(self, *, streaming: bool = True, token: str | None = None, v03: bool = False, rest: bool = False):
        self.streaming = streaming
        self.v03 = v03
        self.rest = rest
        self.behaviour = Behaviour()
        self.faults = Faults(token=token, only_v03=v03)
        self.url = ""
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None

    def _card(self) -> AgentCard:
        binding = "HTTP+JSON" if self.rest else "JSONRPC"
        rpc = f"{self.url}/rpc" if not self.rest else self.url
        card = AgentCard(
            name="test agent", description="answers tests", version="1.0.0",
            supported_interfaces=[AgentInterface(url=rpc, protocol_binding=binding, protocol_version="1.0")],
            capabilities=AgentCapabilities(streaming=self.streaming), default_input_modes=["text/plain"],
            default_output_modes=["text/plain"],
            skills=[AgentSkill(id="echo", name="echo", description="echoes", tags=["test"])],
        )  # fmt: skip
        if self.faults.token is not None:
            card.security_schemes["bearer"].CopyFrom(
                SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="Bearer"))
            )
            card.security_requirements.append(SecurityRequirement(schemes={"bearer": StringList(list=[])}))
        return card

    def _legacy_card(self) -> dict[str, Any]:
        return {
            "name": "old agent", "description": "speaks A2A 0.3 only", "version": "1.0.0",
            "url": f"{self.url}/rpc", "preferredTransport": "JSONRPC", "protocolVersion": "0.3.0",
            "capabilities": {"streaming": self.streaming}, "defaultInputModes": ["text/plain"],
            "defaultOutputModes": ["text/plain"],
            "skills": [{"id": "echo", "name": "echo", "description": "echoes", "tags": ["test"]}],
        }  # fmt: skip

    def _app(self) -> Any:
        card = self._card()
        handler = DefaultRequestHandler(
            agent_executor=ScriptedAgent(self.behaviour), task_store=InMemoryTaskStore(), agent_card=card
        )
        routes: list[Any] = []
        if self.v03:
            legacy = self._legacy_card()

            async def legacy_card(_: Any) -> Response:
                return JSONResponse(legacy)

            routes.append(Route("/.well-known/agent-card.json", legacy_card))
        else:
            routes.extend(create_agent_card_routes(card))
        if self.rest:
            routes.extend(create_rest_routes(handler))  # a catch-all mount: last
        else:
            routes.extend(create_jsonrpc_routes(handler, "/rpc", enable_v0_3_compat=self.v03))
        return _Guard(Starlette(routes=routes), self.faults)

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(self._app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        )
        ready = threading.Event()
        server = self._server

        def run() -> None:
            loop = asyncio.new_event_loop()
            loop.call_soon(ready.set)
            try:
                loop.run_until_complete(server.serve(sockets=[sock]))
            finally:
                # end the SDK's task producers here: garbage-collected later in the test's thread, their
                # cleanup takes the queue's lock and can hang the whole test run
                loop.run_until_complete(_drain(loop))
                loop.close()
                sock.close()

        self._thread = threading.Thread(target=run, name="a2a-agent", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the A2A test agent did not start")

    def stop(self) -> None:
        self.behaviour.released.set()
        if self.faults.hang is not None:
            self.faults.hang.clear()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> A2AAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks(loop) if t is not me]
    for t in pending:
        t.cancel()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
    await loop.shutdown_asyncgens()


@contextlib.contextmanager
def serving(**kwargs: Any) -> Iterator[A2AAgent]:
    """An agent on 127.0.0.1 for the block."""
    with A2AAgent(**kwargs) as agent:
        yield agent


def bad_card_body() -> bytes:
    """A card that is JSON but not an agent card."""
    return json.dumps({"name": 42, "capabilities": "yes", "supportedInterfaces": "nope"}).encode()
