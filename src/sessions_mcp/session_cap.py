"""Protocol sessions per principal: one token must not be able to lock the others out.

The SDK caps stateful (2025-era) protocol sessions only in total (``max_sessions``), so 10,000
``initialize``-only sessions from one token made every other principal's ``initialize`` answer
503 for up to 30 minutes. :class:`SessionCap` sits behind authentication on ``/mcp`` and counts,
per principal, the sessions the SDK's manager still holds; an ``initialize`` past
``max_sessions_per_principal`` gets 429 with a JSON-RPC error saying what to do. Sessions of
the 2026-07-28 era are sessionless and unaffected.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .principal import LOCAL_PRINCIPAL

log = logging.getLogger(__name__)

_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"
_MODERN_VERSIONS_START = "2026"


def principal_of(scope: Scope) -> str:
    """The principal of an authenticated request (``local`` without authentication)."""
    user = scope.get("user")
    if isinstance(user, AuthenticatedUser):
        token = user.access_token
        return token.subject or token.client_id or LOCAL_PRINCIPAL
    return LOCAL_PRINCIPAL


class SessionCap:
    """ASGI middleware for ``/mcp``: at most ``per_principal`` open protocol sessions each."""

    def __init__(
        self,
        *,
        path: str,
        per_principal: int,
        live_sessions: Callable[[], Any],
        idle_timeout_s: float,
    ) -> None:
        self.app: ASGIApp | None = None
        self.path = path
        self.per_principal = per_principal
        self.live_sessions = live_sessions
        """The SDK manager's open sessions (a container of session ids)."""
        self.idle_timeout_s = idle_timeout_s
        self.owned: dict[str, set[str]] = {}
        self.refused = 0

    def wrap(self, app: ASGIApp) -> SessionCap:
        """Serve ``app`` behind this cap (a Starlette middleware factory)."""
        self.app = app
        return self

    def count(self, principal: str) -> int:
        """Open sessions of ``principal`` (forgetting those the manager has closed)."""
        ids = self.owned.get(principal)
        if not ids:
            return 0
        live = self.live_sessions()
        ids.intersection_update(live)
        if not ids:
            del self.owned[principal]
            return 0
        return len(ids)

    def report(self) -> dict[str, Any]:
        """The ``sessions`` member of ``/healthz`` (counts only: no principal names)."""
        busiest = max((self.count(p) for p in list(self.owned)), default=0)
        total = len(self.live_sessions())
        return {
            "open": total,
            "per_principal_limit": self.per_principal,
            "busiest_principal": busiest,
            "saturated": busiest >= self.per_principal,
            "refused": self.refused,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = self.app
        assert app is not None, "SessionCap.wrap() was not called"
        if not self._opens_session(scope):
            await app(scope, receive, send)
            return
        principal = principal_of(scope)
        if self.count(principal) >= self.per_principal:
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("refused new protocol sessions past the per-principal limit (%d)", self.per_principal)
            await self._refuse(send)
            return

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() == _SESSION_HEADER:
                        self.owned.setdefault(principal, set()).add(value.decode("latin-1"))
            await send(message)

        await app(scope, receive, record)

    def _opens_session(self, scope: Scope) -> bool:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != self.path:
            return False
        for name, value in scope.get("headers", []):
            if name == _SESSION_HEADER:
                return False
            if name == _VERSION_HEADER and value.decode("latin-1").startswith(_MODERN_VERSIONS_START):
                return False
        return True

    async def _refuse(self, send: Send) -> None:
        retry = int(self.idle_timeout_s)
        body = {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": -32000,
                "message": (
                    f"too many open protocol sessions for this principal (limit {self.per_principal}); close "
                    f"sessions you no longer use (HTTP DELETE with their Mcp-Session-Id) or wait for idle ones "
                    f"to expire (after {retry} s), then initialize again"
                ),
            },
        }
        await send(
            {
                "type": "http.response.start",
                "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"retry-after", str(retry).encode())],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


__all__ = ["SessionCap", "principal_of"]
