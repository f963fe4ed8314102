"""A Fabro sessions server for tests: ``fabro-api.yaml`` (tag ``Sessions``) over real HTTP on 127.0.0.1.

It behaves like the real server (``fabro-server`` ``sessions.rs``/``jwt_auth.rs`` @7a475eb) where
that differs from the spec: the event stream has **no ids**, **replays nothing** (a subscriber sees
only what is emitted after it connected) and **stays open after ``done``**. JWTs are verified as
Fabro does: EdDSA with the configured public key, ``iss == "fabro-web"``, integer ``iat``/``exp``,
not expired, and the last path segment of ``sub`` in ``allowed_usernames`` (else 403).

Every request it receives and every JSON response (and SSE payload) it sends is validated against
``fabro-api.yaml`` with ``openapi-core``; problems land in :attr:`FabroEmulator.violations`, which
the tests assert to be empty, so neither our client nor the emulator can drift from the contract.

A scripted agent answers each user message with ``echo: <text>``, streamed as ``content_delta``
chunks, then an ``assistant_turn`` and ``done``. Faults are switched on through attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import uvicorn
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_schema_validator import OAS31Validator
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

SPEC_PATH = Path(__file__).resolve().parents[3] / "shared" / "contracts" / "fabro-api.yaml"
if not SPEC_PATH.is_file():  # the checkout may live elsewhere; the shared dir sits next to it
    SPEC_PATH = Path("/work/shared/contracts/fabro-api.yaml")
SPEC_PREFIX = "/api/v1"


@functools.cache
def spec_dict() -> dict[str, Any]:
    """``fabro-api.yaml`` as a dict (parsed once per test run)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with SPEC_PATH.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)


@functools.cache
def openapi() -> OpenAPI:
    """The contract as an ``openapi-core`` validator (the spec itself is not re-validated: slow)."""
    return OpenAPI.from_dict(spec_dict(), config=Config(spec_validator_cls=None))  # pyright: ignore[reportArgumentType]


def schema_validator(name: str) -> Any:
    """A JSON-schema validator for one ``components/schemas`` entry (refs resolve in the spec)."""
    spec = spec_dict()
    return OAS31Validator({"$ref": f"#/components/schemas/{name}", "components": spec["components"]})


def rfc3339(dt: datetime) -> str:
    """Real-mode timestamps: chrono writes nanoseconds."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z"


def new_keypair() -> tuple[str, Ed25519PublicKey]:
    """A fresh Ed25519 key: (private PEM text, public key)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return pem, key.public_key()


class _Req:
    """An ``openapi-core`` request, with the path mapped to the spec's ``/api/v1`` form."""

    def __init__(self, request: Request, body: bytes | None, prefix: str, tls_identity: str = "") -> None:
        self.host_url = str(request.base_url).rstrip("/")
        path = request.url.path
        self.path = SPEC_PREFIX + path.removeprefix(prefix) if prefix != SPEC_PREFIX else path
        self.method = request.method.lower()
        self.body = body or None
        self.content_type = request.headers.get("content-type", "application/octet-stream")
        headers = MutableHeaders(headers=dict(request.headers))  # case-insensitive, like the request's
        if tls_identity:  # the spec's mTLS scheme is a header placeholder for the certificate's CN
            headers["X-mTLS-Client-CN"] = tls_identity
        self.parameters = RequestParameters(query=request.query_params, header=headers, cookie=request.cookies)


class _Resp:
    def __init__(self, status: int, body: Any, content_type: str) -> None:
        self.status_code = status
        self.data = body
        self.content_type = content_type
        self.headers: dict[str, str] = {"Content-Type": content_type}


@dataclass
class _Session:
    id: str
    title: str
    model: str
    system: str | None
    created_at: datetime
    updated_at: datetime
    turns: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    subscribers: list[asyncio.Queue[tuple[str, str] | None]] = field(default_factory=list)
    generation: int = 0


@dataclass
class Faults:
    """Switches for fault tests (set them from the test thread; read in the server thread)."""

    fail_statuses: list[int] = field(default_factory=list[int])
    """The next requests (one per entry) answer these statuses, e.g. ``[502, 503]``."""
    fail_match: str = ".*"
    """Only requests whose ``METHOD path`` fully matches this regex take a failure from ``fail_statuses``."""
    plain_text_errors: bool = False
    """Error bodies as plain text (as axum's rejections are) instead of Fabro's JSON."""
    response_delay_s: float = 0.0
    """Delay of every non-streaming response."""
    cut_stream_after_deltas: int = 0
    """Close every open event stream after this many deltas of a reply (the reply still lands)."""
    malformed_frames: bool = False
    """Send garbage frames (bad JSON, unknown events, stray fields) among the real ones."""
    agent_error: str = ""
    """The next generation emits ``error`` with this message and writes no assistant turn."""
    tool_turns: bool = False
    """Each reply first writes a tool turn (real mode never does; demo data does)."""
    clock_offset_s: float = 0.0
    """The server's clock runs this far ahead (a large value makes every token expired)."""


class FabroEmulator:
    """The server; run it with :meth:`running` (uvicorn on a random loopback port, own thread)."""

    def __init__(
        self,
        *,
        prefix: str = SPEC_PREFIX,
        public_key: Ed25519PublicKey | None = None,
        allowed_usernames: tuple[str, ...] = (),
        token: str | None = None,
        chunk_delay_s: float = 0.005,
        default_model: str = "claude-sonnet-4-5",
        tls: dict[str, Any] | None = None,
        tls_identity: str = "",
    ) -> None:
        self.prefix = prefix
        self.tls = tls or {}
        """uvicorn ``ssl_*`` options (``ssl_cert_reqs=CERT_REQUIRED`` + ``ssl_ca_certs`` for mTLS)."""
        self.tls_identity = tls_identity
        self.public_key = public_key
        self.allowed_usernames = allowed_usernames
        self.token = token
        self.chunk_delay_s = chunk_delay_s
        self.default_model = default_model
        self.sessions: dict[str, _Session] = {}
        self.faults = Faults()
        self.violations: list[str] = []
        self.requests: list[tuple[str, str, int]] = []
        """(method, path, status) of every request, in order."""
        self.bodies: list[Any] = []
        """JSON bodies received (to check what the client sends)."""
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._gate: asyncio.Event | None = None
        self._closing: asyncio.Event | None = None
        self._turn_validator = {k: schema_validator(k) for k in ("AssistantTurn", "ToolTurn")}

    # --- control from the test thread ----------------------------------------------------------

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` in the server's loop (thread-safe)."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def hold_agent(self) -> None:
        """From now on the agent waits (after its first delta) until :meth:`release_agent`."""

        def close() -> None:
            self._gate = asyncio.Event()

        self.call(close)

    def release_agent(self) -> None:
        """Let held replies finish."""

        def open_() -> None:
            if self._gate is not None:
                self._gate.set()
                self._gate = None

        self.call(open_)

    def subscriber_count(self) -> int:
        """Open event streams over all sessions."""
        return sum(len(s.subscribers) for s in list(self.sessions.values()))

    # --- auth (jwt_auth.rs) ----------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.faults.clock_offset_s

    def _auth(self, request: Request) -> Response | None:
        if self.public_key is None and self.token is None:
            return None  # FABRO_LOCAL_NO_AUTH
        header = request.headers.get("authorization", "")
        scheme, _, cred = header.partition(" ")
        if scheme.lower() != "bearer" or not cred:
            return self._error(401, "Unauthorized", "Authentication required.")
        if self.token is not None:
            return None if cred == self.token else self._error(401, "Unauthorized", "Authentication required.")
        assert self.public_key is not None
        try:
            claims = jwt.decode(
                cred,
                self.public_key,
                algorithms=["EdDSA"],
                issuer="fabro-web",
                options={"require": ["iss", "iat", "exp", "sub"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return self._error(401, "Unauthorized", "Authentication required.")
        if not all(isinstance(claims.get(k), int) for k in ("iat", "exp")):
            return self._error(401, "Unauthorized", "Authentication required.")  # serde wants integers
        if claims["exp"] <= self.now():
            return self._error(401, "Unauthorized", "Authentication required.")
        user = str(claims["sub"]).rstrip("/").rsplit("/", 1)[-1]
        if user not in self.allowed_usernames:
            return self._error(403, "Forbidden", "Access denied.")
        return None

    # --- helpers ---------------------------------------------------------------------------------

    def _error(self, status: int, title: str, detail: str) -> Response:
        if self.faults.plain_text_errors:
            return PlainTextResponse(f"{detail}", status_code=status)
        body = {"errors": [{"status": str(status), "title": title, "detail": detail}]}
        return JSONResponse(body, status_code=status)

    def _validate_request(self, request: Request, body: bytes | None) -> None:
        try:
            openapi().validate_request(_Req(request, body, self.prefix, self.tls_identity))
        except Exception as exc:
            self.violations.append(f"request {request.method} {request.url.path}: {_explain(exc)}")

    def _validate_response(self, request: Request, body: bytes | None, resp: Response) -> None:
        if resp.status_code >= 500 or resp.headers.get("content-type", "").startswith("text/plain"):
            return  # injected faults and plain-text rejections are outside the documented responses
        ctype = resp.headers.get("content-type", "application/json")
        # a stream's body is validated frame by frame (see _broadcast); here its status and type
        data: Any = resp.body if not isinstance(resp, StreamingResponse) else "event: done\ndata: {}\n\n"
        try:
            openapi().validate_response(
                _Req(request, body, self.prefix, self.tls_identity), _Resp(resp.status_code, data, ctype)
            )
        except Exception as exc:
            if resp.status_code in (401, 403) and "Unknown response http status" in str(exc):
                return  # the spec documents 401/403 globally, not per operation
            self.violations.append(
                f"response {resp.status_code} to {request.method} {request.url.path}: {_explain(exc)}"
            )

    def _session_json(self, s: _Session, *, detail: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": s.id,
            "title": s.title,
            "model": {"id": s.model},
            "created_at": rfc3339(s.created_at),
            "updated_at": rfc3339(s.updated_at),
        }
        if detail:
            out["turns"] = s.turns
        else:
            last = s.turns[-1] if s.turns else {}
            preview = str(last.get("content", "")) if last else ""
            out["last_message_preview"] = preview[:100] + ("…" if len(preview) > 100 else "")
        return out

    def _broadcast(self, s: _Session, event: str, data: dict[str, Any]) -> None:
        if event in ("assistant_turn", "tool_turn"):
            v = self._turn_validator["AssistantTurn" if event == "assistant_turn" else "ToolTurn"]
            for err in v.iter_errors(data):
                self.violations.append(f"SSE {event} payload: {err.message}")
        frame = json.dumps(data)
        for q in list(s.subscribers):
            q.put_nowait((event, frame))

    def _cut_streams(self, s: _Session) -> None:
        for q in list(s.subscribers):
            q.put_nowait(None)

    # --- the scripted agent ------------------------------------------------------------------------

    def _start_generation(self, s: _Session, text: str) -> None:
        s.generation += 1  # a newer message supersedes the reply in flight
        assert self.loop is not None
        self.loop.create_task(self._generate(s, s.generation, text))

    async def _generate(self, s: _Session, seq: int, text: str) -> None:
        reply = f"echo: {text}"
        size = max(1, len(reply) // 3 + 1)
        chunks = [reply[i : i + size] for i in range(0, len(reply), size)]
        error = self.faults.agent_error
        self.faults.agent_error = ""
        cut_after = self.faults.cut_stream_after_deltas
        for i, chunk in enumerate(chunks):
            await asyncio.sleep(self.chunk_delay_s)
            if s.generation != seq:
                return
            if self.faults.malformed_frames:
                for q in list(s.subscribers):
                    q.put_nowait(("content_delta", "{not json"))
                    q.put_nowait(("mystery", '{"x":1}'))
                    q.put_nowait(("content_delta", '{"delta": 42}'))
                    q.put_nowait(("", ""))
            self._broadcast(s, "content_delta", {"delta": chunk})
            if cut_after and i + 1 == cut_after:
                self._cut_streams(s)
            if i == 0 and self._gate is not None:
                await self._gate.wait()
                if s.generation != seq:
                    return
            if error and i == 0:
                self._broadcast(s, "error", {"message": error})
                return
        now = datetime.now(UTC)
        if self.faults.tool_turns:
            tool: dict[str, Any] = {
                "kind": "tool",
                "tools": [
                    {
                        "id": f"toolu_{uuid.uuid4().hex[:12]}",
                        "tool_name": "read_file",
                        "input": json.dumps({"path": "README.md"}),
                        "result": "# readme",
                        "is_error": False,
                        "duration_ms": 7,
                    }
                ],
                "created_at": rfc3339(now),
            }
            s.turns.append(tool)
            self._broadcast(s, "tool_turn", tool)
        turn = {"kind": "assistant", "content": reply, "created_at": rfc3339(now)}
        s.turns.append(turn)
        s.updated_at = now
        self._broadcast(s, "assistant_turn", turn)
        self._broadcast(s, "done", {})

    # --- handlers ------------------------------------------------------------------------------------

    async def _common(self, request: Request) -> tuple[bytes, Response | None]:
        body = await request.body()
        self._validate_request(request, body)
        if body:
            try:
                self.bodies.append(json.loads(body))
            except ValueError:
                self.bodies.append(body)
        fault = self._injected(request)
        if fault is not None:
            return body, fault
        denied = self._auth(request)
        if denied is not None:
            return body, denied
        if self.faults.response_delay_s and not request.url.path.endswith("/events"):
            await asyncio.sleep(self.faults.response_delay_s)
        return body, None

    def _injected(self, request: Request) -> Response | None:
        key = f"{request.method} {request.url.path}"
        if self.faults.fail_statuses and re.fullmatch(self.faults.fail_match, key):
            status = self.faults.fail_statuses.pop(0)
            return self._error(status, "Bad Gateway" if status == 502 else "Server Error", "injected failure")
        return None

    def _json_body(self, body: bytes) -> dict[str, Any] | Response:
        try:
            data = json.loads(body)
        except ValueError:
            return PlainTextResponse(
                "Failed to parse the request body as JSON", status_code=400
            )  # axum's rejection is plain text
        if not isinstance(data, dict):
            return PlainTextResponse("Failed to deserialize the JSON body", status_code=422)
        return data

    def _find(self, request: Request) -> _Session | Response:
        sid = request.path_params["id"]
        try:
            uuid.UUID(sid)
        except ValueError:
            return PlainTextResponse("Invalid URL: UUID parsing failed", status_code=400)
        s = self.sessions.get(sid)
        if s is None:
            return self._error(404, "Not Found", "Session not found.")
        return s

    async def list_sessions(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return self._done(request, body, early)
        try:
            limit = max(1, min(int(request.query_params.get("page[limit]", "20")), 100))
            offset = max(0, int(request.query_params.get("page[offset]", "0")))
        except ValueError:
            return self._done(request, body, PlainTextResponse("Failed to deserialize query string", status_code=400))
        ordered = sorted(self.sessions.values(), key=lambda s: s.updated_at, reverse=True)
        window = ordered[offset : offset + limit + 1]
        data = [self._session_json(s, detail=False) for s in window[:limit]]
        return self._done(request, body, JSONResponse({"data": data, "meta": {"has_more": len(window) > limit}}))

    async def create_session(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return self._done(request, body, early)
        data = self._json_body(body)
        if isinstance(data, Response):
            return self._done(request, body, data)
        content = data.get("content")
        if not isinstance(content, str):
            return self._done(request, body, PlainTextResponse("missing field `content`", status_code=422))
        model = data.get("model")
        system = data.get("system")
        if (model is not None and not isinstance(model, str)) or (system is not None and not isinstance(system, str)):
            return self._done(
                request, body, PlainTextResponse("invalid type: null, expected a string", status_code=422)
            )
        now = datetime.now(UTC)
        title = content if len(content) <= 60 else content[:60].rsplit(" ", 1)[0] + "…"
        s = _Session(str(uuid.uuid4()), title, model or self.default_model, system, now, now)
        s.turns.append({"kind": "user", "content": content, "created_at": rfc3339(now)})
        self.sessions[s.id] = s
        self._start_generation(s, content)
        out = self._session_json(s, detail=False)
        out.pop("last_message_preview")
        return self._done(request, body, JSONResponse(out, status_code=201))

    async def retrieve_session(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return self._done(request, body, early)
        s = self._find(request)
        if isinstance(s, Response):
            return self._done(request, body, s)
        return self._done(request, body, JSONResponse(self._session_json(s, detail=True)))

    async def send_message(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return self._done(request, body, early)
        s = self._find(request)
        if isinstance(s, Response):
            return self._done(request, body, s)
        data = self._json_body(body)
        if isinstance(data, Response):
            return self._done(request, body, data)
        content = data.get("content")
        if not isinstance(content, str):
            return self._done(request, body, PlainTextResponse("missing field `content`", status_code=422))
        now = datetime.now(UTC)
        s.turns.append({"kind": "user", "content": content, "created_at": rfc3339(now)})
        s.updated_at = now
        self._start_generation(s, content)
        return self._done(request, body, JSONResponse({"accepted": True}, status_code=202))

    async def stream_events(self, request: Request) -> Response:
        body, early = await self._common(request)
        if early is not None:
            return self._done(request, body, early)
        s = self._find(request)
        if isinstance(s, Response):
            return self._done(request, body, s)
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        s.subscribers.append(queue)  # subscribed before the response starts, like tokio broadcast

        async def frames() -> AsyncIterator[bytes]:
            assert self._closing is not None
            closing = asyncio.ensure_future(self._closing.wait())
            getter: asyncio.Future[Any] | None = None
            try:
                while True:
                    getter = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, closing}, return_when=asyncio.FIRST_COMPLETED)
                    if getter not in done:
                        getter.cancel()
                        return
                    item = getter.result()
                    if item is None:
                        return  # a cut stream
                    event, data = item
                    if not event:
                        yield b"data\n: comment\nnonsense line\n\n"
                        continue
                    yield f"event: {event}\ndata: {data}\n\n".encode()  # real mode: no id line
            finally:
                closing.cancel()
                if getter is not None:
                    getter.cancel()
                if queue in s.subscribers:
                    s.subscribers.remove(queue)

        resp = StreamingResponse(frames(), media_type="text/event-stream")
        return self._done(request, body, resp)

    def _done(self, request: Request, body: bytes, resp: Response) -> Response:
        self.requests.append((request.method, request.url.path, resp.status_code))
        self._validate_response(request, body, resp)
        return resp

    def app(self) -> Starlette:
        """The ASGI app (routes under :attr:`prefix`)."""
        p = self.prefix
        return Starlette(
            routes=[
                Route(f"{p}/sessions", self.list_sessions, methods=["GET"]),
                Route(f"{p}/sessions", self.create_session, methods=["POST"]),
                Route(f"{p}/sessions/{{id}}", self.retrieve_session, methods=["GET"]),
                Route(f"{p}/sessions/{{id}}/messages", self.send_message, methods=["POST"]),
                Route(f"{p}/sessions/{{id}}/events", self.stream_events, methods=["GET"]),
            ]
        )

    # --- running -------------------------------------------------------------------------------

    def start(self) -> None:
        """Serve on a random loopback port in a daemon thread (returns once it accepts)."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms delayed-ACK stalls
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app(), log_level="warning", lifespan="off", timeout_graceful_shutdown=2, **self.tls
        )
        self._server = uvicorn.Server(config)
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            self._closing = asyncio.Event()
            loop.call_soon(ready.set)
            try:
                loop.run_until_complete(self._server.serve(sockets=[sock]))
            finally:
                loop.close()
                sock.close()

        self._thread = threading.Thread(target=run, name="fabro-emulator", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the Fabro emulator did not start")

    def stop(self) -> None:
        """End every stream and stop the server (joins the thread)."""
        if self.loop is not None and self._closing is not None and not self.loop.is_closed():
            closing = self._closing
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(closing.set)
        self._server.should_exit = True
        self._thread.join(15)

    def __enter__(self) -> FabroEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _explain(exc: Exception) -> str:
    parts = [f"{type(exc).__name__}: {exc}"]
    for sub in getattr(exc, "schema_errors", None) or []:
        parts.append(str(getattr(sub, "message", sub)))
    cause = exc.__cause__
    if cause is not None:
        parts.append(f"{type(cause).__name__}: {cause}")
        for sub in getattr(cause, "schema_errors", None) or []:
            parts.append(str(getattr(sub, "message", sub)))
    return "; ".join(parts)


@contextlib.contextmanager
def running(public_key: Ed25519PublicKey, allowed_usernames: tuple[str, ...]) -> Iterator[FabroEmulator]:
    """Serve an emulator on 127.0.0.1 for the block; afterwards, no contract violation may remain."""
    emulator = FabroEmulator(public_key=public_key, allowed_usernames=allowed_usernames)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
    assert emulator.violations == [], emulator.violations
