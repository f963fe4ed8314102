"""The HTTP server: streamable HTTP at ``/mcp`` and legacy SSE at ``/sse`` + ``/messages/`` on one port.

Both protocol eras are served on both endpoints (the SDK does that). Security that cannot be
switched off by accident:

- DNS-rebinding protection is always configured explicitly (never the SDK's implicit default,
  which is *off* for anything but a loopback ``host``), both inside the SDK transports and in an
  outer guard that covers every route except ``/healthz``;
- a non-loopback bind address is refused unless authentication is configured;
- request bodies are limited to ``SESSIONS_MCP_HTTP__MAX_BODY_BYTES``; tokens in the query string
  are refused.

The :class:`~sessions_mcp.server.Runtime` is entered once for the whole app from the ASGI lifespan
(the SDK enters the MCP lifespan once per SSE connection; the runtime is reference-counted).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys
import time
from collections.abc import AsyncGenerator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from . import __version__, logfilter
from .audit import TRAIL
from .auth import AuthConfig, build_auth
from .disconnect import CancelOnDisconnect
from .errors import ConfigError
from .http_guard import ACCEPT_BACKLOG, ConnectionStats, connection_cap
from .session_cap import SessionCap
from .settings import HttpSettings, Settings

log = logging.getLogger(__name__)

MCP_PATH = "/mcp"
SSE_PATH = "/sse"
MESSAGES_PATH = "/messages/"
HEALTH_PATH = "/healthz"
SHUTDOWN_GRACE_S = 30.0
"""How long a shutdown waits for requests in flight before closing the remaining streams."""

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "[::1]"]


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only exposes the server to this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def transport_security(http: HttpSettings) -> TransportSecuritySettings:
    """The Host/Origin allow-lists for these settings, always with protection on.

    Loopback names are allowed with any port and without one (a proxy on port 80 sends
    ``Host: localhost``); ``allowed_hosts``/``allowed_origins`` add to them; a concrete
    (not wildcard) bind address and the host of ``public_url`` are allowed too.
    """
    hosts: list[str] = []
    for name in LOOPBACK_HOSTS:
        hosts += [f"{name}:*", name]
    origins = [
        f"{scheme}://{name}{port}" for name in LOOPBACK_HOSTS for scheme in ("http", "https") for port in (":*", "")
    ]
    bind = http.host.strip()
    if bind and bind not in ("0.0.0.0", "::", "[::]") and not is_loopback(bind):  # noqa: S104
        literal = f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind
        hosts += [f"{literal}:*", literal]
    if http.public_url:  # the server's own public name
        public = urlsplit(http.public_url)
        if public.netloc:
            hosts.append(public.netloc.rpartition("@")[2])
            origins.append(f"{public.scheme}://{public.netloc.rpartition('@')[2]}")
    hosts += http.allowed_hosts
    origins += http.allowed_origins
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(dict.fromkeys(hosts)),
        allowed_origins=list(dict.fromkeys(origins)),
    )


def check_bind(http: HttpSettings, auth: AuthConfig | None) -> None:
    """Refuse to expose an unauthenticated server beyond this machine."""
    if auth is None and not is_loopback(http.host):
        raise ConfigError(
            f"refusing to serve on {http.host!r} without authentication: anyone who can reach it could read and "
            "drive every session. Configure SESSIONS_MCP_HTTP__TOKENS (principal=token,...) or "
            "SESSIONS_MCP_HTTP__TOKENS_FILE, or JWT verification (SESSIONS_MCP_HTTP__JWT_PUBLIC_KEY or "
            "SESSIONS_MCP_HTTP__JWKS_URL with __JWT_ISSUER and __JWT_AUDIENCE), or bind 127.0.0.1"
        )


class Guard:
    """Outer ASGI middleware: Host/Origin, no tokens in the URL, declared body size.

    The SDK transports check Host/Origin too; this guard makes the same rules hold for every
    route (OAuth metadata included) and answers before authentication, so a rebinding attempt
    gets 421/403 whether or not it carries a token. ``/healthz`` is exempt (probes use IPs).
    """

    def __init__(self, app: ASGIApp, *, security: TransportSecuritySettings, max_body_bytes: int) -> None:
        self.app = app
        self.checker = TransportSecurityMiddleware(security)
        self.max_body_bytes = max_body_bytes
        self._passed: set[tuple[bytes | None, bytes | None]] = set()
        """(Host, Origin) pairs the checker accepted: every request has one, and re-checking it
        (a ``Request``, its ``Headers``, pattern loops) was most of this guard's cost per call."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        host = origin = length = None
        for name, value in scope["headers"]:  # the first of each, as Headers.get() takes it
            if name == b"host":
                host = value if host is None else host
            elif name == b"origin":
                origin = value if origin is None else origin
            elif name == b"content-length":
                length = value if length is None else length
        if (
            (host, origin) in self._passed
            and not scope.get("query_string")
            and (length is None or (length.isdigit() and int(length) <= self.max_body_bytes))
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = await self.checker.validate_request(request, is_post=False)
        if refused is None and len(self._passed) < _PASSED_MAX:
            self._passed.add((host, origin))
        if refused is None and _token_in_query(scope):
            refused = JSONResponse(
                {"error": "invalid_request", "error_description": "send the token in the Authorization header"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
            )
        if refused is None:
            text = request.headers.get("content-length", "")
            if text.isdigit() and int(text) > self.max_body_bytes:
                refused = Response(f"request body larger than {self.max_body_bytes} bytes", status_code=413)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self.app(scope, receive, send)


_PASSED_MAX = 256
"""Accepted (Host, Origin) pairs remembered; a wildcard port admits many, so the set is bounded."""


def _token_in_query(scope: Scope) -> bool:
    query = scope.get("query_string", b"").decode("latin-1")
    return any(key.lower() in ("access_token", "token") for key, _ in parse_qsl(query, keep_blank_values=True))


@dataclass
class InFlight:
    """Counts MCP requests being handled (long-lived listen streams excepted), for graceful shutdown."""

    count: int = 0
    idle: anyio.Event = field(default_factory=anyio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Server middleware: count the request while it runs."""
        if ctx.request_id is None or ctx.method == "subscriptions/listen":
            return await call_next(ctx)
        self.count += 1
        if self.count == 1:
            self.idle = anyio.Event()
        try:
            return await call_next(ctx)
        finally:
            self.count -= 1
            if self.count == 0:
                self.idle.set()


@dataclass
class HttpApp:
    """The assembled ASGI app and what tests and :func:`serve_http` need to reach."""

    app: ASGIApp
    starlette: Starlette
    mcp: MCPServer
    runtime: Any
    auth: AuthConfig | None
    security: TransportSecuritySettings
    in_flight: InFlight
    sessions: SessionCap | None = None
    departed: CancelOnDisconnect | None = None
    connections: ConnectionStats | None = None
    """Set by :func:`serve_http` (the connection guard lives in the server, not the app)."""

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document: liveness, and how near each limit the server is."""
        body: dict[str, Any] = {"status": "ok", "version": __version__, "in_flight": self.in_flight.count}
        if self.departed is not None:
            body["cancelled_for_departed_clients"] = self.departed.cancelled
        near: list[str] = []
        if self.connections is not None:
            body["connections"] = conn = self.connections.report()
            if conn["near_limit"]:
                near.append("connections")
        if self.sessions is not None:
            body["sessions"] = sess = self.sessions.report()
            if sess["saturated"]:
                near.append("sessions of one principal")
        notifier = getattr(self.runtime, "notifier", None)
        if notifier is not None:
            body["subscriptions"] = {"legacy": notifier.legacy_count, "listeners": notifier.bus.listeners}
        if near:
            body["status"] = "near_limit"
            body["near_limit"] = near
        return body


def create_app(settings: Settings, *, runtime: Any = None) -> HttpApp:
    """Build the HTTP app for ``settings`` (not yet serving). Raises :class:`ConfigError`."""
    from .server import Runtime, build_server

    http = settings.http
    auth = build_auth(http)
    check_bind(http, auth)
    security = transport_security(http)
    rt = runtime or Runtime(settings)
    mcp_kwargs: dict[str, Any] = {}
    if auth is not None:
        mcp_kwargs = {"token_verifier": auth.verifier, "auth": auth.settings}
    mcp = build_server(settings, runtime=rt, **mcp_kwargs)
    in_flight = InFlight()
    mcp.middleware.append(in_flight)

    async def health(_: Request) -> Response:
        return JSONResponse(built.health())

    streamable = mcp.streamable_http_app(
        streamable_http_path=MCP_PATH,
        stateless_http=http.stateless,
        max_request_body_size=http.max_body_bytes,
        session_idle_timeout=http.session_idle_timeout_s,
        transport_security=security,
        host=http.host,
    )
    sse = mcp.sse_app(
        sse_path=SSE_PATH,
        message_path=MESSAGES_PATH,
        max_request_body_size=http.max_body_bytes,
        transport_security=security,
        host=http.host,
    )
    routes: list[BaseRoute] = [Route(HEALTH_PATH, health, methods=["GET"])]
    routes += _unique(streamable.routes, sse.routes)
    middleware = list(streamable.user_middleware)
    if auth is not None and not middleware:  # never serve a token-protected route without the auth middleware
        raise RuntimeError("the SDK built no authentication middleware although a token verifier is configured")
    manager = mcp.session_manager
    session_cap = SessionCap(
        path=MCP_PATH,
        per_principal=http.max_sessions_per_principal,
        live_sessions=lambda: manager._server_instances,  # pyright: ignore[reportPrivateUsage]
        idle_timeout_s=http.session_idle_timeout_s,
    )
    middleware.append(Middleware(session_cap.wrap))  # behind authentication: it counts per principal
    cancel_departed = CancelOnDisconnect(path=MCP_PATH)
    middleware.append(Middleware(cancel_departed.wrap))  # behind authentication: it speaks as the client

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncGenerator[None, None]:
        async with rt.running(), mcp.session_manager.run():
            yield

    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    guarded = Guard(app, security=security, max_body_bytes=http.max_body_bytes)
    built = HttpApp(
        app=guarded, starlette=app, mcp=mcp, runtime=rt, auth=auth, security=security, in_flight=in_flight,
        sessions=session_cap, departed=cancel_departed,
    )  # fmt: skip
    return built


def _unique(*route_lists: Iterable[BaseRoute]) -> list[BaseRoute]:
    seen: set[str] = set()
    out: list[BaseRoute] = []
    for routes in route_lists:
        for route in routes:
            path = str(getattr(route, "path", id(route)))
            if path not in seen:
                seen.add(path)
                out.append(route)
    return out


# ---------------------------------------------------------------------------- logging

_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_QUERY_TOKEN = re.compile(r"(?i)\b((?:access_)?token=)[^&\s\"']+")


class RedactSecrets(logging.Filter):
    """Replace known secrets, bearer tokens and URL tokens in every record with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced."""
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        lowered = text.lower()  # one cheap scan spares both regexes on nearly every line
        if "bearer" in lowered:
            text = _BEARER.sub(r"\1[redacted]", text)
        if "token=" in lowered:
            text = _QUERY_TOKEN.sub(r"\1[redacted]", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message (and traceback text) in place; never drops records."""
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = self.redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if redacted != message or record.args:
            record.msg, record.args = redacted, None
        return True


def configure_http_logging(secrets: Iterable[str] = ()) -> None:
    """Audit lines (one JSON object per tool call) to stderr, and secret redaction on every handler."""
    redactor = RedactSecrets(secrets)
    TRAIL.write_to(sys.stderr, redactor.redact)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactSecrets)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
    logfilter.install(root)  # after redaction: repeats are recognised by their redacted text


# ---------------------------------------------------------------------------- serving


class _Server:
    """uvicorn with a graceful drain: stop accepting, finish requests in flight, then close streams."""

    def __init__(self, built: HttpApp, http: HttpSettings, *, log_level: str) -> None:
        import uvicorn

        from .http_guard import guarded_protocol

        self.built = built
        built.connections = ConnectionStats(
            limit=connection_cap(http.max_connections), request_timeout_s=http.request_timeout_s
        )
        config = uvicorn.Config(
            built.app,
            http=guarded_protocol(built.connections),
            backlog=ACCEPT_BACKLOG,
            host=http.host.strip("[]"),
            port=http.port,
            log_level=log_level.lower(),
            access_log=log_level.upper() == "DEBUG",
            lifespan="on",
            timeout_graceful_shutdown=int(SHUTDOWN_GRACE_S) + 5,
            server_header=False,
            log_config=None,  # uvicorn logs through our root handler, so secrets are redacted there too
            proxy_headers=False,
        )
        outer = self

        class Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: Any) -> None:
                # no re-raise of the signal after serve(): a drained shutdown exits 0
                if self.should_exit:
                    self.force_exit = True
                self.should_exit = True

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets)
                outer.announce(self)

            async def shutdown(self, sockets: Any = None) -> None:
                import asyncio

                drain = asyncio.ensure_future(outer.drain())
                try:
                    await super().shutdown(sockets)
                finally:
                    drain.cancel()

        self.server = Server(config)

    def announce(self, server: Any) -> None:
        """One line on stderr with the bound address (the port may have been 0)."""
        for listener in getattr(server, "servers", []):
            for sock in listener.sockets:
                host, port = sock.getsockname()[:2]
                shown = f"[{host}]" if ":" in str(host) else host
                print(f"sessions-mcp: serving streamable HTTP at http://{shown}:{port}{MCP_PATH} and SSE at "
                      f"http://{shown}:{port}{SSE_PATH}", file=sys.stderr, flush=True)  # fmt: skip
                return

    async def drain(self) -> None:
        """Wait for requests in flight (bounded), then end the SSE streams so connections can close."""
        from sse_starlette.sse import AppStatus

        started = time.monotonic()
        with anyio.move_on_after(SHUTDOWN_GRACE_S):
            await self.built.in_flight.idle.wait()
        waited = time.monotonic() - started
        # the last handler has returned; give its response a moment to be written to its stream
        await anyio.sleep(0.25)
        if self.built.in_flight.count:
            log.warning(
                "shutdown: %d request(s) still running after %.0f s; closing", self.built.in_flight.count, waited
            )
        AppStatus.should_exit = True

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM."""
        from sse_starlette.sse import AppStatus

        AppStatus.disable_automatic_graceful_drain()  # we end streams ourselves after the drain
        self.server.run()


def serve_http(settings: Settings, built: HttpApp | None = None) -> int:
    """Serve MCP over streamable HTTP and SSE until interrupted (``built``: the app, when made already)."""
    built = built or create_app(settings)
    configure_http_logging(built.auth.static_tokens if built.auth else ())
    if built.auth is None:
        log.info("no HTTP authentication configured; serving loopback only")
    _Server(built, settings.http, log_level=settings.log_level).run()
    return 0


def audit_record(line: str) -> dict[str, Any] | None:
    """Parse one stderr line as an audit record (``None`` if it is not one). For tests and log tooling."""
    try:
        data: Any = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    record = cast(dict[str, Any], data)
    return record if record.get("event") == "tool_call" else None


__all__ = ["HttpApp", "create_app", "is_loopback", "serve_http", "transport_security"]
