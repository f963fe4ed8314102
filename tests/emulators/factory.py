"""Emulators of Factory's HTTP APIs, as ASGI apps (served by uvicorn or ``httpx2.ASGITransport``).

- :class:`FactoryEmulator`: the public Sessions API v0 (``/api/v0/sessions``) as documented in
  ``docs/SESSION-APIS.md`` §1A plus the project's "choices where the public material is silent":
  Bearer auth, cursor pages (``limit`` 1-100), messages oldest first, role filter, statuses
  ``idle → pending → running → idle`` driven by a scripted agent that replies ``echo: <text>``
  after a delay (messages posted while a turn runs are queued), interrupt, soft delete (404
  everywhere afterwards), only documented request fields (anything else is a 400), and faults
  on demand (any status, ``Retry-After``, malformed JSON, non-JSON 502, delays).
- :class:`FactoryAppEmulator`: the seed's web-app endpoints (``/api/sessions/create``,
  ``update-title``, ``message/user/create``, ``message/assistant/create``); it checks the exact
  request shapes of the capture (JSON fields, multipart parts) and the ``parent`` chain.

Both are fail-loud: a request they do not know is answered 501 and recorded in ``unexpected``,
which tests assert is empty. Time is evaluated lazily on each request (no background tasks), so
the same emulator works in-process and behind uvicorn.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "fk-emulator-key-0123456789"


def now_ms() -> int:
    return int(time.time() * 1000)


def problem(status: int, title: str, detail: str = "") -> JSONResponse:
    return JSONResponse({"status": status, "title": title, "detail": detail}, status_code=status)


@dataclass
class Fault:
    """An injected failure: answers ``status`` (or bad JSON) ``times`` times for matching requests."""

    status: int = 500
    times: int = 1
    method: str | None = None
    path_contains: str | None = None
    retry_after: str | None = None
    malformed: bool = False
    """Answer 200 with a body that is not JSON."""
    html: bool = False
    """Answer an HTML page (a proxy's 502) instead of a problem object."""
    body: Any = None
    delay_s: float = 0.0
    after_handling: bool = False
    """Handle the request for real, then answer the fault (the write happened, the answer was lost)."""

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path_contains is None or self.path_contains in path
        )


class _FaultMixin:
    faults: list[Fault]
    unexpected: list[str]
    requests: list[tuple[str, str]]

    def inject(self, status: int = 500, **kwargs: Any) -> Fault:
        """Queue a fault; the first matching request(s) get it."""
        fault = Fault(status=status, **kwargs)
        self.faults.append(fault)
        return fault

    def _take_fault(self, method: str, path: str) -> Fault | None:
        for f in self.faults:
            if f.times > 0 and f.matches(method, path):
                f.times -= 1
                return f
        return None

    @staticmethod
    async def _fault_response(f: Fault) -> Response:
        if f.delay_s:
            import anyio

            await anyio.sleep(f.delay_s)
        headers = {"Retry-After": f.retry_after} if f.retry_after is not None else {}
        if f.malformed:
            return Response(b'{"sessions": [ {"sessionId": ', status_code=200, media_type="application/json")
        if f.html:
            return Response(b"<html><body>502 Bad Gateway</body></html>", status_code=f.status, media_type="text/html")
        body = f.body if f.body is not None else {"status": f.status, "title": f"injected {f.status}"}
        return JSONResponse(body, status_code=f.status, headers=headers)

    async def _unknown(self, request: Request) -> Response:
        what = f"{request.method} {request.url.path}"
        self.unexpected.append(what)
        return problem(501, "emulator: unknown request", what)


# --- Sessions API v0 ------------------------------------------------------------------------------


@dataclass
class _Turn:
    user_id: str
    text: str
    start_ms: int
    pending_until: int
    reply_at: int
    done: bool = False


@dataclass
class _Session:
    id: str
    created_at: int
    updated_at: int
    title: str | None = None
    computer_id: str | None = None
    cwd: str | None = None
    settings: dict[str, Any] = field(default_factory=dict[str, Any])
    messages: list[dict[str, Any]] = field(default_factory=list[dict[str, Any]])
    turns: list[_Turn] = field(default_factory=list[_Turn])
    deleted: bool = False


class FactoryEmulator(_FaultMixin):
    """Factory Sessions API v0, in memory."""

    def __init__(
        self, *, api_key: str = API_KEY, reply_delay_s: float = 0.15, pending_s: float = 0.05, start_lag_s: float = 0.0
    ) -> None:
        self.api_key = api_key
        self.reply_delay_s = reply_delay_s
        self.pending_s = pending_s
        self.start_lag_s = start_lag_s
        """How long a posted message leaves the status ``idle`` before the turn shows (a lagging service)."""
        self.sessions: dict[str, _Session] = {}
        self.faults: list[Fault] = []
        self.unexpected: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[Any] = []
        self.auth_headers: list[str] = []
        self.reply_blocks: list[dict[str, Any]] = []
        """Extra content blocks the scripted agent puts before its ``echo:`` text."""
        p = "/api/v0/sessions"
        self.app = Starlette(
            routes=[
                Route(p, self.create_session, methods=["POST"]),
                Route(p, self.list_sessions, methods=["GET"]),
                Route(p + "/{sid}", self.get_session, methods=["GET"]),
                Route(p + "/{sid}", self.update_session, methods=["PATCH"]),
                Route(p + "/{sid}", self.delete_session, methods=["DELETE"]),
                Route(p + "/{sid}/messages", self.post_message, methods=["POST"]),
                Route(p + "/{sid}/messages", self.list_messages, methods=["GET"]),
                Route(p + "/{sid}/messages/{mid}", self.get_message, methods=["GET"]),
                Route(p + "/{sid}/interrupt", self.interrupt, methods=["POST"]),
                Route("/{path:path}", self._unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
            ]
        )
        self.app.add_middleware(_Gate, emulator=self)

    # --- scripted agent (lazy) -------------------------------------------------------------

    def _advance(self, s: _Session) -> None:
        now = now_ms()
        for turn in s.turns:
            if not turn.done and turn.reply_at <= now:
                turn.done = True
                content = [*self.reply_blocks, {"type": "text", "text": f"echo: {turn.text}"}]
                s.messages.append(self._message("assistant", content, turn.reply_at))
                s.updated_at = max(s.updated_at, turn.reply_at)

    def _status(self, s: _Session) -> str:
        self._advance(s)
        now = now_ms()
        for turn in s.turns:
            if not turn.done and now >= turn.start_ms:
                return "pending" if now < turn.pending_until else "running"
        return "idle"

    @staticmethod
    def _message(role: str, content: list[dict[str, Any]], at: int | None = None) -> dict[str, Any]:
        at = at or now_ms()
        return {
            "id": "msg_" + secrets.token_hex(8),
            "role": role,
            "content": content,
            "createdAt": at,
            "updatedAt": at,
            "isUserVisible": True,
        }

    def add_message(self, sid: str, role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
        """Append a message directly (tests of the content mapping)."""
        s = self.sessions[sid]
        self._advance(s)
        msg = self._message(role, content)
        s.messages.append(msg)
        return msg

    def _session_json(self, s: _Session) -> dict[str, Any]:
        status = self._status(s)
        body: dict[str, Any] = {
            "sessionId": s.id,
            "status": status,
            "messageCount": len(s.messages),
            "createdAt": s.created_at,
            "updatedAt": s.updated_at,
            "title": s.title,
            "completedAt": s.updated_at if status == "idle" and s.messages else None,
            "computerId": s.computer_id,
            "sessionSettings": {"model": "claude-opus-4-6", "reasoningEffort": "high", **s.settings},
        }
        return body

    def _get(self, request: Request) -> _Session | None:
        s = self.sessions.get(request.path_params["sid"])
        return None if s is None or s.deleted else s

    @staticmethod
    async def _body(request: Request, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any] | Response:  # type: ignore[assignment]
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return problem(400, "Invalid request body", "not JSON")
        if not isinstance(body, dict):
            return problem(400, "Invalid request body", "expected an object")
        extra = set(body) - allowed
        if extra:
            return problem(400, "Invalid request body", f"unknown field(s): {sorted(extra)}")
        missing = required - set(body)
        if missing:
            return problem(400, "Invalid request body", f"missing field(s): {sorted(missing)}")
        return body

    @staticmethod
    def _limit(request: Request, default: int = 20) -> int | Response:
        raw = request.query_params.get("limit", str(default))
        try:
            limit = int(raw)
        except ValueError:
            return problem(400, "Invalid limit")
        if not 1 <= limit <= 100:
            return problem(400, "Invalid limit", "limit must be 1-100")
        return limit

    @staticmethod
    def _encode(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    @staticmethod
    def _decode(cursor: str) -> Any:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))

    # --- endpoints -------------------------------------------------------------------------

    async def create_session(self, request: Request) -> Response:
        body = await self._body(request, {"computerId", "cwd", "sessionSettings"})
        if isinstance(body, Response):
            return body
        now = now_ms()
        s = _Session(id="sess_" + secrets.token_hex(8), created_at=now, updated_at=now)
        s.computer_id = body.get("computerId")
        s.cwd = body.get("cwd")
        s.settings = dict(body.get("sessionSettings") or {})
        self.sessions[s.id] = s
        return JSONResponse(self._session_json(s), status_code=201)

    async def list_sessions(self, request: Request) -> Response:
        limit = self._limit(request)
        if isinstance(limit, Response):
            return limit
        live = sorted(
            (s for s in self.sessions.values() if not s.deleted), key=lambda s: (s.created_at, s.id), reverse=True
        )
        cursor = request.query_params.get("cursor")
        if cursor:
            try:
                key = tuple(self._decode(cursor))
            except ValueError:
                return problem(400, "Invalid cursor")
            live = [s for s in live if (s.created_at, s.id) < key]
        page = live[:limit]
        more = len(live) > limit
        nxt = self._encode([page[-1].created_at, page[-1].id]) if more else None
        return JSONResponse(
            {"sessions": [self._session_json(s) for s in page], "pagination": {"hasMore": more, "nextCursor": nxt}}
        )

    async def get_session(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        return JSONResponse(self._session_json(s))

    async def update_session(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        body = await self._body(request, {"title", "sessionSettings"})
        if isinstance(body, Response):
            return body
        if "title" in body:
            s.title = body["title"]
        s.settings.update(body.get("sessionSettings") or {})
        s.updated_at = now_ms()
        return JSONResponse(self._session_json(s))

    async def delete_session(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        s.deleted = True
        return Response(status_code=204)

    async def post_message(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        body = await self._body(request, {"text", "images", "files", "computerId"}, {"text"})
        if isinstance(body, Response):
            return body
        if not isinstance(body["text"], str) or not body["text"]:
            return problem(400, "Invalid request body", "text must be a non-empty string")
        self._advance(s)
        now = now_ms()
        msg = self._message("user", [{"type": "text", "text": body["text"]}], now)
        s.messages.append(msg)
        s.updated_at = now
        busy_until = max((t.reply_at for t in s.turns if not t.done), default=now)
        start = max(now + int(self.start_lag_s * 1000), busy_until)
        delay = int(self.reply_delay_s * 1000)
        s.turns.append(_Turn(msg["id"], body["text"], start, start + int(self.pending_s * 1000), start + delay))
        return JSONResponse({"messageId": msg["id"], "status": self._status(s)})

    async def list_messages(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        limit = self._limit(request)
        if isinstance(limit, Response):
            return limit
        self._advance(s)
        role = request.query_params.get("role")
        if role is not None and role not in ("user", "assistant", "tool"):
            return problem(400, "Invalid role")
        items = [m for m in s.messages if role is None or m["role"] == role]
        offset = 0
        cursor = request.query_params.get("cursor")
        if cursor:
            try:
                offset = int(self._decode(cursor)["o"])
            except (ValueError, KeyError, TypeError):
                return problem(400, "Invalid cursor")
        page = items[offset : offset + limit]
        more = offset + limit < len(items)
        nxt = self._encode({"o": offset + limit}) if more else None
        return JSONResponse({"messages": page, "pagination": {"hasMore": more, "nextCursor": nxt}})

    async def get_message(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        self._advance(s)
        for m in s.messages:
            if m["id"] == request.path_params["mid"]:
                return JSONResponse(m)
        return problem(404, "Message not found")

    async def interrupt(self, request: Request) -> Response:
        s = self._get(request)
        if s is None:
            return problem(404, "Session not found")
        self._advance(s)
        for t in s.turns:
            t.done = True  # the running turn stops; queued messages are dropped with it
        s.updated_at = now_ms()
        return JSONResponse({})

    def user_texts(self, sid: str) -> list[str]:
        """Texts of the user messages of a session (duplicate checks)."""
        return [m["content"][0]["text"] for m in self.sessions[sid].messages if m["role"] == "user"]


class _Gate:
    """ASGI middleware: records requests, checks the key, serves injected faults."""

    def __init__(self, app: Any, emulator: _FaultMixin) -> None:
        self.app = app
        self.emulator = emulator

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        emu: Any = self.emulator
        request = Request(scope)
        method, path = request.method, request.url.path
        emu.requests.append((method, path))
        auth = request.headers.get("authorization", "")
        emu.auth_headers.append(auth)
        fault = emu._take_fault(method, path)
        if fault is not None and not fault.after_handling:
            await (await emu._fault_response(fault))(scope, receive, send)
            return
        if auth != f"Bearer {emu.api_key}":
            await problem(401, "Unauthorized", "invalid API key")(scope, receive, send)
            return
        if fault is not None:  # handle for real, then lose the answer

            async def drop(message: Any) -> None:
                return None

            await self.app(scope, receive, drop)
            await (await emu._fault_response(fault))(scope, receive, send)
            return
        await self.app(scope, receive, send)


# --- the seed's web-app API -----------------------------------------------------------------------


class FactoryAppEmulator(_FaultMixin):
    """The Factory web app's session endpoints as captured in the seed, checking request shapes."""

    def __init__(self, *, token: str = "app-token-0123456789") -> None:
        self.api_key = token
        self.sessions: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.faults: list[Fault] = []
        self.unexpected: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self.shape_errors: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/api/sessions/create", self.create, methods=["POST"]),
                Route("/api/sessions/{sid}/update-title", self.update_title, methods=["POST"]),
                Route("/api/sessions/{sid}/message/user/create", self.user_message, methods=["POST"]),
                Route("/api/sessions/{sid}/message/assistant/create", self.assistant_message, methods=["POST"]),
                Route("/{path:path}", self._unknown, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
            ]
        )
        self.app.add_middleware(_Gate, emulator=self)

    def _bad(self, what: str) -> Response:
        self.shape_errors.append(what)
        return problem(400, "Invalid request", what)

    async def create(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._bad("create: body is not JSON")
        if not isinstance(body, dict) or set(body) != {"id", "title", "isStarted", "machineConnectionType"}:
            return self._bad(f"create: fields {sorted(body) if isinstance(body, dict) else body!r}")
        if not isinstance(body["id"], str) or not body["id"] or not isinstance(body["title"], str):
            return self._bad("create: id and title must be strings")
        if body["isStarted"] is not False or body["machineConnectionType"] != "tui":
            return self._bad("create: isStarted must be false and machineConnectionType 'tui'")
        if body["id"] in self.sessions:
            return problem(409, "Session already exists")
        now = now_ms()
        session = {
            "context": [], "localRepoNames": [], "title": body["title"], "subtitle": "",
            "owner": "user_01EMULATOR", "isStarted": False, "privacyLevel": "private",
            "droidProcessId": None, "droidStatus": None, "droidRequestId": None,
            "machineConnectionType": "tui", "droidId": None, "sessionLocation": "Unknown",
            "status": "offline", "messagesCount": 0, "visibility": ["user_01EMULATOR"], "favoritedBy": [],
            "isTestGenerated": False, "createdBy": "user_01EMULATOR", "id": body["id"], "contextCount": 0,
            "createdAt": now, "updatedAt": now, "creatorName": None, "creatorPhotoUrl": None,
            "isDynamicContextLoading": False,
        }  # fmt: skip
        self.sessions[body["id"]] = session
        self.messages[body["id"]] = []
        return JSONResponse({"session": session})

    async def update_title(self, request: Request) -> Response:
        sid = request.path_params["sid"]
        if sid not in self.sessions:
            return problem(404, "Session not found")
        try:
            body = json.loads(await request.body())
        except ValueError:
            return self._bad("update-title: body is not JSON")
        if not isinstance(body, dict) or set(body) != {"title"} or not isinstance(body["title"], str):
            return self._bad(f"update-title: body {body!r}")
        self.sessions[sid]["title"] = body["title"]
        return JSONResponse({})

    async def _message(self, request: Request, role: str) -> Response:
        sid = request.path_params["sid"]
        where = f"message/{role}/create"
        if sid not in self.sessions:
            return problem(404, "Session not found")
        ctype = request.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return self._bad(f"{where}: content-type {ctype!r} is not multipart/form-data")
        form = await request.form()
        keys = list(form.keys())
        if sorted(keys) != ["draftMessage", "existingImages", "images"]:
            return self._bad(f"{where}: parts {keys}")
        values = {k: form[k] for k in keys}
        if not all(isinstance(v, str) for v in values.values()):
            return self._bad(f"{where}: parts must be plain form fields, not files")
        if values["images"] != "[]" or values["existingImages"] != "[]":
            return self._bad(f"{where}: images/existingImages must be []")
        try:
            draft = json.loads(str(values["draftMessage"]))
        except ValueError:
            return self._bad(f"{where}: draftMessage is not JSON")
        if not isinstance(draft, dict) or set(draft) != {"id", "role", "contents", "parent", "tokens"}:
            return self._bad(f"{where}: draftMessage fields {sorted(draft) if isinstance(draft, dict) else draft!r}")
        if draft["role"] != role or draft["tokens"] != 0 or not isinstance(draft["id"], str):
            return self._bad(f"{where}: role/tokens/id")
        contents = draft["contents"]
        if not isinstance(contents, list) or not contents:
            return self._bad(f"{where}: contents must be a non-empty list")
        for c in contents:
            if not isinstance(c, dict) or c.get("type") != "text" or not isinstance(c.get("text"), str):
                return self._bad(f"{where}: content block {c!r}")
            if not set(c) <= {"type", "text", "isInvisible", "providerDetails"}:
                return self._bad(f"{where}: content block fields {sorted(c)}")
        chain = self.messages[sid]
        expected_parent = chain[-1]["id"] if chain else "root"
        if any(m["id"] == draft["id"] for m in chain):
            return problem(409, "Message already exists")
        if draft["parent"] != expected_parent:
            return self._bad(f"{where}: parent {draft['parent']!r}, expected {expected_parent!r}")
        now = now_ms()
        message = {**draft, "content": "", "images": [], "contextIds": [], "createdAt": now, "updatedAt": now}
        if role == "assistant":
            message["upvoteStatus"] = None
        chain.append(message)
        self.sessions[sid]["messagesCount"] = len(chain)
        return JSONResponse({"message": message})

    async def user_message(self, request: Request) -> Response:
        return await self._message(request, "user")

    async def assistant_message(self, request: Request) -> Response:
        return await self._message(request, "assistant")

    def texts(self, sid: str) -> list[tuple[str, str]]:
        """(role, visible text) of the mirrored messages of a session, in chain order."""
        return [
            (m["role"], "".join(c["text"] for c in m["contents"] if not c.get("isInvisible")))
            for m in self.messages.get(sid, [])
        ]


# --- serving over real HTTP ---------------------------------------------------------------------


class Served:
    """An ASGI app served by uvicorn on 127.0.0.1 at a free port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        import socket
        import threading

        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._sock = sock
        config = uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self._sock.close()
