"""The Fabro sessions API over the shared HTTP layer (:mod:`sessions_mcp._http`).

One method per operation of the ``Sessions`` tag; every answer is parsed into :mod:`.wire`
types here, every failure becomes an error of :mod:`sessions_mcp.errors`. The event stream is
opened with ``httpx2``'s own SSE support (``httpx2.EventSource``, the httpx-sse parser that the
MCP SDK uses too).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx2
from pydantic import BaseModel, ValidationError

from ..._http import HttpApi, HttpConfig, HttpFailure, Redactor, RetryPolicy, create_client, protocol_error
from ...errors import AuthError, BackendError, SessionsError, Unavailable, UnknownSession
from .auth import BearerAuth, build_auth
from .wire import (
    CreateSessionRequest,
    CreateSessionResponse,
    ErrorResponse,
    PaginatedSessionList,
    SendMessageRequest,
    SendMessageResponse,
    SessionDetail,
)

log = logging.getLogger(__name__)

SERVICE = "Fabro"
M = TypeVar("M", bound=BaseModel)

_CRED_HINT = (
    "check SESSIONS_MCP_FABRO__TOKEN, or that SESSIONS_MCP_FABRO__JWT_PRIVATE_KEY matches the server's "
    "FABRO_JWT_PUBLIC_KEY and that this machine's clock is right (tokens live SESSIONS_MCP_FABRO__JWT_TTL_S seconds)"
)


def fabro_detail(body: Any, fallback: str) -> str:
    """The text of Fabro's ``{"errors":[{"status","title","detail"}]}`` body (or ``fallback``)."""
    try:
        parsed = ErrorResponse.model_validate(body)
    except ValidationError:
        return fallback
    bits: list[str] = []
    for e in parsed.errors[:3]:
        text = e.detail or e.title
        if text and text not in bits:
            bits.append(text)
    return "; ".join(bits) or fallback


def map_fabro_error(f: HttpFailure) -> SessionsError:
    """Fabro's status codes to our error tree (the body may be JSON:API-like or plain text)."""
    detail = fabro_detail(f.body, f.detail)
    said = f": {detail}" if detail else ""
    if f.status == 401:
        return AuthError(f"Fabro rejected the credentials (401){said}; {_CRED_HINT}", status=401)
    if f.status == 403:
        return AuthError(
            f"Fabro refused access (403){said}; the last path segment of SESSIONS_MCP_FABRO__JWT_SUBJECT must be "
            "in the server's allowed_usernames (or the mTLS certificate's CN must be allowed)",
            status=403,
        )
    if f.status == 404 and f.subject:
        return UnknownSession(f.subject)
    if f.status == 404:
        return BackendError(
            f"Fabro has no sessions API at {f.path} (404){said}; set SESSIONS_MCP_FABRO__API_PREFIX ('' for "
            "March 2026 builds, '/api/v1' after) and use a Fabro build from March to early April 2026, "
            "which has the sessions API",
            status=404,
        )
    if f.status == 501:
        return BackendError(f"this Fabro build does not implement {f.method} {f.path} (501){said}", status=501)
    if f.status in (408, 410) or f.status >= 500:
        return Unavailable(f"Fabro failed on its side ({f.status}){said}; try again shortly", status=f.status)
    return BackendError(f"Fabro refused {f.method} {f.path} ({f.status}){said}", status=f.status)


def _normalise_prefix(prefix: str) -> str:
    prefix = prefix.strip().strip("/")
    return f"/{prefix}" if prefix else ""


class FabroClient:
    """Typed calls to one Fabro server."""

    def __init__(
        self,
        *,
        base_url: str,
        api_prefix: str = "/api/v1",
        auth: BearerAuth | None = None,
        timeout_s: float = 30.0,
        client_cert: str = "",
        client_key: str = "",
        ca_cert: str = "",
        secrets: list[str] | None = None,
        transport: httpx2.AsyncBaseTransport | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        cfg = HttpConfig(
            base_url=base_url,
            connect_timeout_s=min(timeout_s, 10.0),
            read_timeout_s=timeout_s,
            client_cert=client_cert,
            client_key=client_key,
            ca_cert=ca_cert,
        )
        client = create_client(cfg, transport=transport)
        if auth is not None:
            client.auth = auth
        self.auth = auth
        self.prefix = _normalise_prefix(api_prefix)
        self.timeout_s = timeout_s
        self.api = HttpApi(
            client,
            service=SERVICE,
            map_error=map_fabro_error,
            redactor=Redactor(secrets or []),
            policy=policy or RetryPolicy(budget_s=max(timeout_s, 5.0)),
        )

    @classmethod
    def from_settings(cls, settings: Any, **kwargs: Any) -> FabroClient:
        """Build from :class:`~sessions_mcp.settings.FabroSettings` (raises ``ConfigError``)."""
        token = settings.token.get_secret_value() if settings.token is not None else None
        return cls(
            base_url=settings.base_url,
            api_prefix=settings.api_prefix,
            auth=build_auth(settings),
            timeout_s=settings.timeout_s,
            client_cert=settings.client_cert,
            client_key=settings.client_key,
            ca_cert=settings.ca_cert,
            secrets=[token] if token else [],
            **kwargs,
        )

    async def aclose(self) -> None:
        """Close connections."""
        await self.api.aclose()

    def path(self, tail: str) -> str:
        """``tail`` under the configured prefix."""
        return f"{self.prefix}{tail}"

    def _parse(self, model: type[M], data: Any, what: str) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise protocol_error(SERVICE, what, exc, self.api.redact) from None

    # --- operations ----------------------------------------------------------------------------

    async def create_session(self, req: CreateSessionRequest) -> CreateSessionResponse:
        """``POST /sessions`` (201); never retried once it may have reached the server."""
        data = await self.api.json("POST", self.path("/sessions"), json=req.body())
        return self._parse(CreateSessionResponse, data, "createSession")

    async def list_sessions(self, *, limit: int, offset: int) -> PaginatedSessionList:
        """``GET /sessions?page[limit]&page[offset]``."""
        params = {"page[limit]": max(1, min(limit, 100)), "page[offset]": max(offset, 0)}
        data = await self.api.json("GET", self.path("/sessions"), params=params)
        return self._parse(PaginatedSessionList, data, "listSessions")

    async def retrieve_session(self, fabro_id: str, *, subject: str) -> SessionDetail:
        """``GET /sessions/{id}`` with every turn."""
        data = await self.api.json("GET", self.path(f"/sessions/{fabro_id}"), subject=subject)
        return self._parse(SessionDetail, data, "retrieveSession")

    async def send_message(self, fabro_id: str, text: str, *, subject: str) -> SendMessageResponse:
        """``POST /sessions/{id}/messages`` (202)."""
        body = SendMessageRequest(content=text).body()
        data = await self.api.json("POST", self.path(f"/sessions/{fabro_id}/messages"), json=body, subject=subject)
        return self._parse(SendMessageResponse, data, "sendSessionMessage")

    @asynccontextmanager
    async def events(self, fabro_id: str, *, subject: str) -> AsyncGenerator[httpx2.EventSource, None]:
        """``GET /sessions/{id}/events`` as an open event source.

        Raises our errors for a non-200 answer or an unreachable server. Reads have a long
        timeout: the real server sends nothing between replies and never closes the stream.
        """
        path = self.path(f"/sessions/{fabro_id}/events")
        timeout = httpx2.Timeout(300.0, connect=min(self.timeout_s, 10.0))
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        try:
            async with self.api.client.stream("GET", path, headers=headers, timeout=timeout) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._stream_failure(resp, path, subject)
                yield httpx2.EventSource(resp)
        except httpx2.HTTPError as exc:
            kind = type(exc).__name__
            raise Unavailable(f"Fabro event stream failed ({kind}: {self.api.redact(str(exc)) or kind})") from None

    def _stream_failure(self, resp: httpx2.Response, path: str, subject: str) -> SessionsError:
        body: Any = None
        detail = ""
        try:
            body = json.loads(resp.content) if resp.content else None
        except ValueError:
            detail = " ".join(resp.content[:200].decode("utf-8", "replace").split())
        return map_fabro_error(
            HttpFailure(
                status=resp.status_code,
                method="GET",
                path=path,
                detail=self.api.redact(detail or resp.reason_phrase),
                subject=subject,
                body=body,
            )
        )
