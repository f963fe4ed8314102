"""Who is calling: ``"local"`` over stdio, the verified token's principal over HTTP."""

from __future__ import annotations

from contextvars import ContextVar

LOCAL_PRINCIPAL = "local"

_override: ContextVar[str | None] = ContextVar("sessions_mcp_principal", default=None)


def current_principal() -> str:
    """The principal of the request being served."""
    forced = _override.get()
    if forced is not None:
        return forced
    from mcp.server.auth.middleware.auth_context import get_access_token

    token = get_access_token()
    if token is None:
        return LOCAL_PRINCIPAL
    return token.subject or token.client_id or LOCAL_PRINCIPAL


def set_principal(principal: str | None) -> object:
    """Force the principal for the current context (tests, CLI views); returns a reset token."""
    return _override.set(principal)
