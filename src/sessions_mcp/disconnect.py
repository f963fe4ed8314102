"""Cancel the requests of HTTP clients that went away.

On a stateful (2025-era) protocol session the SDK keeps serving a request whose POST connection
has closed: 2,000 ``list_messages(wait_s=300)`` long-polls of departed clients stayed in flight
until their waits ran out. (2026-era requests are cancelled by the SDK already.)

:class:`CancelOnDisconnect` watches each ``POST /mcp`` on a session: when the connection ends
before the response was completely sent, it tells the session the client is gone the way a
client would, with ``notifications/cancelled`` for that request id, sent through the same app
with the same credentials and session id. The session's own handling (the SDK cancels the
handler's task) does the rest.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_SESSION_HEADER = b"mcp-session-id"
_MAX_INSPECTED = 1 << 20
"""Bodies larger than this are not parsed for their id (no request that waits is that large)."""


def _request_id(body: bytes) -> str | int | None:
    if not body or len(body) > _MAX_INSPECTED:
        return None
    try:
        data: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or "method" not in data:
        return None
    rid = data.get("id")  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    return rid if isinstance(rid, str | int) and not isinstance(rid, bool) else None


class CancelOnDisconnect:
    """ASGI middleware for ``/mcp``: cancel a session's request when its POST's client disconnects."""

    def __init__(self, *, path: str) -> None:
        self.path = path
        self.app: ASGIApp | None = None
        self.cancelled = 0

    def wrap(self, app: ASGIApp) -> CancelOnDisconnect:
        """Serve ``app`` behind this middleware (a Starlette middleware factory)."""
        self.app = app
        return self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        assert app is not None, "CancelOnDisconnect.wrap() was not called"
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") != self.path
            or not any(name == _SESSION_HEADER for name, _ in scope.get("headers", []))
        ):
            await app(scope, receive, send)
            return
        body = bytearray()
        state = {"complete": False, "gone": False}

        async def watched_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) <= _MAX_INSPECTED:
                body.extend(message.get("body", b""))
            elif message["type"] == "http.disconnect":
                state["gone"] = True
            return message

        async def watched_send(message: Message) -> None:
            try:
                await send(message)
            except OSError:
                state["gone"] = True
                raise
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True

        try:
            await app(scope, watched_receive, watched_send)
        finally:
            if not state["complete"]:
                rid = _request_id(bytes(body))
                if rid is not None:
                    await self._cancel(app, scope, rid)

    async def _cancel(self, app: ASGIApp, scope: Scope, rid: str | int) -> None:
        notice = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": rid, "reason": "the HTTP client disconnected"},
        }
        data = json.dumps(notice).encode()
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"content-length"]
        headers.append((b"content-length", str(len(data)).encode()))
        inner = dict(scope) | {"headers": headers}
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return {"type": "http.disconnect"}

        async def discard(_: Message) -> None:
            return None

        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await app(inner, receive, discard)
            self.cancelled += 1
        except Exception:
            log.debug("could not cancel request %r of a departed client", rid, exc_info=True)


__all__ = ["CancelOnDisconnect"]
