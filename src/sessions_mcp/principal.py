"""Who is calling: ``"local"`` over stdio, the verified token's principal over HTTP."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken

LOCAL_PRINCIPAL = "local"

_override: ContextVar[str | None] = ContextVar("sessions_mcp_principal", default=None)


def current_principal() -> str:
    """The principal of the request being served."""
    forced = _override.get()
    if forced is not None:
        return forced
    token = _access_token()()
    if token is None:
        return LOCAL_PRINCIPAL
    return token.subject or token.client_id or LOCAL_PRINCIPAL


def set_principal(principal: str | None) -> object:
    """Force the principal for the current context (tests, CLI views); returns a reset token."""
    return _override.set(principal)


def _access_token() -> Callable[[], AccessToken | None]:
    # imported on first use, not with this module: the stdio relay imports it without the SDK
    global _get_access_token
    if _get_access_token is None:
        from mcp.server.auth.middleware.auth_context import get_access_token

        _get_access_token = get_access_token
    return _get_access_token


_get_access_token: Callable[[], AccessToken | None] | None = None
